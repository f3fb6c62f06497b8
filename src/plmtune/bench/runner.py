"""Run a suite: make the few-shot splits, then every run in its own process.

A K=full run reads the task folder itself (``--data TASK_FOLDER``): nothing is made or copied for it.

A run whose folder holds a ``result.json`` with status ok and a ``bench.json`` with the same run
key (a hash of the resolved method, the data files and the seed) is skipped; anything else (never
run, failed, interrupted, or changed since) runs again. A failure is recorded in ``bench.json``
with the end of its error output and never stops the suite. With ``jobs > 1`` each process gets
one CPU thread, since two multi-threaded torch processes on a small machine slow each other ~10x.
How a run's process is started (fresh, forked from a warm worker, or as a Ray task) is the
executor's business (plmtune.bench.executors); what is written is the same for all of them.

One bench at a time per folder: ``run_suite`` holds an exclusive lock on the bench folder (see
``plmtune.locking``) from before the first write to the end, and every data and run folder it
computes is checked to lie inside the bench folder before anything is written there.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Iterator

from tqdm.auto import tqdm

from ..errors import PlmtuneError
from ..fewshot import make_fewshot
from ..locking import FolderLock
from ..rundir import write_json_atomic
from .executors import EXECUTORS, Outcome, WarmPool, mark_running, run_local
from .layout import FULL, data_dir, inside
from .suite import RunSpec, Suite, run_key


def prepare_data(suite: Suite, out: Path) -> None:
    for task in suite.tasks:
        for k in [k for k in suite.k if k != FULL]:  # K=full reads the task folder as it is
            missing = [s for s in suite.seeds if not (data_dir(out, task, k, s) / "meta.json").is_file()]
            if missing:
                make_fewshot(suite.data_root / task, data_dir(out, task, k), k, missing)


def status(spec: RunSpec, key: str) -> str:
    try:
        result = json.loads((spec.out_dir / "result.json").read_text())
        record = json.loads((spec.out_dir / "bench.json").read_text())
    except (OSError, ValueError, RecursionError):  # missing, cut off, not UTF-8 (JSONDecodeError is a ValueError)
        return "todo"
    if not isinstance(result, dict) or not isinstance(record, dict):
        return "todo"
    # a 'running' record left by a stopped bench is not done, even over an older run's result.json
    return "done" if (result.get("status") == "ok" and record.get("status") == "ok"
                      and record.get("key") == key) else "todo"


def command(spec: RunSpec) -> list[str]:
    """The run as one command line (the local executor's; the others run the same arguments)."""
    return [sys.executable, "-m", "plmtune", *arguments(spec)]


def arguments(spec: RunSpec) -> list[str]:
    common = ["--data", str(spec.data_dir), "--out", str(spec.out_dir), "--seed", str(spec.seed)]
    if spec.method.peer:
        # --opt=VALUE: a value that starts with '-' must not be read as an option
        backbones = [*([f"--backbone={spec.method.backbone}"] if spec.method.backbone else []),
                     *([f"--teacher-backbone={spec.method.teacher_backbone}"] if spec.method.teacher_backbone else [])]
        return ["peer", spec.method.peer, *common, *backbones]
    # --overwrite: the bench owns its run folders and re-runs one only when it is not done (failed,
    # interrupted or changed); the old outputs stay until the new run has succeeded.
    return ["run", spec.method.recipe, *common, "--overwrite",
            *[a for s in spec.method.set for a in ("--set", s)]]


def record(spec: RunSpec, key: str, outcome: Outcome) -> dict[str, Any]:
    """Write the run's final bench.json (whichever executor ran it) and return it."""
    rec = {"key": key, "status": "ok" if outcome.returncode == 0 else "failed", "returncode": outcome.returncode,
           "seconds": outcome.seconds, "method": spec.method.name, "task": spec.task, "k": spec.k, "seed": spec.seed}
    if outcome.returncode != 0:
        rec["error"] = outcome.error
        if outcome.timed_out:
            rec["timed_out"] = True
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(spec.out_dir / "bench.json", rec)
    return rec


def _outcomes(specs: list[RunSpec], keys: dict, executor: str, jobs: int, timeout: float | None,
              ray: dict | None) -> Iterator[tuple[RunSpec, Outcome]]:
    """(spec, outcome) for every spec, in the order they finish."""
    if executor == "ray":
        from .ray_executor import run_on_ray

        ray = dict(ray or {})
        yield from run_on_ray(((s, arguments(s), s.out_dir, keys[id(s)]) for s in specs), concurrency=jobs,
                              cpus_per_run=ray.get("cpus_per_run", 1), gpus_per_run=ray.get("gpus_per_run", 0),
                              timeout=timeout, address=ray.get("address"))
        return
    pool = WarmPool() if executor == "warm" else None
    run = pool.run if pool else run_local
    threads = 1 if jobs > 1 else None

    def one(spec: RunSpec) -> Outcome:
        return run(arguments(spec), threads, timeout, lambda pid: mark_running(spec.out_dir, keys[id(spec)], pid))

    try:
        if pool and specs:
            pool.start(min(jobs, len(specs)))  # the imports, once per worker, before the first run is timed
        with ThreadPoolExecutor(max_workers=jobs) as threads_pool:
            futures = {threads_pool.submit(one, spec): spec for spec in specs}
            for future in as_completed(futures):
                yield futures[future], future.result()
    finally:
        if pool:
            pool.close()


def run_suite(suite: Suite, out: Path, jobs: int = 1, only: str | None = None, progress: bool = True,
              methods: list[str] | None = None, executor: str = "local", timeout: float | None = None,
              ray: dict | None = None) -> dict[str, int]:
    """Run what is missing or broken; return counts of done, ran, failed.

    `only` filters runs by a glob over their labels ('sst2 K=16 * seed 13'); `methods` by name.
    `executor` is one of EXECUTORS; `timeout` (seconds) kills a run that takes longer; `ray` holds
    the Ray executor's address, cpus_per_run and gpus_per_run.
    """
    import fnmatch

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise PlmtuneError(f"jobs must be a positive integer, got {jobs!r}.")
    if executor not in EXECUTORS:
        raise PlmtuneError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}.")
    if timeout is not None and not timeout > 0:
        raise PlmtuneError(f"timeout must be a positive number of seconds, got {timeout!r}.")
    with FolderLock(out, "bench"):
        return _run_locked(suite, out, jobs, progress, [
            s for s in suite.expand(out) if (only is None or fnmatch.fnmatch(s.label, only))
            and (methods is None or s.method.name in methods)], executor, timeout, ray)


