"""Stages: fine-tuning, self-training, self-distillation, distillation and further pre-training, one module each.

Importing a module registers its stage; add one import line per stage. :func:`plan` says what a
recipe runs: its ``pre`` stages in order, then exactly one training stage.
"""

from __future__ import annotations

from typing import Any

from ..config import Recipe
from .base import PreResult, RunSpec, Stage, register_stage, registered_stages
from . import distillation, embedding_head, finetune, pretrain  # noqa: F401,E402  (registers them)
from . import self_distillation, self_training  # noqa: F401,E402

__all__ = ["PreResult", "RunSpec", "Stage", "plan", "register_stage", "registry"]


def registry() -> dict[str, type[Stage]]:
    return registered_stages()


def plan(recipe: Recipe) -> tuple[list[tuple[Stage, Any]], tuple[Stage, Any]]:
    """([(pre stage, its config), ...], (the training stage, its config)) for `recipe`."""
    known = registry()
    pre = [(known[s.name](), s.config) for s in recipe.stages if known[s.name].kind == "pre"]
    train = [(known[s.name](), s.config) for s in recipe.stages if known[s.name].kind == "train"]
    return pre, (train[0] if train else (known["finetune"](), None))
