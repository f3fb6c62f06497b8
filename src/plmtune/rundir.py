"""The run folder: atomic writes, preparing the folder, the metric log, and who may write.

Bottom layer: every writer of a run's files (stages, tune, demo, bench, the CLI) uses these, so
a folder holding a ``result.json`` always holds a finished run and no reader sees half a file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import PlmtuneError, RecipeError, suggest

logger = logging.getLogger(__name__)


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
TRACKING = "tracking"  # the experiment trackers' files (train.report_to): OUT/tracking/plmtune/ for tensorboard
# The outputs a run replaces. Stage state folders come on top; pretrain/ is not listed: it is a
# cache the pretrain stage reuses when its fingerprint matches.
OUTPUTS = ("result.json", "metrics.jsonl", "recipe.yaml", "checkpoint", "model", TRACKING)
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
                                  "recipe.yaml, checkpoint/, model/ and tracking/ here.\n", encoding="utf-8")
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


# --------------------------------------------------------------------------- experiment trackers

TRACKER_PROJECT = "plmtune"  # the project every run logs to (wandb, mlflow, comet); tensorboard: OUT/tracking/plmtune/
_NOT_TRACKED = {"type", "split", "step", "epoch", "time", "n"}  # record fields that are not metrics


def tracker_names() -> tuple[str, ...]:
    """The tracker names ``train.report_to`` accepts: those Accelerate knows (its LOGGER_TYPE_TO_CLASS,
    trackers registered with ``register_tracker_class`` included), and 'all' (every one installed)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return ("all", *LOGGER_TYPE_TO_CLASS)


def check_trackers(names: str | Iterable[str], where: str = "train.report_to") -> tuple[str, ...]:
    """`names` as a tuple without repeats; RecipeError (with the nearest name) for one Accelerate does not know."""
    names = (names,) if isinstance(names, str) else tuple(names)
    if names:
        known = tracker_names()
        for i, name in enumerate(names):
            if name not in known:
                raise RecipeError(f"{where}[{i}] = {name!r} is not an experiment tracker Accelerate knows."
                                  f"{suggest(str(name), known)}")
    return tuple(dict.fromkeys(names))


def _tracker_installed(name: str) -> bool:
    # Accelerate's own test (is_tensorboard_available, ...), made at call time; custom trackers have none.
    from accelerate.utils import imports

    available = getattr(imports, f"is_{name}_available", None)
    return available is None or bool(available())


def check_tracker_packages(names: Iterable[str], where: str = "train.report_to") -> None:
    """RecipeError where a named tracker's Python package is not installed ('all': where none is)."""
    for i, name in enumerate(names):
        if name == "all":
            if not any(_tracker_installed(n) for n in tracker_names()[1:]):
                raise RecipeError(f"{where}[{i}] = 'all' logs to every experiment tracker that is installed, "
                                  "and none is. Install one (e.g. 'pip install tensorboard') or remove 'all'.")
        elif not _tracker_installed(name):
            raise RecipeError(f"{where}[{i}]: the tracker '{name}' needs the Python package '{name}', which is "
                              f"not installed. Install it with 'pip install {name}', or remove '{name}' from {where}.")


