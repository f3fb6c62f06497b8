"""Use plmtune's techniques from a Hugging Face ``transformers.Trainer`` script.

Three pieces, composed rather than inherited (only the loss needs a subclass):

* :func:`prepare` applies the techniques' ``prepare_model`` (NoisyTune, re-init, Mixout, LoRA)
  and builds the optimiser exactly as plmtune's own loop does (parameter groups such as LLRD,
  then wrappers such as ChildTuning) with a multiplicative linear schedule, for
  ``Trainer(optimizers=(optimizer, scheduler))``;
* :class:`TechniqueCallback` fires the step events (``on_fit_start`` = ChildTuning-D's Fisher
  pass, ``on_step_end`` = EMA updates, ...) from the Trainer's callbacks;
* :class:`TechniqueTrainer` chains ``adjust_loss`` (R-Drop) after the model's own loss.

Example::

    from plmtune.hf import TechniqueCallback, TechniqueTrainer, prepare
    bridge = prepare(model, ["noisytune", {"name": "llrd", "decay": 0.9}, {"name": "child_tuning", "mode": "D"}],
                     lr=5e-5, weight_decay=0.01, total_steps=200, warmup_steps=20, seed=13)
    trainer = TechniqueTrainer(model=bridge.model, args=args, train_dataset=train, bridge=bridge,
                               optimizers=(bridge.optimizer, bridge.scheduler),
                               callbacks=[TechniqueCallback(bridge)])

Differences from plmtune's loop, where the Trainer decides: evaluation runs on the raw weights
(the Trainer has no event before evaluation, so EMA's shadow is swapped in only at the end of
training); gradient clipping uses ``args.max_grad_norm``; techniques that change the data
(``prepare_data``: knowledge injection) are not applied, since the script owns its datasets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from .config import Recipe, TrainConfig
from .engine.optim import build_optimizer, linear_schedule
from .loading import build_recipe
from .technique import Technique, TrainContext
from .techniques import build_techniques


@dataclass
class Bridge:
    model: torch.nn.Module
    techniques: list[Technique]
    ctx: TrainContext
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def prepare(model: torch.nn.Module, techniques: list[str | dict], lr: float, weight_decay: float,
            total_steps: int, warmup_steps: int = 0, seed: int = 42, fused: bool = True) -> Bridge:
    """Apply the techniques to a transformers model and build its optimiser and schedule."""
    recipe: Recipe = build_recipe({"techniques": list(techniques),
                                   "train": {"lr": lr, "weight_decay": weight_decay, "fused": fused}})
    built = build_techniques(recipe)
    ctx = TrainContext(recipe=recipe, seed=seed, num_labels=getattr(model.config, "num_labels", 0))
    for technique in built:
        model = technique.prepare_model(model, ctx)
    cfg: TrainConfig = recipe.train
    optimizer = build_optimizer(model, built, ctx, cfg)
    scheduler = linear_schedule(optimizer, warmup_steps, total_steps)
    ctx.model, ctx.optimizer, ctx.total_steps = model, optimizer, total_steps
    return Bridge(model, built, ctx, optimizer, scheduler)


class TechniqueCallback(TrainerCallback):
    """Relays the Trainer's events to the techniques' hooks."""

    def __init__(self, bridge: Bridge):
        self.bridge = bridge

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):  # noqa: ANN001
        ctx = self.bridge.ctx
        # a fresh per-fit state, as plmtune's own loop gives every fit (see plmtune.technique)
        ctx.start_fit(model=model or ctx.model, optimizer=ctx.optimizer, total_steps=ctx.total_steps,
                      train_loader=train_dataloader)
        for technique in self.bridge.techniques:
            technique.on_fit_start(ctx)

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self.bridge.ctx.step = state.global_step
        for technique in self.bridge.techniques:
            technique.on_step_end(self.bridge.ctx)

    def on_epoch_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self.bridge.ctx.epoch = int(state.epoch or 0) - 1
        for technique in self.bridge.techniques:
            technique.on_epoch_end(self.bridge.ctx)

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        for technique in self.bridge.techniques:
            technique.on_fit_end(self.bridge.ctx)


class TechniqueTrainer(Trainer):
    """A Trainer whose loss passes through the techniques' ``adjust_loss`` chain."""

    def __init__(self, *args: Any, bridge: Bridge, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.bridge = bridge

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):  # noqa: ANN001
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
        self.bridge.ctx.model = model
        for technique in self.bridge.techniques:
            loss = technique.adjust_loss(loss, outputs, inputs, self.bridge.ctx)
        return (loss, outputs) if return_outputs else loss
