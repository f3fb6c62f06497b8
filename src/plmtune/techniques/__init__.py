"""Built-in techniques. Importing a module registers it; add one import line per technique.

:func:`registry` is the complete table (the built-in techniques and any registered since).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..technique import Technique, registered
from . import (  # noqa: F401  (importing registers the built-in techniques)
    adapters, back_translation, child_tuning, contrastive, eda, ema, gradual_unfreeze, inject, llrd, lora, mixout, noisytune,
    prompt, rdrop, reinit,
)

if TYPE_CHECKING:
    from ..config import Recipe


def registry() -> dict[str, type[Technique]]:
    return registered()


def list_techniques() -> list[str]:
    return sorted(registry())


def build_techniques(recipe: Recipe) -> list[Technique]:
    """Fresh technique objects for one fit, in recipe order (see the lifecycle in plmtune.technique)."""
    known = registry()
    return [known[spec.name](spec.config) for spec in recipe.techniques]
