"""Property-based tests (hypothesis) for the data loaders and the recipe parser."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plmtune.config import DataConfig
from plmtune.loading import build_recipe, load_recipe
from plmtune.recipe_io import apply_override
from plmtune.data import load_task, read_records
from plmtune.errors import DataError, RecipeError

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)
rows_strategy = st.integers(min_value=2, max_value=4).flatmap(
    lambda k: st.tuples(st.just(k), st.lists(st.tuples(texts, st.integers(0, k - 1)), min_size=1, max_size=20)))

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(rows_strategy, st.sampled_from(["jsonl", "csv", "tsv"]))
def test_any_valid_rows_round_trip_through_every_format(data, fmt):
    k, rows = data
    rows = rows + [(f"class {c}", c) for c in range(k)]  # every class present in train
    if fmt == "tsv":
        rows = [(t.replace("\t", " ").replace("\n", " ").replace("\r", " "), y) for t, y in rows]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / f"train.{fmt}"
        if fmt == "jsonl":
            path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows), encoding="utf-8")
        elif fmt == "tsv":  # GLUE-style: no quoting at all
            path.write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
        else:
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(["text", "label"])
            writer.writerows(rows)
            path.write_text(buffer.getvalue(), encoding="utf-8")
        task = load_task(folder, DataConfig())
        assert [(r["text"], r["label"]) for r in task.splits["train"]] == rows
        assert task.num_labels == k


@SETTINGS
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_reader(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        path.write_bytes(data)
        try:
            records = read_records(path)
        except DataError as err:
            assert "train.jsonl" in str(err) and "\n" not in str(err)
        else:
            assert all(isinstance(r, dict) for _, r in records)


@SETTINGS
@given(st.floats(min_value=1e-7, max_value=1.0, allow_nan=False), st.integers(1, 64), st.floats(0.0, 0.99))
def test_valid_overrides_land_in_the_recipe(lr, batch, warmup):
    recipe = load_recipe("llrd", [f"train.lr={lr!r}", f"train.batch_size={batch}", f"train.warmup_ratio={warmup!r}"])
    assert recipe.train.lr == pytest.approx(lr) and recipe.train.batch_size == batch
    assert build_recipe(recipe.to_dict()) == recipe  # the resolved recipe re-validates to itself


@SETTINGS
@given(st.one_of(st.floats(max_value=0.0, allow_nan=False), st.floats(min_value=1.0001, allow_nan=False,
                                                                       allow_infinity=False)))
def test_out_of_range_learning_rates_are_always_rejected(lr):
    with pytest.raises(RecipeError, match="train.lr"):
        load_recipe("baseline", [f"train.lr={lr!r}"])


@SETTINGS
@given(st.lists(st.from_regex(r"[a-z]{1,6}", fullmatch=True), min_size=1, max_size=4), st.integers())
def test_apply_override_sets_nested_keys(path, value):
    raw: dict = {}
    apply_override(raw, f"{'.'.join(path)}={value}")
    node = raw
    for key in path[:-1]:
        node = node[key]
    assert node[path[-1]] == value
