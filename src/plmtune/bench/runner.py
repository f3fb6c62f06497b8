"""Run a suite: make the few-shot splits, then every run in its own process.

A K=full run reads the task folder itself (``--data TASK_FOLDER``): nothing is made or copied for it.

A run whose folder holds a ``result.json`` with status ok and a ``bench.json`` with the same run
key (a hash of the resolved method, the data files and the seed) is skipped; anything else (never
run, failed, interrupted, or changed since) runs again. A failure is recorded in ``bench.json``
with the end of its error output and never stops the suite. With ``jobs > 1`` each process gets
one CPU thread, since two multi-threaded torch processes on a small machine slow each other ~10x.

One bench at a time per folder: ``run_suite`` holds an exclusive lock on the bench folder (see
``plmtune.locking``) from before the first write to the end, and every data and run folder it
computes is checked to lie inside the bench folder before anything is written there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import PlmtuneError
from ..fewshot import make_fewshot
from ..locking import FolderLock
from ..rundir import write_json_atomic
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
    return "done" if result.get("status") == "ok" and record.get("key") == key else "todo"


def command(spec: RunSpec) -> list[str]:
    base = [sys.executable, "-m", "plmtune"]
    common = ["--data", str(spec.data_dir), "--out", str(spec.out_dir), "--seed", str(spec.seed)]
    if spec.method.peer:
        # --opt=VALUE: a value that starts with '-' must not be read as an option
        backbones = [*([f"--backbone={spec.method.backbone}"] if spec.method.backbone else []),
                     *([f"--teacher-backbone={spec.method.teacher_backbone}"] if spec.method.teacher_backbone else [])]
        return [*base, "peer", spec.method.peer, *common, *backbones]
    # --overwrite: the bench owns its run folders and re-runs one only when it is not done (failed,
    # interrupted or changed); the old outputs stay until the new run has succeeded.
    return [*base, "run", spec.method.recipe, *common, "--overwrite",
            *[a for s in spec.method.set for a in ("--set", s)]]


def execute(spec: RunSpec, key: str, threads: int | None) -> dict[str, Any]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    proc = subprocess.run(command(spec), capture_output=True, text=True, env=env)
    record = {"key": key, "status": "ok" if proc.returncode == 0 else "failed", "returncode": proc.returncode,
              "seconds": round(time.perf_counter() - start, 2), "method": spec.method.name, "task": spec.task,
              "k": spec.k, "seed": spec.seed}
    if proc.returncode != 0:
        record["error"] = proc.stderr.strip()[-4000:]
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(spec.out_dir / "bench.json", record)
    return record


def run_suite(suite: Suite, out: Path, jobs: int = 1, only: str | None = None, progress: bool = True,
              methods: list[str] | None = None) -> dict[str, int]:
    """Run what is missing or broken; return counts of done, ran, failed.

    `only` filters runs by a glob over their labels ('sst2 K=16 * seed 13'); `methods` by name.
    """
    import fnmatch

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise PlmtuneError(f"jobs must be a positive integer, got {jobs!r}.")
    with FolderLock(out, "bench"):
        return _run_locked(suite, out, jobs, progress, [
            s for s in suite.expand(out) if (only is None or fnmatch.fnmatch(s.label, only))
            and (methods is None or s.method.name in methods)])


def _run_locked(suite: Suite, out: Path, jobs: int, progress: bool, specs: list[RunSpec]) -> dict[str, int]:
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
    threads = 1 if jobs > 1 else None
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for record in pool.map(lambda s: execute(s, keys[id(s)], threads), todo):
            counts["ran"] += 1
            counts["failed"] += record["status"] != "ok"
            bar.set_postfix(failed=counts["failed"])
            bar.update(1)
            if record["status"] != "ok":
                tqdm.write(f"FAILED {record['task']} K={record['k']} {record['method']} seed {record['seed']}: "
                           f"{record['error'].splitlines()[-1] if record.get('error') else 'exit ' + str(record['returncode'])}")
    bar.close()
    return counts