def flat_config(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested recipe mapping as the flat hyper-parameters trackers take: {'train.lr': 5e-05,
    'techniques.0.name': 'llrd', ...} (the --set paths); a list of plain values becomes its JSON text."""
    out: dict[str, Any] = {}
    for key, value in (tree.items() if isinstance(tree, dict) else enumerate(tree)):
        name = f"{prefix}{key}"
        if isinstance(value, dict) or (isinstance(value, (list, tuple))
                                       and any(isinstance(v, (dict, list, tuple)) for v in value)):
            out.update(flat_config(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(list(value))
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def start_trackers(names: Iterable[str], logging_dir: Path, config: dict[str, Any],
                   purge_step: int | None = None) -> list[Any]:
    """Start Accelerate's tracker classes for `names` as ``Accelerator.init_trackers`` does, each with
    `config` as its hyper-parameters. `purge_step` (a resumed run): TensorBoard drops what the
    interrupted run logged from that step on, as the resumed run logs it again."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, filter_trackers

    logging_dir.mkdir(parents=True, exist_ok=True)
    init_kwargs = {"tensorboard": {"purge_step": purge_step}} if purge_step else {}
    trackers: list[Any] = []
    try:
        for kind in filter_trackers(list(names), str(logging_dir)):
            cls = LOGGER_TYPE_TO_CLASS[str(kind)]
            args = (TRACKER_PROJECT, str(logging_dir)) if cls.requires_logging_directory else (TRACKER_PROJECT,)
            tracker = cls(*args, **init_kwargs.get(str(kind), {}))
            tracker.start()
            trackers.append(tracker)
            tracker.store_init_configuration(config)
    except BaseException:
        finish_trackers(trackers)
        raise
    return trackers


def finish_trackers(trackers: list[Any]) -> None:
    for tracker in trackers:
        try:
            tracker.finish()
        except Exception as err:  # noqa: BLE001  (the records are logged; this must not hide the run's end)
            logger.warning("the %s tracker did not finish cleanly: %s", getattr(tracker, "name", tracker), err)


def _records(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill ends the log
            return


class MetricLog:
    """Appends one JSON object per line to metrics.jsonl (every step and every evaluation), each with
    ``time`` (UNIX seconds, to the ms), and hands the same records to the experiment trackers named
    by the recipe's ``train.report_to``.

    The trackers are Accelerate's tracker classes, started at the first record with the resolved
    recipe (flattened: ``train.lr``, ``techniques.0.name``) and the seed as hyper-parameters, and
    finished by :meth:`close`. They get a train record's loss, lr and grad_norm as ``train/loss``,
    ``train/lr``, ``train/grad_norm`` and an evaluation's metrics as ``<split>/<metric>``
    (``dev/accuracy``), at a run-wide step: a fit that starts again at step 1 (a self-training
    student, a self-distillation round) continues after the previous fit's last step, so the x-axis
    never goes back; metrics.jsonl keeps each fit's own step. A resumed run replays the records
    already in the file to continue that step. Trackers that keep files write them in OUT/tracking/.
    """

    def __init__(self, path: str | Path | None, recipe: Any = None, seed: int | None = None):
        self.path = Path(path) if path else None
        self.enabled = True  # only the main process of a distributed run writes
        self.file = None
        self.tags: dict[str, Any] = {}  # added to every record (multi-stage runs tag stage and iteration)
        train = getattr(recipe, "train", None)
        self.report_to: tuple[str, ...] = tuple(getattr(train, "report_to", ())) if self.path is not None else ()
        check_tracker_packages(self.report_to)  # now, not at the first step
        self.config = {**flat_config(recipe.to_dict()), **({} if seed is None else {"seed": seed})} \
            if self.report_to else {}
        self.trackers: list[Any] = []
        self._offset = self._fit_steps = self._last_train = 0  # see _tracked_step

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None and self.enabled and self.file is None:
            self._open()
        if self.file:
            self.file.write(json.dumps({**self.tags, **record, "time": round(time.time(), 3)}) + "\n")
            self.file.flush()
            if self.trackers:
                step = self._tracked_step(record)
                prefix = record.get("split") or record.get("type", "log")
                values = {f"{prefix}/{k}": v for k, v in record.items()
                          if k not in _NOT_TRACKED and isinstance(v, (int, float)) and not isinstance(v, bool)}
                for tracker in self.trackers if values else ():
                    tracker.log(values, step=step)

    def _open(self) -> None:
        resumed = False
        if self.report_to and self.path.is_file():  # a resumed run: continue the run-wide step of the kept records
            for record in _records(self.path):
                self._tracked_step(record)
                resumed = True
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        if self.report_to:
            self.trackers = start_trackers(self.report_to, self.path.parent / TRACKING, self.config,
                                           self._offset + self._fit_steps + 1 if resumed else None)

    def _tracked_step(self, record: dict[str, Any]) -> int:
        """The run-wide step of `record`: a train record whose step does not pass the previous one's
        starts a new fit, which continues after the last step of the fit before it."""
        step = int(record.get("step") or 0)
        if record.get("type") == "train":
            if step <= self._last_train:
                self._offset, self._fit_steps = self._offset + self._fit_steps, 0
            self._last_train = step
        self._fit_steps = max(self._fit_steps, step)
        return self._offset + step

    def close(self) -> None:
        trackers, self.trackers = self.trackers, []
        finish_trackers(trackers)
        if self.file:
            self.file.close()
