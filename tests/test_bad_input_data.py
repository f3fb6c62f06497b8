"""Bad input in task files and few-shot output folders: one clear paragraph, exit 2, nothing lost.

The cases of issue 14 that live in the data readers (``plmtune.data``) and the few-shot splitter
(``plmtune.fewshot``). Same contract as ``tests/test_bad_input.py``: the CLI prints one line
naming the file (and line and field where there is one) and exits 2.
"""

from __future__ import annotations

import json
import re

import pytest

from plmtune.cli import main
from test_bad_input import GOOD, _task


def _files(root, **files):
    """A task folder from raw texts: _files(t, **{"train.csv": "...", "dev.jsonl": "..."})."""
    folder = root / "task"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def _jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def _source(root, n=20):
    """A small dataset folder to make few-shot splits from."""
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "train.jsonl").write_text(_jsonl({"text": f"row {i}", "label": i % 2} for i in range(n)))
    (src / "test.jsonl").write_text(_jsonl(GOOD))
    return src


def _collide(root):
    """The source folder is OUT/2-1, so `--k 2 --seeds 1` would replace the source itself."""
    src = _source(root / "collide")
    (src / "NOTES.txt").write_text("mine\n")
    return src.rename(root / "collide" / "2-1")


def _foreign_target(root):
    """OUT/2-1 already exists but is not a plmtune few-shot folder."""
    (root / "few" / "2-1").mkdir(parents=True)
    (root / "few" / "2-1" / "weights.bin").write_text("not ours\n")
    return ["data", "fewshot", _source(root), root / "few", "--k", "2", "--seeds", "1"]


UNBALANCED = "text,label\n\"an unbalanced quote here,0\n" + "".join(f"row {i},{i % 2}\n" for i in range(998))
RUN = ["run", "baseline", "--data"]

CASES = {
    # D1: the quote opened on line 2; the file ends on line 1000.
    "CSV with an unbalanced quote": (lambda t: RUN + [_files(t, **{"train.csv": UNBALANCED})],
                                     r"train.csv, line 2: .*quote.* never closes"),
    "CSV row cut short by a quoted newline": (lambda t: RUN + [_files(t, **{
        "train.csv": 'text,label\nfine,0\n"two\nlines"\nok,1\n'})],
        r"train.csv, line 3: expected 2 columns \(text, label\), got 1.*quoted field.*lines 3-4"),
    # D9
    "CSV labels that look like decimals": (lambda t: RUN + [_files(t, **{"train.csv": "text,label\na,0.0\nb,1.0\n"})],
                                           r"train.csv, line 2, field 'label': .*'0.0' looks like a decimal number"),
    "TSV labels that look like decimals": (lambda t: RUN + [_files(t, **{"train.tsv": "text\tlabel\na\t1e0\nb\t2\n"})],
                                           r"train.tsv, line 2, field 'label': .*'1e0' looks like a decimal number"),
    # D13
    "null text": (lambda t: RUN + [_task(t, [GOOD[0], {"text": None, "label": 1}])],
                  r"train.jsonl, line 2, field 'text': the value is null"),
    # D16: no allocation per label id, no MemoryError.
    "huge label id": (lambda t: RUN + [_task(t, [GOOD[0], {"text": "b", "label": 10 ** 12}])],
                      r"train.jsonl, line 2, field 'label': label id 1000000000000 is too large"),
    # D17
    "deeply nested JSON": (lambda t: RUN + [_files(t, **{"train.jsonl": _jsonl(GOOD) + "[" * 100_000 + "]" * 100_000
                                                       + "\n"})],
                           r"train.jsonl, line 3: .*nested too deeply"),
    # D18
    "text_pair only on a later train row": (lambda t: RUN + [_task(t, [GOOD[0], {"text": "b", "text_pair": "c",
                                                                                "label": 1}])],
                                            r"train.jsonl, line 1, field 'text_pair': missing field.*line 2 has"),
    "text_pair only in dev": (lambda t: RUN + [_task(t, GOOD, [{"text": "b", "text_pair": "c", "label": 1}])],
                              r"dev.jsonl, line 1, field 'text_pair': .*train.jsonl has none"),
    # D19
    "duplicate CSV header": (lambda t: RUN + [_files(t, **{"train.csv": "text,label,label\na,0,1\nb,1,0\n"})],
                             r"train.csv, line 1, field 'label': the header names this column twice"),
    # issue 17: validation.* is the dev split; both at once is ambiguous
    "dev and validation both present": (lambda t: RUN + [_files(t, **{"train.jsonl": _jsonl(GOOD),
                                                                      "dev.jsonl": _jsonl(GOOD),
                                                                      "validation.jsonl": _jsonl(GOOD)})],
                                        r"more than one file for split 'dev': dev.jsonl, validation.jsonl"),
    # F3
    "few-shot output that would replace its source": (
        lambda t: ["data", "fewshot", _collide(t), t / "collide", "--k", "2", "--seeds", "1"],
        r"collide/2-1: .*is the source folder"),
    "few-shot output over a folder plmtune did not write": (_foreign_target,
                                                            r"few/2-1: .*not a few-shot folder written by plmtune"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_data_gives_one_paragraph_and_exit_2(case, tmp_path, capsys):
    make_args, pattern = CASES[case]
    args = [str(a) for a in make_args(tmp_path)]
    if args[0] == "run":
        args += ["--out", str(tmp_path / "out"), "--set", "model.backbone=nobody/none"]
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert re.search(pattern, err), err
    assert not (tmp_path / "out" / "result.json").exists()


def test_refused_few_shot_target_keeps_the_source_whole(tmp_path, capsys):
    src = _collide(tmp_path)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    assert main(["data", "fewshot", str(src), str(tmp_path / "collide"), "--k", "2", "--seeds", "1"]) == 2
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "collide").iterdir()) == ["2-1"]  # no temp folder left


def test_refused_foreign_target_is_untouched(tmp_path, capsys):
    args = [str(a) for a in _foreign_target(tmp_path)]
    assert main(args) == 2
    assert [p.name for p in (tmp_path / "few" / "2-1").iterdir()] == ["weights.bin"]
