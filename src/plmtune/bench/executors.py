"""How a bench runs its runs. Every executor runs a run as the same command line (``plmtune run ...``
or ``plmtune peer ...``) in a process of its own, so the run folder it writes is the same whichever
executor ran it, and a crash, a kill or an out-of-memory in one run fails that run only:

- ``local`` (the default): a fresh ``python -m plmtune`` process per run. Each run pays the start-up
  (imports: ~5 s of a ~20 s few-shot run on a 2-core CPU).
- ``warm``: a process forked per run from a warm worker (plmtune.bench.zygote) that has imported
  torch, transformers and plmtune once (one worker per run slot, kept for the whole bench). The run
  still has a process of its own (isolation and a clean global state, as with ``local``); only the
  imports are not paid again.
- ``ray`` (:mod:`plmtune.bench.ray_executor`): each run a Ray task that declares its CPUs and GPUs,
  on a local Ray or on a cluster; inside each Ray worker the run is forked from that worker's own
  warm worker, which stays up between the tasks the Ray worker is given.

A run past ``timeout`` seconds is killed and recorded as failed. While a run is going its
``bench.json`` says ``running`` with the pid and host of its process (a bench stopped meanwhile
leaves that record, which counts as not done, so the run is redone next time).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..rundir import write_json_atomic

EXECUTORS = ("local", "warm", "ray")
# What every run's process gets on top of the bench's environment.
RUN_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
ERROR_TAIL = 4000  # characters of a failed run's error output kept in bench.json


@dataclass(frozen=True)
class Outcome:
    """What an executor reports of one run: exit code (negative: killed by that signal), seconds from
    the start of its process to its end, the end of its error output, and whether the timeout hit."""

    returncode: int
    seconds: float
    error: str = ""
    timed_out: bool = False


def thread_env(threads: int | None) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}


def mark_running(out_dir: Path, key: str, pid: int) -> None:
    """The run's bench.json while it runs: which process, on which host (to find or kill a stuck run)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "bench.json", {"key": key, "status": "running", "pid": pid,
                                               "host": socket.gethostname(), "started": time.time()})


def _tail(path: str) -> str:
    with open(path, "rb") as f:
        f.seek(0, io.SEEK_END)
        f.seek(max(0, f.tell() - 4 * ERROR_TAIL))
        return f.read().decode("utf-8", "replace").strip()[-ERROR_TAIL:]


@contextlib.contextmanager
def _error_file() -> Iterator[str]:
    """A temporary file for a run's error output, removed afterwards."""
    with tempfile.NamedTemporaryFile(prefix="plmtune-run-", suffix=".err", delete=False) as err:
        path = err.name
    try:
        yield path
    finally:
        os.unlink(path)


def _outcome(code: int, seconds: float, err_path: str, timed_out: bool, timeout: float | None) -> Outcome:
    """The outcome of a run that ended with `code`: its error output's tail when it failed, and the
    timeout said where that is what killed it."""
    error = _tail(err_path) if code != 0 else ""
    if timed_out:
        error = (error + f"\nplmtune bench: the run was killed after its timeout of {timeout:g} s.").strip()
    return Outcome(code, round(seconds, 2), error, timed_out)


def run_local(argv: list[str], threads: int | None, timeout: float | None,
              on_start: Callable[[int], None] = lambda pid: None) -> Outcome:
    """`python -m plmtune ARGV` in a fresh process; standard output dropped, standard error kept."""
    env = dict(os.environ, **RUN_ENV, **thread_env(threads))
    with _error_file() as path:
        with open(path, "wb") as err:
            start = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "plmtune", *argv], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err, env=env)
            on_start(proc.pid)
            try:
                code, timed_out = proc.wait(timeout=timeout), False
            except subprocess.TimeoutExpired:
                proc.kill()
                code, timed_out = proc.wait(), True
        return _outcome(code, time.perf_counter() - start, path, timed_out, timeout)


# ------------------------------------------------------------------ warm workers

