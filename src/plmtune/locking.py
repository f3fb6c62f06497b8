"""One process at a time per output folder: an exclusive, non-blocking lock on a file inside it.

Two `plmtune bench` (or `plmtune run`) processes writing one folder run every job twice and mix
their logs, so the second one must stop at once with a message naming the first. The lock is
``fcntl.flock`` on ``FOLDER/.plmtune.lock``: the kernel drops it when the holding process ends,
however it ends, so a killed process never leaves a stale lock behind. The lock file itself is
kept (removing it would let a third process lock a fresh file while the second still waits on the
old one); it records the holder's pid, host and start time only to make the refusal readable.

Example:
    >>> with FolderLock(out, "bench"):      # doctest: +SKIP
    ...     run_everything(out)
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from .errors import PlmtuneError

LOCK_NAME = ".plmtune.lock"


class FolderBusyError(PlmtuneError):
    """Another live process holds the folder's lock."""


class FolderLock:
    """Exclusive lock on `folder` (created if missing) for the life of this object or process.

    With `wait`, a lock held by another process is waited for (logged once) instead of refused:
    for work the second process can reuse, such as assembling a cached backbone.
    """

    def __init__(self, folder: str | Path, what: str = "plmtune", wait: bool = False):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.wait = wait
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        # O_CLOEXEC (Python's default): child processes must not inherit, and so keep, the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read_holder(fd))
            if self.wait:
                logging.getLogger(__name__).info("waiting for %s, locked by another %s process (%s)",
                                                 self.folder, self.what, holder)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
            else:
                os.close(fd)
                raise FolderBusyError(
                    f"{self.folder} is in use by another {self.what} process ({holder}); two processes on one "
                    f"folder would run every job twice and mix their logs. Wait for it to finish, stop it, or use "
                    f"another folder. (The lock is released when that process ends, however it ends.)") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                               "started": time.strftime("%Y-%m-%d %H:%M:%S %z")})
            os.ftruncate(fd, 0)
            os.pwrite(fd, (info + "\n").encode(), 0)
        except BaseException:
            os.close(fd)  # closing drops the lock
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # the file stays; only the kernel lock goes

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        info = json.loads(data)
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}  # the holder has just locked and not yet written its details


def _describe(info: dict) -> str:
    if not info.get("pid"):
        return "pid unknown: it has only just started"
    return f"pid {info['pid']} on host {info.get('host', '?')}, started {info.get('started', '?')}"
