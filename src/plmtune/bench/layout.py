"""Where a bench writes: every path below the bench folder is made here, and checked to stay there.

A suite file is data from elsewhere, and its method and task names become folder names
(``runs/TASK/kK/METHOD/seed-S``, ``data/TASK/K-S``; K=full runs are ``runs/TASK/kfull/...`` and read
the task folder itself, so they have no data folder). ``name_problem`` rejects any name that could
leave its folder (``/``, ``\\``, ``..``, a leading dot, NUL, empty, absurdly long); ``inside``
is the second line of defence: every folder the bench is about to write or replace must resolve
inside the bench folder, or nothing is written.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import PlmtuneError

MAX_NAME = 100
FULL = "full"  # the K of a run on the task folder's own splits (suite `k: [16, full]`)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def name_problem(name: object) -> str | None:
    """Why `name` cannot be a folder name, or None if it can."""
    if not isinstance(name, str):
        return f"must be a string, got {name!r}"
    if not name.strip():
        return "must not be empty"
    if len(name) > MAX_NAME:
        return f"is {len(name)} characters long; at most {MAX_NAME} are allowed"
    if "/" in name or "\\" in name:
        return f"{name!r} must not contain '/' or '\\' (it becomes a folder name)"
    if name.startswith("."):
        return f"{name!r} must not start with '.' (it becomes a folder name; '..' would leave the bench folder)"
    if _CONTROL.search(name):
        return f"{name!r} must not contain control characters or NUL"
    return None


def inside(root: Path, path: Path) -> Path:
    """Return `path` if it resolves inside `root` (symlinks followed); refuse it otherwise."""
    real_root, real = Path(root).resolve(), Path(path).resolve()
    if real != real_root and real_root not in real.parents:
        raise PlmtuneError(f"Refusing to write {path}: it resolves to {real}, outside the bench folder {real_root}.")
    return path


def k_order(k: int | str) -> tuple[int, int, str]:
    """Sort key of a K: the integers in order, then full (then any other string a record holds)."""
    if isinstance(k, int) and not isinstance(k, bool):
        return (0, k, "")
    return (1, 0, "") if k == FULL else (2, 0, str(k))


def data_dir(out: Path, task: str, k: int, seed: int | None = None) -> Path:
    """The few-shot splits of one task and K (``data/TASK``), or of one seed (``data/TASK/K-SEED``)."""
    folder = out / "data" / task
    return inside(out, folder if seed is None else folder / f"{k}-{seed}")


def run_dir(out: Path, task: str, k: int | str, method: str, seed: int) -> Path:
    """``runs/TASK/kK/METHOD/seed-S`` (``kfull`` for K=full)."""
    return inside(out, out / "runs" / task / f"k{k}" / method / f"seed-{seed}")
