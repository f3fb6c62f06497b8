"""The Markdown table helpers in benchmarks/: folder merging and the paired-Δ cell."""

from __future__ import annotations

import json
import sys

from shared_data import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from _tables import mean_std, paired_delta, runs_by_method  # noqa: E402


def _bench(root, runs: dict) -> None:
    """A bench folder holding finished runs: {(task, method, seed): accuracy}."""
    (root / "runs").mkdir(parents=True)
    (root / "suite.json").write_text(json.dumps({"name": "t", "baseline": "vanilla", "tasks": ["toy"], "k": [8],
                                                 "seeds": [1, 2], "methods": ["vanilla", "other"]}))
    for (task, method, seed), acc in runs.items():
        d = root / "runs" / task / "k8" / method / f"seed-{seed}"
        d.mkdir(parents=True)
        (d / "bench.json").write_text(json.dumps({"method": method, "task": task, "k": 8, "seed": seed,
                                                  "status": "ok", "seconds": 1.0}))
        (d / "result.json").write_text(json.dumps({"status": "ok", "test": {"accuracy": acc}}))


def test_each_method_comes_from_the_first_folder_that_holds_it(tmp_path):
    _bench(tmp_path / "a", {("toy", "vanilla", 1): 0.5, ("toy", "vanilla", 2): 0.6})
    _bench(tmp_path / "b", {("toy", "vanilla", 1): 0.9, ("toy", "vanilla", 2): 0.9,
                            ("toy", "other", 1): 0.7, ("toy", "other", 2): 0.8})
    merged, suite = runs_by_method([tmp_path / "a", tmp_path / "b"])
    assert suite["baseline"] == "vanilla"
    vanilla = {s: r["test"]["accuracy"] for s, r in merged[("toy", 8)]["vanilla"].items()}
    other = {s: r["test"]["accuracy"] for s, r in merged[("toy", 8)]["other"].items()}
    assert vanilla == {1: 0.5, 2: 0.6} and other == {1: 0.7, 2: 0.8}
    reversed_order = runs_by_method([tmp_path / "b", tmp_path / "a"])[0]
    assert reversed_order[("toy", 8)]["vanilla"][1]["test"]["accuracy"] == 0.9


def test_cells():
    assert mean_std([0.5, 0.7]) == "60.0 ± 14.1" and mean_std([0.5]) == "50.0" and mean_std([]) == "–"
    # differences 0.2, 0.2, 0.3: mean 0.2333, sd 0.0577, t(2) 4.3027 → half-width 0.1434
    cell = paired_delta({1: 0.7, 2: 0.8, 3: 0.9}, {1: 0.5, 2: 0.6, 3: 0.6})
    assert cell == "+23.3 [+9.0, +37.7] ▲"
    assert paired_delta({1: 0.7}, {1: 0.5}) == ""


def _distill_run(acc, teacher_acc, *, peer=False):
    """A result as collect() gives it for a distillation run (plmtune's stage, or setfit_distill when peer)."""
    seconds = {"teacher": 300.0, "student": 200.0} if peer else {"teacher_when_labelled": 320.0, "student": 600.0}
    return {"test": {"accuracy": acc}, "_wall_seconds": 1000.0, "train_seconds": 900.0,
            "peak_memory": {"peak_rss_mb": 3000.0}, "parameters": {"trainable": 5, "total": 5},
            "distillation": {"teacher": {"test": {"accuracy": teacher_acc}}, "seconds": seconds}}


def test_exported_runs_read_back_as_the_bench_folder_they_came_from(tmp_path):
    from _tables import from_records, to_record

    runs = {1: _distill_run(0.78, 0.83), 2: _distill_run(0.74, 0.80)}
    lines = [json.dumps(to_record("s", "sst2", 16, "distill", seed, r)) for seed, r in runs.items()]
    (tmp_path / "runs.jsonl").write_text("\n".join(lines) + "\n")
    results, suite = from_records(tmp_path / "runs.jsonl")
    assert suite == {"name": "s"}
    back = results[("sst2", 16)]["distill"]
    for seed, r in runs.items():
        for field in ("test", "_wall_seconds", "train_seconds", "peak_memory", "parameters", "distillation"):
            assert back[seed][field] == r[field], field
    # a folder and a file mix: the folder's method first, the file fills what the folder lacks
    _bench(tmp_path / "a", {("sst2", "vanilla", 1): 0.5, ("sst2", "vanilla", 2): 0.6})
    merged, _ = runs_by_method([tmp_path / "a", tmp_path / "runs.jsonl"])
    assert set(merged[("sst2", 8)]) == {"vanilla"} and set(merged[("sst2", 16)]) == {"distill"}


def test_a_line_that_is_not_an_exported_run_names_the_file_and_line(tmp_path):
    import pytest

    from _tables import from_records

    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps({"task": "sst2", "k": 16, "method": "m", "seed": 1, "test": {}}) + "\n{\"task\": 1}\n")
    with pytest.raises(SystemExit, match=r"runs.jsonl, line 2: not an exported run record \(KeyError"):
        from_records(path)


def test_the_distillation_tables_pair_each_comparison_by_seed():
    from distill_table import tables

    student = {1: _distill_run(0.80, 0.84), 2: _distill_run(0.70, 0.82), 3: _distill_run(0.75, 0.83)}
    peer = {1: _distill_run(0.70, 0.80, peer=True), 2: _distill_run(0.68, 0.79, peer=True)}
    setfit = {s: {"test": {"accuracy": 0.65}, "_wall_seconds": 60.0} for s in (1, 2, 3)}
    merged = {("sst2", 16): {"distill": student, "setfit_distill": peer, "setfit": setfit,
                             "majority": {s: {"test": {"accuracy": 0.5}} for s in (1, 2, 3)}},
              ("sst2", 8): {"distill": student}}
    text = tables(merged, 16, "accuracy")
    metrics, deltas, cost = (line for line in text.splitlines() if line.startswith("| sst2"))
    # seeds; majority; SetFit-MiniLM; SetFit-MPNet = setfit_distill's teacher; setfit_distill; ours
    assert metrics.split(" | ")[1:] == ["3", "50.0 ± 0.0 (50.0)", "65.0 ± 0.0 (65.0)", "79.5 ± 0.7 (79.0)",
                                        "69.0 ± 1.4 (68.0)", "83.0 ± 1.0 (82.0)", "75.0 ± 5.0 (70.0) |"]
    cells = deltas.split(" | ")
    assert cells[1].startswith("+10.0 [")                   # student − SetFit over seeds 1–3
    assert cells[2].startswith("-8.0 [")                    # student − teacher: −4, −12, −8
    assert cells[3].startswith("+6.0 [")                    # over the common seeds 1, 2 only: +10, +2
    assert cells[4].startswith("+3.5 [")                    # plmtune teacher − SetFit-MPNet: +4, +3
    assert cost.split(" | ")[2:] == ["320", "600", "1000", "3000", "60", "300 / 200 / 1000 |"]
    assert tables(merged, 8, "accuracy").count("| sst2 |") == 3   # K=8 has its own rows