# OpenBLAS (numpy's, scipy's) starts its thread pool when it is loaded, and a pool's threads do not
# survive a fork: a child that then calls BLAS waits for them forever. So a warm worker loads it with
# one thread (no pool), and each run sets the count a fresh process would have had (threadpoolctl).
_WORKER_ENV = {**RUN_ENV, "OPENBLAS_NUM_THREADS": "1"}


def _fresh_blas_threads(threads: int | None) -> int:
    """How many BLAS threads a fresh process started with this process's environment would use."""
    if threads:
        return threads
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        try:
            return max(1, int(os.environ[name]))
        except (KeyError, ValueError):
            pass
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class WarmWorker:
    """One `python -m plmtune.bench.zygote` process: the imports done once, a child forked per run
    (plmtune.bench.zygote has the protocol). One run at a time; a worker that died is replaced."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "plmtune.bench.zygote"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=dict(os.environ, **_WORKER_ENV))
        self._buffer = b""
        ready = self._answer(None)
        if not ready or not ready.get("ready"):
            raise RuntimeError("plmtune bench: a warm worker did not start (its error output is above).")

    def _answer(self, timeout: float | None) -> dict | None:
        """The worker's next answer; None at EOF (it died) or when `timeout` passes first."""
        import select

        deadline = None if timeout is None else time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], wait)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, argv: list[str], threads: int | None, timeout: float | None,
            on_start: Callable[[int], None] = lambda pid: None, env: dict[str, str] | None = None) -> Outcome:
        with _error_file() as path:
            # the run's environment as a fresh process would have it: the worker's own settings undone
            child_env = {k: os.environ.get(k) for k in _WORKER_ENV if k not in RUN_ENV}
            child_env.update(thread_env(threads), **(env or {}))
            request = {"argv": list(argv), "err": path, "threads": threads, "blas": _fresh_blas_threads(threads),
                       "env": child_env}
            start = time.perf_counter()
            try:
                self.proc.stdin.write((json.dumps(request) + "\n").encode())
                self.proc.stdin.flush()
            except OSError:
                return Outcome(-1, 0.0, "plmtune bench: the warm worker had died before the run started.")
            started = self._answer(None)
            if started is None:
                return Outcome(-1, 0.0, "plmtune bench: the warm worker died before the run started.")
            on_start(started["pid"])
            ended = self._answer(timeout)
            timed_out = ended is None and self.alive()
            if timed_out:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(started["pid"], signal.SIGKILL)
                ended = self._answer(None)
            seconds = time.perf_counter() - start
            if ended is None:
                return Outcome(-1, round(seconds, 2), "plmtune bench: the warm worker died during the run.")
            return _outcome(ended["code"], seconds, path, timed_out, timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class WarmPool:
    """Warm workers for runs in parallel threads: each run takes an idle worker (starting one if none is
    idle, replacing one that died) and gives it back."""

    def __init__(self) -> None:
        self._idle: list[WarmWorker] = []
        self._lock = threading.Lock()

    def _take(self) -> WarmWorker:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.alive():
                    return worker
        return WarmWorker()

    def start(self, n: int) -> None:
        """Start `n` workers at once (their imports in parallel), before any run is timed."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=n) as pool:
            workers = list(pool.map(lambda _: WarmWorker(), range(n)))
        with self._lock:
            self._idle.extend(workers)

    def run(self, argv: list[str], threads: int | None, timeout: float | None,
            on_start: Callable[[int], None] = lambda pid: None, env: dict[str, str] | None = None) -> Outcome:
        worker = self._take()
        try:
            return worker.run(argv, threads, timeout, on_start, env)
        finally:
            with self._lock:
                self._idle.append(worker)

    def close(self) -> None:
        with self._lock:
            workers, self._idle = self._idle, []
        for worker in workers:
            worker.close()


_pool: WarmPool | None = None


def warm_pool() -> WarmPool:
    """This process's warm workers (the bench's; in a Ray worker, that worker's own, kept between tasks)."""
    global _pool
    if _pool is None:
        _pool = WarmPool()
    return _pool
