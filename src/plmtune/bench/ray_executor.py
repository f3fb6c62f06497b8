"""`plmtune bench --executor ray`: every run a Ray task, on a local Ray that plmtune starts (``-j`` runs
at once) or on a running cluster (``--ray-address``). Ray schedules; plmtune writes nothing of its own
scheduling.

Each task declares its CPUs (``--cpus-per-run``, also the run's torch threads) and GPUs
(``--gpus-per-run``). Inside a Ray worker the run is forked from that worker's warm worker
(plmtune.bench.executors.WarmWorker), which Ray keeps between the tasks it gives the worker, so
imports are paid once per worker, not once per run. A run that crashes, is killed or passes its
timeout fails alone; a Ray worker that dies (an out-of-memory kill of the whole worker, a lost node)
fails the run it held, recorded with Ray's error. Tasks are never retried by Ray: the bench's own
rule (a run not done is run again by the next ``plmtune bench``) is the one retry policy.

On a cluster the bench folder must be on a file system every node sees at the same path (each run
writes its own folder there), plmtune must be installed on every node, and the task folders of the
suite must be readable there too.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import PlmtuneError
from .executors import ERROR_TAIL, RUN_ENV, Outcome, mark_running, warm_pool


def _import_ray():
    try:
        import ray
    except ImportError:
        raise PlmtuneError("--executor ray needs Ray: pip install 'plmtune[ray]' (or pip install ray).") from None
    return ray


def _task(argv: list[str], threads: int, timeout: float | None, out_dir: str, key: str) -> Outcome:
    """The body of one Ray task, in a Ray worker: the run forked from this Ray worker's warm worker."""
    # Ray sets CUDA_VISIBLE_DEVICES for each task in the worker's environment; hand it to the run.
    env = {k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES",) if k in os.environ}
    return warm_pool().run(argv, threads, timeout, on_start=lambda pid: mark_running(Path(out_dir), key, pid),
                             env=env)


def run_on_ray(jobs: Iterable[tuple[object, list[str], Path, str]], *, concurrency: int, cpus_per_run: int,
               gpus_per_run: float, timeout: float | None, address: str | None) -> Iterator[tuple[object, Outcome]]:
    """Submit every (spec, argv, out_dir, key) as a task; yield (spec, outcome) as each finishes."""
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False,
                   "runtime_env": {"env_vars": dict(RUN_ENV)}}
        if address:
            ray.init(address=address, **options)
        else:
            # A local Ray sized to the bench: `concurrency` runs of `cpus_per_run` CPUs each.
            # Ray nices its workers to 15 by default; here the workers do the bench's work and the driver
            # only waits, so they run at normal priority (else any other process starves them ~10x).
            ray.init(num_cpus=concurrency * cpus_per_run, num_gpus=None if gpus_per_run else 0,
                     object_store_memory=100 * 1024 * 1024, _system_config={"worker_niceness": 0}, **options)
    try:
        remote = ray.remote(_task).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)
        pending, submitted = {}, {}
        for spec, argv, out_dir, key in jobs:
            ref = remote.remote(list(argv), cpus_per_run, timeout, str(out_dir), key)
            pending[ref], submitted[ref] = spec, time.perf_counter()
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            spec = pending.pop(ref)
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayError as err:  # the worker died, the node was lost, the task was cancelled
                outcome = Outcome(-1, round(time.perf_counter() - submitted[ref], 2),
                                  f"plmtune bench: Ray lost the run: {err}"[-ERROR_TAIL:])
            yield spec, outcome
    finally:
        if started_here:
            ray.shutdown()
