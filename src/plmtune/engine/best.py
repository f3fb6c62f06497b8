"""The best-result rule, kept once: the loop's checkpoint pick, self-training's iteration pick
and further pre-training's stop rule all use :class:`BestTracker`.

A tracker compares records by a key (higher is better; a key of None is never the best, e.g.
a NaN loss), counts evaluations without improvement for patience, and keeps a copy of the
state that produced the best record. It stores all of that on a `holder` (the loop's
checkpointed ``LoopState``, or its own), so a resumed run continues with the same best.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container
from typing import Any

import torch


def dev_key(metric: str) -> Callable[[dict[str, float]], tuple[float, float]]:
    """Dev metric first; small few-shot dev sets tie often, and the lower dev loss breaks the tie."""
    return lambda record: (record[metric], -record["loss"])


def lower(name: str) -> Callable[[dict[str, float]], float | None]:
    """Lower `record[name]` is better; NaN is never the best."""
    return lambda record: None if math.isnan(record[name]) else -record[name]


def state_copy(model: torch.nn.Module, skip: Container[str] = ()) -> dict[str, torch.Tensor]:
    """A copy of the model's tensors, less those named in `skip` (kept frozen, so never changed).

    Kept in memory: a copy of a 22M-parameter model is ~90 MB and takes milliseconds.
    """
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k not in skip}


class _Holder:
    best: Any = None
    best_state: Any = None
    stale: int = 0


class BestTracker:
    """Keeps the best record by `key`, a copy of its state, and the evaluations since it."""

    def __init__(self, key: Callable[[Any], Any], patience: int = 0, holder: Any = None):
        self.key, self.patience = key, patience
        self.holder = holder if holder is not None else _Holder()

    @property
    def best(self) -> Any:
        return self.holder.best

    @property
    def best_state(self) -> Any:
        return self.holder.best_state

    def better(self, record: Any) -> bool:
        candidate = self.key(record)
        if candidate is None:
            return False
        return self.holder.best is None or candidate > self.key(self.holder.best)

    def offer(self, record: Any, snapshot: Callable[[], Any] | None = None, force: bool = False) -> bool:
        """Consider `record`; where it is the best so far (or `force`), keep it and `snapshot()`."""
        if force or self.better(record):
            self.holder.best, self.holder.stale = record, 0
            if snapshot is not None:
                self.holder.best_state = snapshot()
            return True
        self.holder.stale += 1
        return False

    @property
    def exhausted(self) -> bool:
        """Patience spent: `patience` evaluations in a row without improvement (never with patience 0)."""
        return bool(self.patience and self.holder.stale >= self.patience)
