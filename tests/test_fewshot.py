from __future__ import annotations

import json
from collections import Counter

import pytest

from conftest import shared_dataset
from plmtune.errors import DataError
from plmtune.fewshot import make_fewshot


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_lm_bff_protocol_on_sst2(tmp_path):
    src = shared_dataset("sst2")
    (first,) = make_fewshot(src, tmp_path, k=16, seeds=[13])
    train, dev, test = (_rows(first / f"{s}.jsonl") for s in ("train", "dev", "test"))
    unlabeled = _rows(first / "unlabeled.jsonl")
    assert Counter(r["label"] for r in train) == {0: 16, 1: 16}
    assert Counter(r["label"] for r in dev) == {0: 16, 1: 16}
    assert len(test) == 872  # SST-2 has no labelled test: the original dev is the test
    train_src = {r["source"] for r in train}
    dev_src = {r["source"] for r in dev}
    unl_src = {r["source"] for r in unlabeled}
    assert not train_src & dev_src and not (train_src | dev_src) & unl_src
    assert len(unlabeled) == 67349 - 64 and all("label" not in r for r in unlabeled)
    assert json.loads((first / "meta.json").read_text())["test_source"] == "dev.jsonl"


def test_deterministic_per_seed_and_different_across_seeds(tmp_path):
    src = shared_dataset("trec")
    a = make_fewshot(src, tmp_path / "a", k=8, seeds=[13, 21])
    b = make_fewshot(src, tmp_path / "b", k=8, seeds=[13])
    assert (a[0] / "train.jsonl").read_bytes() == (b[0] / "train.jsonl").read_bytes()
    assert (a[0] / "train.jsonl").read_bytes() != (a[1] / "train.jsonl").read_bytes()
    assert Counter(r["label"] for r in _rows(a[0] / "train.jsonl")) == {i: 8 for i in range(6)}


def test_single_file_dataset_gets_a_fixed_test_carve(tmp_path):
    src = shared_dataset("subj")
    a, b = make_fewshot(src, tmp_path, k=4, seeds=[1, 2])
    test_a, test_b = _rows(a / "test.jsonl"), _rows(b / "test.jsonl")
    assert test_a == test_b and len(test_a) == 2000
    assert Counter(r["label"] for r in test_a) == {0: 1000, 1: 1000}
    test_src = {r["source"] for r in test_a}
    assert not test_src & {r["source"] for r in _rows(a / "train.jsonl") + _rows(a / "unlabeled.jsonl")}


def test_pair_task_keeps_text_pair(tmp_path):
    (out,) = make_fewshot(shared_dataset("rte"), tmp_path, k=2, seeds=[5])
    assert all("text_pair" in r for r in _rows(out / "train.jsonl") + _rows(out / "unlabeled.jsonl"))


def test_too_few_examples_and_bad_data_write_nothing(tmp_path, write_jsonl):
    src = tmp_path / "src"
    write_jsonl("train.jsonl", [{"text": str(i), "label": i % 2} for i in range(10)], src)
    write_jsonl("test.jsonl", [{"text": "t", "label": 0}], src)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="K=4 needs 8 train examples per class"):
        make_fewshot(src, out, k=4, seeds=[1])
    assert not out.exists()
    write_jsonl("test.jsonl", [{"text": "t", "label": 0}, "{broken"], src)
    with pytest.raises(DataError, match=r"test.jsonl, line 2: malformed JSON"):
        make_fewshot(src, out, k=2, seeds=[1])
    assert not out.exists()