def _run_locked(suite: Suite, out: Path, jobs: int, progress: bool, specs: list[RunSpec], executor: str,
                timeout: float | None, ray: dict | None) -> dict[str, int]:
    for spec in specs:  # before any write: nothing of this bench may land outside its folder
        if spec.k != FULL:  # a K=full run's data is the task folder, read and never written
            inside(out, spec.data_dir)
        inside(out, spec.out_dir)
    prepare_data(suite, out)
    # Written before any run, so a bench stopped part-way (deadline, Ctrl-C) can still be reported.
    write_json_atomic(out / "suite.json", {"suite": str(suite.path), "name": suite.name, "baseline": suite.baseline,
                                           "tasks": list(suite.tasks), "k": list(suite.k), "seeds": list(suite.seeds),
                                           "methods": [m.name for m in suite.methods]})
    keys = {id(s): run_key(s) for s in specs}
    todo = [s for s in specs if status(s, keys[id(s)]) != "done"]
    counts = {"total": len(specs), "skipped": len(specs) - len(todo), "ran": 0, "failed": 0}
    bar = tqdm(total=len(todo), desc=f"bench {suite.name}", unit="run", disable=not progress)
    for spec, outcome in _outcomes(todo, keys, executor, jobs, timeout, ray):
        rec = record(spec, keys[id(spec)], outcome)
        counts["ran"] += 1
        counts["failed"] += rec["status"] != "ok"
        bar.set_postfix(failed=counts["failed"])
        bar.update(1)
        if rec["status"] != "ok":
            tqdm.write(f"FAILED {rec['task']} K={rec['k']} {rec['method']} seed {rec['seed']}: "
                       f"{rec['error'].splitlines()[-1] if rec.get('error') else 'exit ' + str(rec['returncode'])}")
    bar.close()
    return counts
