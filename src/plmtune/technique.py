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
export_model           the trained model as it is saved (LoRA merges its low-rank updates)
=====================  ======================================================================

**Lifecycle.** A run has one :class:`TrainContext`: the recipe, the seed, the tokenizer, the
labels, ``frozen`` and ``extras`` (valid from the start of the run). Each fit gets a fresh
:class:`FitState` (step, epoch, total_steps, model, optimizer, accelerator, train_loader,
restored_best), made by :func:`plmtune.engine.loop.fit`: at ``on_fit_start`` ``ctx.step`` and
``ctx.epoch`` are 0 (or the checkpoint's values when a fit resumes). The rule for techniques:
``prepare_data`` and ``prepare_model`` run once per model (the assembler,
:mod:`plmtune.assemble`); every fit gets *freshly built* technique objects, so state a
technique keeps between ``on_fit_start`` and ``on_fit_end`` (EMA's shadow, ChildTuning-D's
mask) never leaks from one fit into the next. A technique object serves one fit; the loop
refuses one that already served another.

**The adjust_loss chain.** On entry to the first technique, ``loss`` is the batch mean of the
per-example cross-entropy, and ``outputs["per_example_loss"]`` holds those per-example values.
Each technique receives the previous one's result and returns the loss to use; it may add a
term to it (R-Drop), rescale it, or replace it (a stage's loss, which the stages append last).
Techniques run in recipe order, stage losses after the recipe's techniques; a technique that
needs plain cross-entropy reads ``outputs["per_example_loss"]``, not ``loss``.

**Declarations.** ``batch_fields`` names the per-row fields a technique adds in
``prepare_data`` that must reach the batch (``{"features": "float32"}``): the data core carries
exactly the declared fields and names none itself. ``requires`` names the modules a technique
imports lazily (``("peft",)``); ``plmtune validate`` checks they are importable. ``inference``
says that the technique's ``prepare_model`` builds structure the trained model needs to predict
(adapters, the prompt's MLM head) and its ``prepare_data`` changes every split, not only train
(the prompt's template): a saved model is rebuilt through them and new text goes through them
(:mod:`plmtune.saved`); a technique that only changes training (EDA, noise, LLRD) leaves it False.
``check_backbone(encoder)`` refuses an architecture the technique cannot work on (layer
paths, module names), before any weights load. ``report()``
returns diagnostics for result.json, where they appear under ``techniques.<name>`` (so do the
``ctx.extras`` entries a technique writes while the model and data are prepared).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .config import Recipe

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
    "export_model",
)

# Hooks whose results cannot be combined: two providers in one recipe are rejected.
EXCLUSIVE_HOOKS = ("param_groups",)


class FitState:
    """Per-fit state: made fresh by every fit, so no fit sees another's step, epoch or objects."""

    def __init__(self, step: int = 0, epoch: int = 0, total_steps: int = 0, model: Any = None,
                 optimizer: Any = None, accelerator: Any = None, train_loader: Any = None):
        self.step, self.epoch, self.total_steps = step, epoch, total_steps
        self.model, self.optimizer, self.accelerator, self.train_loader = model, optimizer, accelerator, train_loader
        self.restored_best = False  # the fit ended by loading its best dev evaluation's weights


def _per_fit(name: str) -> property:
    def get(ctx: TrainContext) -> Any:
        return getattr(ctx.fit_state, name)

    def put(ctx: TrainContext, value: Any) -> None:
        setattr(ctx.fit_state, name, value)

    return property(get, put, doc=f"The current fit's {name} (see FitState).")


class TrainContext:
    """What hooks may see: the run's context and, through the same attributes, the current fit's state.

    Per run: ``recipe``, ``seed``, ``tokenizer``, ``num_labels``, ``task_name``, ``frozen`` (parameter
    names a technique guarantees stay unchanged during every fit: the loop's best-weights snapshot
    skips them) and ``extras`` (a technique's notes while the model and data are prepared). Per
    fit (``fit_state``, replaced by :meth:`start_fit`): ``step``, ``epoch``, ``total_steps``,
    ``model``, ``optimizer``, ``accelerator``, ``train_loader``, ``restored_best``.
    """

    step = _per_fit("step")
    epoch = _per_fit("epoch")
    total_steps = _per_fit("total_steps")
    model = _per_fit("model")
    optimizer = _per_fit("optimizer")
    accelerator = _per_fit("accelerator")
    train_loader = _per_fit("train_loader")
    restored_best = _per_fit("restored_best")

    def __init__(self, recipe: Recipe, seed: int, tokenizer: Any = None, num_labels: int = 0, task_name: str = "",
                 extras: dict[str, Any] | None = None, frozen: set[str] | None = None, **fit: Any):
        self.recipe, self.seed, self.tokenizer = recipe, seed, tokenizer
        self.num_labels, self.task_name = num_labels, task_name
        self.extras: dict[str, Any] = {} if extras is None else extras
        self.frozen: set[str] = set() if frozen is None else frozen
        self.fit_state = FitState(**fit)  # before any fit: what a caller such as the HF bridge sets

    def start_fit(self, **fit: Any) -> FitState:
        """Begin a fit with fresh per-fit state (step 0, epoch 0) and return it."""
        self.fit_state = FitState(**fit)
        return self.fit_state

    def bare_model(self) -> Any:
        """The model without the engine's wrappers (DDP and the like), whose names are the plain ones."""
        return self.accelerator.unwrap_model(self.model) if self.accelerator is not None else self.model


class Technique:
    """Base class: every hook is a no-op, so a subclass overrides only what it uses."""

    name: str = ""
    config_class: type = type(None)
    conflicts_with: dict[str, str] = {}  # other technique -> why the two cannot be combined
    search_space: dict[str, tuple] = {}  # config field -> (low, high[, "log"]) for `plmtune tune`
    batch_fields: dict[str, str] = {}  # per-row field -> torch dtype name, carried into the batch
    requires: tuple[str, ...] = ()  # modules imported lazily; `plmtune validate` checks them
    inference: bool = False  # its prepare_model/prepare_data are part of the saved model (see above)
    files: tuple[str, ...] = ()  # config fields that name files it reads (a saved model must not depend on them)

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

    def export_model(self, model: torch.nn.Module, ctx: TrainContext) -> torch.nn.Module:
        """The trained `model` as it is saved (called on a copy; LoRA merges its updates into the weights)."""
        return model

    def report(self) -> dict[str, Any]:
        """Diagnostics for result.json (under ``techniques.<name>``); not a hook: read once, after the run."""
        return {}

    def check_backbone(self, encoder: torch.nn.Module) -> None:
        """Raise RecipeError where this technique cannot work on the backbone's architecture. Not a hook:
        ``plmtune validate`` and ``run`` call it before any weights load, on a weightless skeleton of the
        backbone built from its config.json (a bare encoder, as ``AutoModel`` builds it)."""

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


def registered() -> dict[str, type[Technique]]:
    """The techniques registered so far; :func:`plmtune.techniques.registry` also loads the built-in ones."""
    return dict(_REGISTRY)
