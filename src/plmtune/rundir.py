"""The run folder: atomic writes, preparing the folder, the metric log, and who may write.

Bottom layer: every writer of a run's files (stages, tune, demo, bench, the CLI) uses these, so
a folder holding a ``result.json`` always holds a finished run and no reader sees half a file.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import PlmtuneError


def is_main_process() -> bool:
    """True in a plain run and on rank 0 of a distributed one (torchrun sets RANK).

    Decided from the environment, so it is known before any Accelerator exists; the files of a
    run folder are written by this process only.
    """
    return int(os.environ.get("RANK", "0")) == 0


def _umask() -> int:
    # os.umask can only be read by setting it; set it back at once.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` through a temp file and rename, so readers never see half a file.

    The file gets the mode an ordinary ``open(path, "w")`` would give it (0666 less the umask,
    typically 0644), not mkstemp's private 0600: results are meant to be read by others.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON atomically (see :func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


MARKER = ".plmtune-run"  # written into every run folder: plmtune may replace its outputs there
ASIDE = ".previous"  # a re-run keeps the previous outputs here until it has succeeded
# The outputs a run replaces. Stage state folders come on top; pretrain/ is not listed: it is a
# cache the pretrain stage reuses when its fingerprint matches.
OUTPUTS = ("result.json", "metrics.jsonl", "recipe.yaml", "checkpoint", "model")
# Files that do not make a folder "someone else's": the bench's record of a run and the lock.
_NEUTRAL = {MARKER, ASIDE, ".plmtune.lock", "bench.json", ".write-test"}


def _check_owner(out: Path, outputs: tuple[str, ...]) -> None:
    """Refuse a folder that holds files plmtune did not write (a data folder, the cwd, a home folder)."""
    if out.exists() and not out.is_dir():
        raise PlmtuneError(f"Cannot write to the output folder {out}: it is a file, not a folder.")
    if not out.is_dir() or (out / MARKER).is_file():
        return
    names = {p.name for p in out.iterdir()} - _NEUTRAL
    # A run folder of an earlier plmtune version has no marker but only plmtune's own files.
    if not names or ("recipe.yaml" in names and names <= set(outputs) | {"pretrain"}):
        return
    shown = ", ".join(sorted(names)[:4]) + (", ..." if len(names) > 4 else "")
    raise PlmtuneError(
        f"The output folder {out} already holds files plmtune did not write ({shown}) and no {MARKER} marker, "
        "so it is not a plmtune run folder; a run there could replace files such as checkpoint/ or result.json "
        "that belong to something else. Use a new or empty folder for --out.")


def _move(src: Path, dst: Path) -> None:
    if src.exists() or src.is_symlink():
        os.replace(src, dst)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def run_folder(out: str | Path, resume: bool = False, overwrite: bool = False,
               stage_dirs: tuple[str, ...] = ()) -> Iterator[Path]:
    """Own the run folder `out` for the life of the block: check, lock, set old outputs aside.

    Refuses a folder plmtune did not write, one another process is using (``FolderLock``), and
    one holding a finished run (result.json) unless `overwrite`. Without `resume` the previous
    outputs (:data:`OUTPUTS` and `stage_dirs`) are moved into ``out/.previous``: a run that fails
    puts them back (the old result stays intact), a successful one deletes them, and an
    interrupted one (Ctrl-C, kill) leaves its checkpoint in place for ``--resume`` and the old
    outputs in ``.previous``. With `resume` the folder's checkpoint and logs are continued in place.
    """
    from .locking import FolderLock

    out = Path(out)
    outputs = (*OUTPUTS, *stage_dirs)
    _check_owner(out, outputs)
    created = not out.exists()  # a run that fails leaves no folder it created behind
    failed = False
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise PlmtuneError(f"Cannot write to the output folder {out}: {err.strerror or err}.") from err
    lock = FolderLock(out, "run").acquire()
    try:
        (out / MARKER).write_text("plmtune run folder: plmtune may replace result.json, metrics.jsonl, "
                                  "recipe.yaml, checkpoint/ and model/ here.\n", encoding="utf-8")
        if (out / "result.json").is_file() and not overwrite:
            raise PlmtuneError(
                f"{out} already holds a finished run (result.json). Pass --overwrite to replace it (the old "
                "outputs are kept until the new run has succeeded), or use another --out.")
        aside, moved = out / ASIDE, False
        if not resume:
            present = [name for name in outputs if (out / name).exists()]
            if aside.exists():
                if present and not overwrite:
                    raise PlmtuneError(
                        f"{out} holds an interrupted run (the outputs before it are kept in {aside}). Continue it "
                        "with --resume, or pass --overwrite to discard the interrupted run's files.")
                for name in present:  # the interrupted run's own files: the previous run stays aside
                    _remove(out / name)
            elif present:
                aside.mkdir()
                for name in present:
                    _move(out / name, aside / name)
                moved = True
        for name in stage_dirs:
            (out / name).mkdir(exist_ok=True)
        try:
            yield out
        except KeyboardInterrupt:
            raise  # keep what the interrupted run wrote: its checkpoint is what --resume continues from
        except BaseException:
            failed = True
            if moved:  # the new run failed: its partial outputs go, the previous ones come back
                for name in outputs:
                    _remove(out / name)
                for item in aside.iterdir():
                    _move(item, out / item.name)
                aside.rmdir()
            raise
        shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        failed = failed or not isinstance(sys.exc_info()[1], KeyboardInterrupt)
        raise
    finally:
        lock.release()
        if failed and created and not any((out / "checkpoint").glob("*")):
            # It holds only what this failed run wrote, and nothing --resume could continue from.
            shutil.rmtree(out, ignore_errors=True)


def prepare_out_dir(out: Path, resume: bool = False, stage_dirs: tuple[str, ...] = ()) -> None:
    """Create the run folder and make sure it is writable, refusing a folder plmtune did not write.

    For callers that write a single file atomically at the end (``plmtune peer``); runs use
    :func:`run_folder`. Nothing is removed: the old result.json stays until the new one replaces it.
    """
    out = Path(out)
    _check_owner(out, (*OUTPUTS, *stage_dirs))
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
        (out / MARKER).write_text("plmtune run folder\n", encoding="utf-8")
    except OSError as err:
        raise PlmtuneError(f"Cannot write to the output folder {out}: {err.strerror or err}.") from err
    for name in stage_dirs:
        (out / name).mkdir(exist_ok=True)


class MetricLog:
    """Appends one JSON object per line to metrics.jsonl (every step and every evaluation)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.enabled = True  # only the main process of a distributed run writes
        self.file = None
        self.tags: dict[str, Any] = {}  # added to every record (multi-stage runs tag stage and iteration)

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None and self.enabled and self.file is None:
            self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        if self.file:
            self.file.write(json.dumps({**self.tags, **record}) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()
