"""The plug-in contract: a registry of techniques and the small, fixed set of hooks they use.

A technique is one module in ``plmtune/techniques/`` holding a frozen config dataclass
(validated in ``__post_init__``) and a :class:`Technique` subclass registered by name::

    @dataclass(frozen=True)
    class LLRDConfig:
        decay: float = 0.9

    @register("llrd", LLRDConfig)
    class LLRD(Technique):
        def param_groups(self, model, ctx): ...

It overrides only the hooks it needs. The training loop calls every hook of every technique
in recipe order and never asks which technique it is talking to. Hooks:

=====================  ======================================================================
prepare_data           change the train/dev/test rows before tokenisation (augmentation)
prepare_model          model surgery before the optimiser exists (noise, adapters, freezing)
param_groups           optimiser parameter groups; at most one technique per recipe
wrap_optimizer         wrap the optimiser (gradient masks); chained in recipe order
adjust_loss            change the loss after the forward pass; chained in recipe order
on_fit_start ...       events: on_fit_start, on_step_end, on_epoch_end, on_evaluate_start,
                       on_evaluate_end (around each dev evaluation and checkpoint pick), on_fit_end
state_dict             technique state saved in checkpoints (load_state_dict restores it)
=====================  ======================================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import RecipeError, suggest

if TYPE_CHECKING:
    import torch

    from .config import Recipe, TechniqueSpec

HOOKS = (
    "prepare_data",
    "prepare_model",
    "param_groups",
    "wrap_optimizer",
    "adjust_loss",
    "on_fit_start",
    "on_step_end",
    "on_epoch_end",
    "on_evaluate_start",
    "on_evaluate_end",
    "on_fit_end",
    "state_dict",
    "load_state_dict",
)

# Hooks whose results cannot be combined: two providers in one recipe are rejected.
EXCLUSIVE_HOOKS = ("param_groups",)


@dataclass
class TrainContext:
    """What hooks may see. Hooks read it and may keep their own notes in `extras`."""

    recipe: Recipe
    seed: int
    tokenizer: Any = None
    model: Any = None
    optimizer: Any = None
    accelerator: Any = None
    train_loader: Any = None
    num_labels: int = 0
    task_name: str = ""
    step: int = 0
    epoch: int = 0
    total_steps: int = 0
    extras: dict[str, Any] = field(default_factory=dict)
    # Parameter names a technique guarantees stay unchanged during the whole fit (a frozen
    # encoder): the loop's best-weights snapshot skips them, so it costs the trainable share only.
    frozen: set[str] = field(default_factory=set)

    def bare_model(self) -> Any:
        """The model without the engine's wrappers (DDP and the like), whose names are the plain ones."""
        return self.accelerator.unwrap_model(self.model) if self.accelerator is not None else self.model


class Technique:
    """Base class: every hook is a no-op, so a subclass overrides only what it uses."""

    name: str = ""
    config_class: type = type(None)
    conflicts_with: dict[str, str] = {}  # other technique -> why the two cannot be combined
    search_space: dict[str, tuple] = {}  # config field -> (low, high[, "log"]) for `plmtune tune`

    def __init__(self, config: Any):
        self.config = config

    def prepare_data(self, splits: dict[str, list[dict]], ctx: TrainContext) -> dict[str, list[dict]]:
        return splits

    def prepare_model(self, model: torch.nn.Module, ctx: TrainContext) -> torch.nn.Module:
        return model

    def param_groups(self, model: torch.nn.Module, ctx: TrainContext) -> list[dict] | None:
        return None

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module,
                       ctx: TrainContext) -> torch.optim.Optimizer:
        return optimizer

    def adjust_loss(self, loss: torch.Tensor, outputs: Any, batch: dict, ctx: TrainContext) -> torch.Tensor:
        return loss

    def on_fit_start(self, ctx: TrainContext) -> None:
        pass

    def on_step_end(self, ctx: TrainContext) -> None:
        pass

    def on_epoch_end(self, ctx: TrainContext) -> None:
        pass

    def on_evaluate_start(self, ctx: TrainContext) -> None:
        pass

    def on_evaluate_end(self, ctx: TrainContext) -> None:
        pass

    def on_fit_end(self, ctx: TrainContext) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    @classmethod
    def overridden_hooks(cls) -> tuple[str, ...]:
        """The hooks this class really implements (used to check compositions)."""
        return tuple(h for h in HOOKS if getattr(cls, h) is not getattr(Technique, h))


_REGISTRY: dict[str, type[Technique]] = {}


def register(name: str, config_class: type) -> Callable[[type[Technique]], type[Technique]]:
    """Class decorator that adds a technique to the registry under `name`."""
    if not name.isidentifier() or name != name.lower():
        raise ValueError(f"technique names are lower-case identifiers, got {name!r}")
    if not dataclasses.is_dataclass(config_class):
        raise TypeError(f"{config_class!r} must be a dataclass")

    def decorator(cls: type[Technique]) -> type[Technique]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"technique {name!r} is registered twice")
        cls.name, cls.config_class = name, config_class
        _REGISTRY[name] = cls
        return cls

    return decorator


def registry() -> dict[str, type[Technique]]:
    from . import techniques  # noqa: F401  (importing registers the built-in techniques)

    return dict(_REGISTRY)


def list_techniques() -> list[str]:
    return sorted(registry())


def resolve_technique(entry: Any, where: str) -> TechniqueSpec:
    """Turn a recipe entry such as {name: llrd, decay: 0.8} into a validated spec."""
    from .config import TechniqueSpec, build_dataclass

    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or "name" not in entry:
        raise RecipeError(f"{where} must be a mapping with a 'name' key, got {entry!r}.")
    name = entry["name"]
    known = registry()
    if name not in known:
        raise RecipeError(f"{where}: unknown technique '{name}'.{suggest(str(name), known)}")
    config = build_dataclass(known[name].config_class, entry, f"{where}({name})", skip=("name",))
    return TechniqueSpec(name=name, config=config)


def check_composition(recipe: Recipe) -> None:
    """Reject technique combinations that cannot work together, with the reason."""
    known = registry()
    names = [spec.name for spec in recipe.techniques]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RecipeError(f"Technique(s) listed twice: {', '.join(duplicates)}. List each once.")
    for hook in EXCLUSIVE_HOOKS:
        providers = [n for n in names if hook in known[n].overridden_hooks()]
        if len(providers) > 1:
            raise RecipeError(
                f"Techniques {', '.join(providers)} all build optimiser parameter groups ({hook}); "
                "a recipe may use only one of them."
            )
    for name in names:
        for other, reason in known[name].conflicts_with.items():
            if other in names:
                raise RecipeError(f"Technique '{name}' cannot be combined with '{other}': {reason}")


def build_techniques(recipe: Recipe) -> list[Technique]:
    known = registry()
    return [known[spec.name](spec.config) for spec in recipe.techniques]
