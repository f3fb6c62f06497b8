"""Resume after SIGKILL, and determinism: the real CLI, the real model, a real kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

RECIPE = ["--set", "train.epochs=10", "--set", "train.checkpoint_every=3",
          "--set", "techniques=[{name: child_tuning, mode: F}, {name: ema}]"]


def _run(toy_task, out, *extra):
    return [sys.executable, "-m", "plmtune", "run", "baseline", "--data", str(toy_task), "--out", str(out),
            "--seed", "5", *RECIPE, *extra]


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")


def _train_losses(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["type"] == "train"]


def test_killed_run_resumes_to_the_same_result_and_runs_are_deterministic(toy_task, tmp_path):
    plain = tmp_path / "plain"
    subprocess.run(_run(toy_task, plain), check=True, env=_env(), capture_output=True, timeout=600)
    again = tmp_path / "again"
    subprocess.run(_run(toy_task, again), check=True, env=_env(), capture_output=True, timeout=600)
    a, b = (json.loads((d / "result.json").read_text()) for d in (plain, again))
    assert a["test"] == b["test"] and a["dev_history"] == b["dev_history"]  # same recipe + seed: identical
    assert _train_losses(plain) == _train_losses(again)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_run(toy_task, killed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        log = killed / "metrics.jsonl"
        steps = [json.loads(x)["step"] for x in log.read_text().splitlines() if x.strip()] if log.is_file() else []
        if steps and max(steps) >= 17 and (killed / "checkpoint" / "checkpoint.safetensors").is_file():
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "result.json").exists()
    resumed = subprocess.run(_run(toy_task, killed, "--resume"), env=_env(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    c = json.loads((killed / "result.json").read_text())
    assert c["test"] == a["test"] and c["dev_history"] == a["dev_history"] and c["steps"] == a["steps"] == 40
    assert _train_losses(killed) == _train_losses(plain)  # every step's loss, before and after the kill
    assert not (killed / "checkpoint").exists()  # removed once the run finished
