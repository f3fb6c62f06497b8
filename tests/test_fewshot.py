from __future__ import annotations

import json
from collections import Counter

import pytest

from shared_data import shared_dataset
from plmtune.errors import DataError, PlmtuneError
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


# --------------------------------------------------------------------------- output folders (issue 14)


def _small_source(root, write_jsonl, n=20, text=lambda i: f"row {i}"):
    src = root / "src"
    write_jsonl("train.jsonl", [{"text": text(i), "label": i % 2} for i in range(n)], src)
    write_jsonl("test.jsonl", [{"text": "t", "label": 0}, {"text": "u", "label": 1}], src)
    return src


def test_splits_with_unicode_line_separators_read_back(tmp_path, write_jsonl):
    # D20: make_fewshot writes U+2028 raw (ensure_ascii=False); the reader must accept its own output.
    from plmtune.config import DataConfig
    from plmtune.data import load_task

    src = _small_source(tmp_path, write_jsonl, text=lambda i: f"row {i}\u2028next\x85end")
    (out,) = make_fewshot(src, tmp_path / "few", k=2, seeds=[1])
    task = load_task(out, DataConfig())
    assert len(task.splits["train"]) == 4 and all("\u2028" in r["text"] for r in task.splits["train"])


def test_outputs_get_umask_modes(tmp_path, write_jsonl):
    # O8: mkdtemp's 0700 must not leak into the seed folder.
    import os

    old = os.umask(0o022)
    try:
        (out,) = make_fewshot(_small_source(tmp_path, write_jsonl), tmp_path / "few", k=2, seeds=[1])
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}


def test_rerun_replaces_a_folder_plmtune_wrote(tmp_path, write_jsonl):
    src = _small_source(tmp_path, write_jsonl)
    (first,) = make_fewshot(src, tmp_path / "few", k=2, seeds=[1])
    (first / "train.jsonl").write_text("stale\n")
    (again,) = make_fewshot(src, tmp_path / "few", k=2, seeds=[1])
    assert len(_rows(again / "train.jsonl")) == 4
    assert json.loads((again / "meta.json").read_text())["written_by"] == "plmtune data fewshot"
    assert sorted(p.name for p in (tmp_path / "few").iterdir()) == ["2-1"]


def test_rerun_keeps_a_plmtune_folder_that_holds_other_files(tmp_path, write_jsonl):
    src = _small_source(tmp_path, write_jsonl)
    (first,) = make_fewshot(src, tmp_path / "few", k=2, seeds=[1])
    (first / "run").mkdir()
    with pytest.raises(PlmtuneError, match=r"2-1: .*also holds run.*move"):
        make_fewshot(src, tmp_path / "few", k=2, seeds=[1])
    assert (first / "run").is_dir()


def test_target_that_contains_the_source_is_refused(tmp_path, write_jsonl):
    src = _small_source(tmp_path / "few" / "2-1", write_jsonl)  # few/2-1/src
    with pytest.raises(PlmtuneError, match=r"holds the source folder"):
        make_fewshot(src, tmp_path / "few", k=2, seeds=[1])
    assert (src / "train.jsonl").is_file()


def test_stale_temp_folders_of_dead_runs_are_cleaned(tmp_path, write_jsonl):
    # SIGKILL leaks the temp folder; the next run removes ours (dead writer) and nothing else.
    import os
    import subprocess
    import sys

    few = tmp_path / "few"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    ours_dead = few / f".2-7.plmtune-tmp-{dead}-0123abcd"
    ours_alive = few / f".2-7.plmtune-tmp-{os.getppid()}-0123abcd"  # another live writer: keep
    legacy = few / ".8-1.k3j_x9qz"  # the old mkdtemp name, holding only our files
    foreign = few / ".8-1.notours1"
    for folder in (ours_dead, ours_alive, legacy, foreign):
        folder.mkdir(parents=True)
        (folder / "train.jsonl").write_text("{}\n")
    (foreign / "NOTES.txt").write_text("keep me\n")
    make_fewshot(_small_source(tmp_path, write_jsonl), few, k=2, seeds=[1])
    assert sorted(p.name for p in few.iterdir()) == sorted([ours_alive.name, foreign.name, "2-1"])
