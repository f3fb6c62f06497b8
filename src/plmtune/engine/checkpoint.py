"""Checkpoints that let a killed run resume where it stopped and end as if never interrupted.

A checkpoint holds the model, the optimiser (with wrapper state such as ChildTuning's), the
schedule, every technique's ``state_dict``, the loop's position (step, epoch, batches consumed
in the epoch, the data-order generator's state at the epoch start, best dev result and weights,
patience counter, history) and the Python, NumPy and torch RNG states. It is written to a temp
file and renamed, so a crash while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

FILE = "checkpoint.pt"


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    position: int = 0  # micro-batches of the current epoch already consumed
    epoch_rng: torch.Tensor | None = None  # data-order generator state at the start of `epoch`
    epoch_extra: list[dict[str, Any]] = field(default_factory=list)  # EpochReplay's `keep` states then
    best: dict[str, float] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch: int = 0
    stale: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def save(directory: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, techniques: list,
         state: LoopState) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "techniques": [t.state_dict() for t in techniques],
        "loop": asdict(state),
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{FILE}.", dir=directory)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, directory / FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(directory: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, techniques: list
         ) -> tuple[LoopState, dict] | None:
    """Restore the model, optimiser, schedule and techniques from `directory`'s checkpoint.

    Returns the loop state and the RNG states, which the caller restores with `restore_rng`
    right before the first batch it trains on (creating the data iterator in between may draw
    random numbers); None where there is no checkpoint.
    """
    path = directory / FILE
    if not path.is_file():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=False)  # our own file, written by save()
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    for technique, technique_state in zip(techniques, payload["techniques"]):
        technique.load_state_dict(technique_state)
    return LoopState(**payload["loop"]), payload["rng"]


class EpochReplay:
    """Walks a shuffled loader one epoch per call, such that a run resumed from a checkpoint trains on
    exactly the batches (order, masks, dropout) an uninterrupted run would have.

    At an epoch's start it records the data-order generator's state and the ``state_dict`` of each
    object in `keep` (a masking collator, say) in the loop state, which the checkpoint saves.
    Resuming mid-epoch, it restores those, skips the batches consumed before the checkpoint, and
    restores the global RNG states (`pending_rng`, from :func:`load`) right before the first batch
    it yields — after the loader's iterator is made, which may draw random numbers.
    """

    def __init__(self, state: LoopState, generator: torch.Generator | None, pending_rng: dict | None = None,
                 keep: Iterable[Any] = ()):
        self.state, self.generator, self.pending_rng, self.keep = state, generator, pending_rng, list(keep)

    def __call__(self, loader: Iterable[Any]) -> Iterator[tuple[int, Any]]:
        state = self.state
        if state.position == 0:
            state.epoch_rng = self.generator.get_state() if self.generator is not None else None
            state.epoch_extra = [obj.state_dict() for obj in self.keep]
        else:
            if self.generator is not None:
                self.generator.set_state(state.epoch_rng)
            for obj, saved in zip(self.keep, state.epoch_extra):
                obj.load_state_dict(saved)
        for index, batch in enumerate(loader):
            if index < state.position:
                continue  # consumed before the checkpoint
            if self.pending_rng is not None:
                restore_rng(self.pending_rng)  # dropout and masks continue as if never stopped
                self.pending_rng = None
            yield index, batch


def restore_rng(rng: dict) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def truncate_log(path: Path, step: int) -> None:
    """Drop metrics.jsonl records written after the checkpoint at `step` (they will be redone)."""
    keep_log_records(path, lambda record: (record.get("type") == "train" and record["step"] <= step) or
                     (record.get("type") == "eval" and record.get("split") == "dev" and record["step"] < step))


def keep_log_records(path: Path, keep: Callable[[dict], bool]) -> None:
    """Rewrite a JSONL log with the records `keep` accepts, atomically; a line cut short by a kill ends it."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if keep(record):
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)
