"""The run folder: atomic writes, preparing the folder, the metric log, and who may write.

Bottom layer: every writer of a run's files (stages, tune, demo, bench, the CLI) uses these, so
a folder holding a ``result.json`` always holds a finished run and no reader sees half a file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
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
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def prepare_out_dir(out: Path, resume: bool = False, stage_dirs: tuple[str, ...] = ()) -> None:
    """Create the run folder and make sure it is writable before any training time is spent.

    The old result.json goes first (a folder never shows a stale result beside new metrics);
    without `resume` so do the metric log, the loop checkpoint and the stages' state folders
    `stage_dirs` (all written by plmtune: nothing else in the folder is touched).
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise PlmtuneError(f"Cannot write to the output folder {out}: {err.strerror or err}.") from err
    (out / "result.json").unlink(missing_ok=True)
    if not resume:
        (out / "metrics.jsonl").unlink(missing_ok=True)
        for name in ("checkpoint", *stage_dirs):
            shutil.rmtree(out / name, ignore_errors=True)
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
