"""The folder lock: one process at a time, refused with the holder named, never stale."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from plmtune.locking import LOCK_NAME, FolderBusyError, FolderLock, _describe

HOLD = ("import sys, time\nfrom plmtune.locking import FolderLock\nFolderLock(sys.argv[1], 'bench').acquire()\n"
        "print('locked', flush=True)\ntime.sleep(600)\n")


@pytest.fixture
def holder(tmp_path):
    """Start a second process holding the lock on tmp_path/'f'; kill it at the end."""
    procs = []

    def start():
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "f")], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_second_process_is_refused_with_the_holders_pid_and_host(tmp_path, holder):
    proc = holder()
    with pytest.raises(FolderBusyError, match=rf"in use by another bench process \(pid {proc.pid} on host .+, "
                                              r"started \d{4}-\d\d-\d\d "):
        FolderLock(tmp_path / "f", "bench").acquire()


def test_the_lock_goes_with_its_process_even_when_killed(tmp_path, holder):
    proc = holder()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with FolderLock(tmp_path / "f") as lock:  # no stale lock: the kernel dropped it
        info = json.loads((tmp_path / "f" / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and lock.path.name == LOCK_NAME


def test_release_lets_the_next_holder_in_and_keeps_the_file(tmp_path):
    first = FolderLock(tmp_path / "f").acquire()
    with pytest.raises(FolderBusyError):  # flock is per open file: a second open in one process is refused too
        FolderLock(tmp_path / "f").acquire()
    first.release()
    FolderLock(tmp_path / "f").acquire().release()
    assert (tmp_path / "f" / LOCK_NAME).is_file()


def test_children_of_the_holder_do_not_inherit_the_lock(tmp_path):
    # A bench starts its runs as child processes; were the lock inherited, a killed bench's runs would keep it.
    with FolderLock(tmp_path / "f"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        FolderLock(tmp_path / "f").acquire().release()
    finally:
        child.kill()
        child.wait()


def test_a_holder_that_has_not_written_its_details_yet_is_described():
    assert "just started" in _describe({})
    assert _describe({"pid": 7, "host": "h", "started": "t"}) == "pid 7 on host h, started t"
