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
