"""The bench's executors (plmtune.bench.executors, plmtune.bench.ray_executor): a fresh process per run
(local), a process forked per run from a server that did the imports once (warm), and Ray tasks on a
local Ray with two workers (ray). The same run folders whichever ran them; a run killed mid-way fails
alone and the next bench redoes it; a run past its timeout is killed and recorded as such. Bad
executor options are rows of the bad-input table (tests/test_bad_input_bench.py)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from shared_data import shared_dataset
from plmtune.bench.runner import run_suite, status
from plmtune.bench.suite import load_suite, run_key


def _tests(out):
    """run folder (relative) → its result.json's test metrics, for every finished run of a bench."""
    return {str(p.parent.relative_to(out)): json.loads(p.read_text())["test"]
            for p in sorted((out / "runs").rglob("result.json"))}


def _suite(tmp_path, methods: str, baseline="vanilla"):
    path = tmp_path / "suite.yaml"
    path.write_text(f"name: t\ndata_root: {shared_dataset('sst2').parent}\ntasks: [sst2]\nk: [4]\nseeds: [1]\n"
                    f"baseline: {baseline}\nmethods:\n{methods}")
    return load_suite(path)


def _kill_when_running(run_dir, killed: dict) -> threading.Thread:
    """A watcher that SIGKILLs the run's process as soon as its bench.json says it is running."""
    def watch():
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            try:
                record = json.loads((run_dir / "bench.json").read_text())
            except (OSError, ValueError):
                record = {}
            if record.get("status") == "running":
                os.kill(record["pid"], signal.SIGKILL)
                killed["pid"] = record["pid"]
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_ray_runs_the_smoke_suite_as_the_local_executor_does_and_a_killed_run_is_redone(tmp_path):
    suite = load_suite("smoke", data_root=shared_dataset("sst2").parent)
    # two runs at a time on both sides, so both give every run one torch thread
    assert run_suite(suite, tmp_path / "local", jobs=2, progress=False) == {
        "total": 8, "skipped": 0, "ran": 8, "failed": 0}
    victim = tmp_path / "ray" / "runs" / "sst2" / "k8" / "vanilla" / "seed-13"
    killed: dict = {}
    watcher = _kill_when_running(victim, killed)
    first = run_suite(suite, tmp_path / "ray", jobs=2, progress=False, executor="ray")
    watcher.join(timeout=5)
    assert killed, "the watcher never saw the run going"
    assert first == {"total": 8, "skipped": 0, "ran": 8, "failed": 1}
    record = json.loads((victim / "bench.json").read_text())
    assert record["status"] == "failed" and record["returncode"] == -signal.SIGKILL
    assert record["method"] == "vanilla" and record["seed"] == 13
    # the next bench (same executor) redoes the killed run only; then every run equals the local one
    assert run_suite(suite, tmp_path / "ray", jobs=2, progress=False, executor="ray") == {
        "total": 8, "skipped": 7, "ran": 1, "failed": 0}
    local, ray = _tests(tmp_path / "local"), _tests(tmp_path / "ray")
    assert len(local) == 8 and ray == local


@pytest.mark.slow
def test_warm_workers_write_what_fresh_processes_write_and_a_run_past_its_timeout_is_killed(tmp_path):
    suite = _suite(tmp_path, "  - {name: vanilla, recipe: baseline, set: ['train.max_steps=4', 'train.eval_every=50']}\n"
                             "  - {name: majority, peer: majority}\n")
    for executor in ("local", "warm"):
        assert run_suite(suite, tmp_path / executor, progress=False, executor=executor)["failed"] == 0
    assert len(_tests(tmp_path / "local")) == 2 and _tests(tmp_path / "warm") == _tests(tmp_path / "local")
    # a timeout far below what loading a 22M-parameter model takes: the run is killed, recorded, and
    # the bench goes on (no result.json is left for it)
    for executor in ("local", "warm"):
        out = tmp_path / f"timeout-{executor}"
        counts = run_suite(suite, out, progress=False, executor=executor, timeout=0.05, methods=["vanilla"])
        assert counts == {"total": 1, "skipped": 0, "ran": 1, "failed": 1}
        record = json.loads((out / "runs/sst2/k4/vanilla/seed-1/bench.json").read_text())
        assert record["status"] == "failed" and record["timed_out"] is True, record
        assert record["returncode"] == -signal.SIGKILL
        assert "killed after its timeout of 0.05 s" in record["error"]
        assert not (out / "runs/sst2/k4/vanilla/seed-1/result.json").exists()


def test_a_run_left_running_is_not_done_even_over_an_older_result(tmp_path):
    suite = _suite(tmp_path, "  - {name: majority, peer: majority}\n", baseline="majority")
    (spec,) = suite.expand(tmp_path / "bench")
    key = run_key(spec)
    spec.out_dir.mkdir(parents=True)
    (spec.out_dir / "result.json").write_text(json.dumps({"status": "ok", "test": {"accuracy": 0.5}}))
    for record, expected in (({"key": key, "status": "ok"}, "done"),
                             ({"key": key, "status": "running", "pid": 1, "host": "h"}, "todo"),
                             ({"key": key, "status": "failed"}, "todo"),
                             ({"key": "other", "status": "ok"}, "todo")):
        (spec.out_dir / "bench.json").write_text(json.dumps(record))
        assert status(spec, key) == expected, record
