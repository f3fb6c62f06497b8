"""Property tests of the task-file readers: any bytes give rows or one clear DataError paragraph.

Random bytes and random small JSON-ish / CSV-ish texts go through ``read_records``, ``read_rows``
and ``load_task``. Each call must either succeed or raise a :class:`PlmtuneError` whose message is
one line naming the file (or the folder, for folder-level problems); any other exception is a bug.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from plmtune.config import DataConfig
from plmtune.data import load_task, read_records, read_rows
from plmtune.errors import PlmtuneError

CFG = DataConfig()
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Values a JSON record's fields can hold, including the awkward ones.
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-3, max_value=3), st.integers(),
                    st.floats(allow_nan=True), st.text(max_size=8),
                    st.sampled_from(["0", "1", "0.0", "1e3", "pos", "neg", " 2 ", "nan", "\u2028", "\x85", "²"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
KEYS = st.sampled_from(["text", "text_pair", "label", "id", "features"])
TEXTS = st.one_of(st.text(max_size=8), st.sampled_from(["a", "b\u2028c", "d\x85", "\u2029"]), SCALARS)
LABELS = st.one_of(st.integers(min_value=-1, max_value=3), st.integers(), SCALARS,
                   st.sampled_from(["²", "0.0", "1", " 3 ", "-1", "x\ny", "\u2028", 10 ** 12]))
# Mostly records with the fields a task needs (so the later checks run), some free-form ones.
RECORDS = st.one_of(st.fixed_dictionaries({"text": TEXTS, "label": LABELS},
                                          optional={"text_pair": TEXTS, "id": VALUES}),
                    st.dictionaries(KEYS, VALUES, max_size=5))


def _jsonl(draw_lines):
    return "\n".join(draw_lines).encode("utf-8", "surrogatepass")


JSONISH = st.lists(st.one_of(RECORDS.map(lambda r: json.dumps(r, ensure_ascii=False)),
                             st.sampled_from(["", "[", "{", '{"text": "a"', "[[[[", "null", "\r", "{}"]),
                             st.text(max_size=12)), max_size=6)
CELLS = st.one_of(st.sampled_from(["text", "label", "text_pair", "0", "1", "pos", "0.0", '"', '""', "", " ",
                                   "a,b", "\t", "\n", "\r\n", "\u2028", "²", '"x\ny"', "1000000000000"]),
                  st.text(max_size=6))
CSVISH = st.lists(st.one_of(st.lists(CELLS, min_size=2, max_size=2), st.lists(CELLS, max_size=4)), max_size=6)


def _clear(err: PlmtuneError, *names: str) -> None:
    message = str(err)
    assert "\n" not in message and "\r" not in message, message
    assert any(name in message for name in names), message


def _check_file(path) -> None:
    try:
        read_records(path)
    except PlmtuneError as err:
        _clear(err, path.name)
    try:
        read_rows(path, CFG)
    except PlmtuneError as err:
        _clear(err, path.name)


def _check_folder(folder, *names: str) -> None:
    try:
        load_task(folder, CFG)
    except PlmtuneError as err:
        _clear(err, *names, str(folder))


@SETTINGS
@given(data=st.binary(max_size=200), name=st.sampled_from(["train.jsonl", "train.csv", "train.tsv"]))
def test_random_bytes(tmp_path_factory, data, name):
    folder = tmp_path_factory.mktemp("bytes")
    (folder / name).write_bytes(data)
    _check_file(folder / name)
    _check_folder(folder, name)


@SETTINGS
# Inputs that once escaped as RecursionError, ValueError or MemoryError, always tried first.
@example(train=["[" * 100_000 + "]" * 100_000], dev=None, dev_name="dev.jsonl")
@example(train=['{"text": "a", "label": "\u00b2"}'], dev=None, dev_name="dev.jsonl")
@example(train=['{"text": "a", "label": 0}', '{"text": "b", "label": 1000000000000}'], dev=None,
         dev_name="dev.jsonl")
@example(train=['{"text": "a", "label": ' + "9" * 5000 + "}"], dev=None, dev_name="dev.jsonl")
@given(train=JSONISH, dev=st.one_of(st.none(), JSONISH), dev_name=st.sampled_from(["dev.jsonl", "validation.jsonl"]))
def test_random_json_lines(tmp_path_factory, train, dev, dev_name):
    folder = tmp_path_factory.mktemp("jsonl")
    (folder / "train.jsonl").write_bytes(_jsonl(train))
    if dev is not None:
        (folder / dev_name).write_bytes(_jsonl(dev))
    _check_file(folder / "train.jsonl")
    _check_folder(folder, "train.jsonl", dev_name)


@SETTINGS
@example(rows=[["a", "\u00b2"]], sep=",", end="\n")
@example(rows=[["a" * 200_000, "0"]], sep=",", end="\n")  # over csv's default field size limit
@given(rows=CSVISH, sep=st.sampled_from([",", "\t"]), end=st.sampled_from(["\n", "\r\n", "\r"]))
def test_random_csv_rows(tmp_path_factory, rows, sep, end):
    folder = tmp_path_factory.mktemp("csv")
    name = "train.csv" if sep == "," else "train.tsv"
    text = "text,label" if sep == "," else "text\tlabel"
    text += end + end.join(sep.join(row) for row in rows)
    (folder / name).write_bytes(text.encode("utf-8", "surrogatepass"))
    _check_file(folder / name)
    _check_folder(folder, name)
