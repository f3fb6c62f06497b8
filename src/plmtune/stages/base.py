"""The stage contract and the stage registry.

A stage is one way of producing a run from a recipe: plain fine-tuning, self-training,
self-distillation, or further pre-training before one of them. It is a module in
``plmtune/stages/`` holding its config dataclass and a :class:`Stage` subclass registered by
name, which is also the recipe key of its section (``self_training:``)::

    @register_stage("self_training", SelfTrainingConfig)
    class SelfTraining(Stage):
        def run(self, spec, config): ...

Two kinds:

* ``train`` stages produce the run's record (a :class:`plmtune.record.RunRecord`); a recipe runs
  exactly one: the one whose section it has, else ``finetune`` (no section).
* ``pre`` stages run before it and hand it a new backbone (:class:`PreResult`), e.g. ``pretrain``.

A stage does its idea only: what it trains on and which loss it adds. The run folder is
prepared, and result.json written once, by :func:`plmtune.run.run_recipe`; the model and data
come from :func:`plmtune.assemble.prepare`; fits go through :meth:`plmtune.assemble.Prepared.fit`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Recipe
from ..record import RunRecord


@dataclass(frozen=True)
class RunSpec:
    """What a stage runs: the recipe on a task folder into a run folder, with a seed."""

    recipe: Recipe
    task_dir: Path
    out: Path
    seed: int
    progress: bool = False
    resume: bool = False
    save_model: bool = False
    # What a stage may use from the layers above it, which it cannot import (they import the stages):
    # recipes by name, nested runs, saved models. plmtune.run.run_recipe passes plmtune.run.StageServices.
    services: Any = None


@dataclass
class PreResult:
    """What a ``pre`` stage hands on: the backbone the training stage starts from, and a summary for result.json."""

    backbone: str
    summary: dict[str, Any]


class Stage:
    """Base class of stages (see the module docstring)."""

    name: str = ""
    config_class: type | None = None
    kind: str = "train"  # "train" (produces the record) or "pre" (prepares the backbone first)
    saves_model: bool = False  # supports `plmtune run --save-model`
    tunable: bool = True  # `plmtune tune` may run it once per trial
    state_dirs: tuple[str, ...] = ()  # folders of the run folder it owns (a fresh run removes them)
    summary: str = ""  # one line for `plmtune list stages`

    def run(self, spec: RunSpec, config: Any) -> RunRecord | PreResult:
        raise NotImplementedError

    def cleanup(self, spec: RunSpec) -> None:
        """Called on the main process once result.json is written (remove what a resume would have needed)."""


_STAGES: dict[str, type[Stage]] = {}


def register_stage(name: str, config_class: type | None = None) -> Callable[[type[Stage]], type[Stage]]:
    """Class decorator that adds a stage under `name` (its recipe section's key)."""
    if not name.isidentifier() or name != name.lower():
        raise ValueError(f"stage names are lower-case identifiers, got {name!r}")
    if config_class is not None and not dataclasses.is_dataclass(config_class):
        raise TypeError(f"{config_class!r} must be a dataclass")

    def decorator(cls: type[Stage]) -> type[Stage]:
        if cls.kind not in ("train", "pre"):
            raise ValueError(f"stage {name!r}: kind must be 'train' or 'pre', got {cls.kind!r}")
        if name in _STAGES and _STAGES[name] is not cls:
            raise ValueError(f"stage {name!r} is registered twice")
        cls.name, cls.config_class = name, config_class
        _STAGES[name] = cls
        return cls

    return decorator


def registered_stages() -> dict[str, type[Stage]]:
    """The stages registered so far; :func:`plmtune.stages.registry` also loads the built-in ones."""
    return dict(_STAGES)
