"""End-to-end through the real command line, with the real bundled model and real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from math import comb

import pytest

from conftest import shared_dataset

pytestmark = pytest.mark.slow


def plmtune(*args, cwd=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "plmtune", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=900)


def binomial_p_value(successes: int, n: int, p: float = 0.5) -> float:
    """One-sided P(X >= successes) for X ~ Binomial(n, p)."""
    return sum(comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(successes, n + 1))


@pytest.fixture(scope="module")
def sst2_16_13(tmp_path_factory):
    out = tmp_path_factory.mktemp("few")
    proc = plmtune("data", "fewshot", shared_dataset("sst2"), out, "--k", 16, "--seeds", 13)
    assert proc.returncode == 0, proc.stderr
    return out / "16-13"


@pytest.mark.parametrize("recipe", ["baseline", "llrd"])
def test_run_on_sst2_k16_is_clearly_above_chance(sst2_16_13, tmp_path, recipe):
    out = tmp_path / recipe
    proc = plmtune("run", recipe, "--data", sst2_16_13, "--out", out, "--seed", 13)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    test = result["test"]
    assert test["n"] == 872
    correct = round(test["accuracy"] * test["n"])
    # The SST-2 dev set is 49% negative / 51% positive: the majority guess scores 0.509.
    assert test["accuracy"] > 0.58
    assert binomial_p_value(correct, test["n"]) < 1e-4
    assert set(test) >= {"accuracy", "macro_f1", "mcc", "f1_positive"}
    assert result["seed"] == 13 and result["recipe"]["name"] == recipe
    assert result["parameters"]["trainable"] == result["parameters"]["total"] > 22_000_000
    assert result["versions"]["torch"] and result["versions"]["transformers"]
    assert "commit" in (result["git"] or {"commit": None})
    assert result["train_seconds"] > 0 and result["dev"]["n"] == 32
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["type"] == "train" for r in steps) == result["steps"] == 80


def test_validate_reports_every_bad_recipe(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: baseline\ntrain: {lr: 3}\n")
    proc = plmtune("validate", "baseline", bad)
    assert proc.returncode == 2
    assert "baseline: ok" in proc.stdout
    assert "train.lr = 3.0 is out of range" in proc.stderr


def test_show_applies_overrides():
    proc = plmtune("show", "llrd", "--set", "techniques.0.decay=0.7")
    assert proc.returncode == 0 and "decay: 0.7" in proc.stdout


def test_bad_data_exits_2_with_one_paragraph_and_writes_nothing(tmp_path):
    data = tmp_path / "task"
    data.mkdir()
    (data / "train.jsonl").write_text('{"text": "a", "label": 0}\n{"text": "b"}\n')
    out = tmp_path / "out"
    proc = plmtune("run", "baseline", "--data", data, "--out", out)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "train.jsonl, line 2, field 'label': missing field" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_fewshot_bad_seeds_and_unwritable_out(tmp_path):
    proc = plmtune("data", "fewshot", shared_dataset("sst2"), tmp_path / "o", "--seeds", "1,x")
    assert proc.returncode == 2 and "--seeds must be comma-separated integers" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_demo_runs_offline_and_writes_results(tmp_path):
    proc = plmtune("demo", "--out", tmp_path / "demo", "--seeds", "13")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "demo" / "demo_results.json").read_text())
    assert set(summary["results"]) == {"baseline", "llrd"}
    for name in ("baseline", "llrd"):
        assert summary["results"][name]["accuracy"][0] > 0.7
        assert f"{name:10s}" in proc.stdout
    assert (tmp_path / "demo" / "data" / "unlabeled.jsonl").is_file()
