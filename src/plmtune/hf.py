"""Use plmtune's techniques from a Hugging Face ``transformers.Trainer`` script.

The documented way is one constructor, in the Trainer's own idiom::

    from plmtune.hf import TechniqueTrainer
    trainer = TechniqueTrainer(model=model, args=TrainingArguments(...), train_dataset=train, eval_dataset=dev,
                               techniques=["noisytune", {"name": "llrd", "decay": 0.9},
                                           {"name": "child_tuning", "mode": "D"}, "rdrop", "ema"])
    trainer.train()

``techniques`` lists names or ``{name: ..., <options>}`` mappings, as a plmtune recipe does. Then:

* the techniques' ``prepare_model`` (NoisyTune, re-init, Mixout, adapters, LoRA) runs when the
  trainer is built, so ``trainer.model`` is the prepared model;
* the optimiser is built when the Trainer asks for it (``create_optimizer``), as
  :func:`plmtune.engine.optim.build_optimizer` builds it: parameter groups (LLRD's, else decayed
  weights and undecayed biases and norms), AdamW, then wrappers (ChildTuning's gradient masks),
  from ``args.learning_rate``, ``args.weight_decay``, ``args.adam_beta1/adam_beta2/adam_epsilon``;
* the schedule is built when the Trainer asks for it (``create_scheduler(num_training_steps)``),
  from the Trainer's own count of optimiser steps, so the batch size, gradient accumulation and
  the number of devices cannot desynchronise it. ``lr_scheduler_type="linear"`` (the default)
  is plmtune's linear schedule with ``args.get_warmup_steps(num_training_steps)`` warm-up steps.
  It is a multiplier, so LLRD's per-group ratios hold at every step; so are transformers' other
  schedules, which are used as they are (all but "greedy", see below);
* a :class:`TechniqueCallback` is added: ``on_fit_start`` at train begin (ChildTuning-D's Fisher
  pass over the Trainer's train dataloader), ``on_step_end`` after each optimiser step (EMA),
  ``on_epoch_end`` and ``on_fit_end`` at train end;
* ``evaluate()`` during training runs between ``on_evaluate_start`` and ``on_evaluate_end``, as
  dev evaluation does in plmtune's loop: EMA's shadow weights are evaluated (and so pick the best
  checkpoint), and training goes on with the raw weights;
* the training loss passes through the ``adjust_loss`` chain (R-Drop); it is the model's own
  batch-mean loss, and the Trainer divides it by the accumulation steps;
* technique state (EMA's shadow, ChildTuning-D's mask) is saved next to every checkpoint
  (``plmtune_techniques.safetensors``) and restored by ``train(resume_from_checkpoint=...)``. With
  ``load_best_model_at_end`` the techniques go back to the best checkpoint's state, so with EMA
  the model ends as the weights evaluated at the best step (that step's shadow).

Refused with one paragraph (:class:`plmtune.errors.PlmtuneError`): ``optimizers=``,
``optimizer_cls_and_kwargs=`` or an ``args.optim`` other than torch's AdamW together with a technique
that builds the optimiser (``param_groups``: LLRD; ``wrap_optimizer``: ChildTuning);
``lr_scheduler_type="greedy"`` with parameter groups (it clamps every group to the same bounds);
``model_init=`` (it re-creates the model after ``prepare_model`` ran); techniques that change the
data (``prepare_data``: EDA, back-translation, knowledge injection, prompts) or need plmtune's
own classifier (contrastive), since the script owns its datasets and its model.

Still different from plmtune's own loop, where the Trainer decides: gradient clipping
(``args.max_grad_norm``), mixed precision, data order and logging are the Trainer's; warm-up from a
ratio rounds up (``math.ceil``, plmtune's loop rounds down); the defaults differ
(``weight_decay`` 0.0 and no warm-up in ``TrainingArguments``, 0.01 and 10% in plmtune); dev
selection is the Trainer's (``load_best_model_at_end``, ``metric_for_best_model``, no
``early_stopping_patience``), and a checkpoint's model files hold the raw weights (what training
resumes from), with the shadow beside them; a second ``train()`` on the same trainer goes on with
the same technique objects (EMA's shadow and the Fisher mask carry over), where plmtune gives
every fit fresh ones.

The lower-level pieces stay for existing scripts: :func:`prepare` (applies the techniques and
builds the optimiser and a schedule for a step count you give) and ``TechniqueTrainer(bridge=...)``,
which fills in ``optimizers=`` and the callback where they are not passed.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import send_to_device
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import (
    PREFIX_CHECKPOINT_DIR,
    SchedulerType,
    get_last_checkpoint,
)

from .engine.checkpoint import load_tree, save_tree
from .engine.optim import build_optimizer, linear_schedule
from .errors import PlmtuneError
from .loading import build_recipe
from .technique import Technique, TrainContext
from .techniques import build_techniques

logger = logging.getLogger(__name__)

STATE_FILE = "plmtune_techniques.safetensors"  # technique state, beside the Trainer's checkpoint files
OPTIMISER_HOOKS = ("param_groups", "wrap_optimizer")
ADAMW = ("adamw_torch", "adamw_torch_fused")  # what build_optimizer builds (fused where it can)
NOT_BRIDGED = {  # techniques that need plmtune's own model, beyond the generic prepare_data check
    "contrastive": "it reads the pooled sentence vector ('pooled') that plmtune's classifier returns, "
                   "which transformers' models do not return",
}


@dataclass
class Bridge:
    model: torch.nn.Module
    techniques: list[Technique]
    ctx: TrainContext
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    accelerator: Any = None  # the Trainer's, so ctx.bare_model() unwraps DDP and the Fisher sums reduce
    in_fit: bool = False  # between on_fit_start and on_fit_end: evaluate() swaps EMA's weights in


def _recipe_and_techniques(techniques: list[str | dict], train: dict) -> tuple[Any, list[Technique]]:
    recipe = build_recipe({"techniques": list(techniques), "train": train})
    return recipe, build_techniques(recipe)


def _apply(model: torch.nn.Module, recipe: Any, built: list[Technique], seed: int, tokenizer: Any = None) -> Bridge:
    ctx = TrainContext(recipe=recipe, seed=seed, tokenizer=tokenizer,
                       num_labels=getattr(getattr(model, "config", None), "num_labels", 0))
    for technique in built:
        model = technique.prepare_model(model, ctx)
    ctx.model = model
    return Bridge(model, built, ctx)


def prepare(model: torch.nn.Module, techniques: list[str | dict], lr: float, weight_decay: float,
            total_steps: int, warmup_steps: int = 0, seed: int = 42, fused: bool = True) -> Bridge:
    """Apply the techniques to a transformers model and build its optimiser and a `total_steps` schedule.

    The lower-level path; :class:`TechniqueTrainer` with ``techniques=`` does this from the
    Trainer's own step count and arguments.
    """
    recipe, built = _recipe_and_techniques(techniques, {"lr": lr, "weight_decay": weight_decay, "fused": fused})
    bridge = _apply(model, recipe, built, seed)
    optimizer = build_optimizer(bridge.model, built, bridge.ctx, recipe.train)
    scheduler = linear_schedule(optimizer, warmup_steps, total_steps)
    bridge.ctx.optimizer, bridge.ctx.total_steps = optimizer, total_steps
    bridge.optimizer, bridge.scheduler = optimizer, scheduler
    return bridge


def needs_optimizer(techniques: list[Technique]) -> list[str]:
    """The techniques that build or wrap the optimiser (LLRD's groups, ChildTuning's masks)."""
    return [t.name for t in techniques if any(h in t.overridden_hooks() for h in OPTIMISER_HOOKS)]


class TechniqueCallback(TrainerCallback):
    """Relays the Trainer's events to the techniques' hooks and keeps their state in checkpoints."""

    def __init__(self, bridge: Bridge):
        self.bridge = bridge
        self.resume_from: str | None = None  # set by TechniqueTrainer.train(resume_from_checkpoint=...)

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        bridge, ctx = self.bridge, self.bridge.ctx
        # a fresh per-fit state, as plmtune's own loop gives every fit (see plmtune.technique)
        ctx.start_fit(model=model or ctx.model, optimizer=bridge.optimizer,
                      total_steps=state.max_steps or ctx.total_steps, accelerator=bridge.accelerator,
                      train_loader=train_dataloader)
        ctx.step, ctx.epoch = state.global_step, int(state.epoch or 0)
        if state.global_step > 0:  # resuming: the techniques continue from the checkpoint's state
            folder = self.resume_from or os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            if not self.load_state(folder):
                logger.warning("resuming from %s without %s: the techniques start afresh (EMA's shadow from the "
                               "current weights, ChildTuning-D's Fisher pass again)", folder, STATE_FILE)
        for technique in bridge.techniques:
            technique.on_fit_start(ctx)
        bridge.in_fit = True

    def on_step_end(self, args, state, control, **kwargs):
        self.bridge.ctx.step = state.global_step
        for technique in self.bridge.techniques:
            technique.on_step_end(self.bridge.ctx)

    def on_epoch_end(self, args, state, control, **kwargs):
        self.bridge.ctx.epoch = int(state.epoch or 0) - 1
        for technique in self.bridge.techniques:
            technique.on_epoch_end(self.bridge.ctx)

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if args.should_save and os.path.isdir(folder):
            states = [{"name": t.name, "state": t.state_dict()} for t in self.bridge.techniques]
            save_tree(os.path.join(folder, STATE_FILE), states)  # tensors and JSON, never a pickle

    def on_train_end(self, args, state, control, **kwargs):
        ctx = self.bridge.ctx
        restored = bool(args.load_best_model_at_end and state.best_model_checkpoint)
        if restored and self.load_state(state.best_model_checkpoint):
            # The Trainer loaded the best step's raw weights; with that step's technique state, on_fit_end
            # puts in the weights that were evaluated there (EMA: that step's shadow).
            restored = False
        ctx.restored_best = restored
        for technique in self.bridge.techniques:
            technique.on_fit_end(ctx)
        self.bridge.in_fit = False

    def load_state(self, folder: str) -> bool:
        """Load the techniques' state saved beside a checkpoint; False where there is none."""
        path = os.path.join(folder, STATE_FILE)
        if not os.path.isfile(path):
            return False
        techniques = self.bridge.techniques
        device = next(iter(self.bridge.ctx.bare_model().parameters())).device
        states = send_to_device(load_tree(path), device)
        if [s["name"] for s in states] != [t.name for t in techniques]:
            raise PlmtuneError(f"{path} holds the state of the techniques {[s['name'] for s in states]}, but this "
                               f"trainer has {[t.name for t in techniques]}; resume with the same techniques.")
        for technique, saved in zip(techniques, states):
            technique.load_state_dict(saved["state"])
        return True


def _refuse_unbridged(built: list[Technique]) -> None:
    for technique in built:
        if "prepare_data" in technique.overridden_hooks():
            raise PlmtuneError(f"The technique {technique.name!r} changes the training data (prepare_data), and a "
                               "Trainer script owns its datasets, so TechniqueTrainer cannot apply it. Leave it out "
                               "here and run it with `plmtune run`, or change your dataset before the Trainer.")
        if technique.name in NOT_BRIDGED:
            raise PlmtuneError(f"The technique {technique.name!r} cannot run through TechniqueTrainer: "
                               f"{NOT_BRIDGED[technique.name]}. Leave it out here, or run it with `plmtune run`.")


def _refuse_optimiser_conflicts(built: list[Technique], args: TrainingArguments, params: dict) -> None:
    owners = needs_optimizer(built)
    if not owners:
        return
    why = (f"TechniqueTrainer builds the optimiser itself because {', '.join(owners)} change it "
           "(parameter groups, a gradient-masking wrapper)")
    if any(part is not None for part in params.get("optimizers") or (None, None)):
        raise PlmtuneError(f"{why}; optimizers=(...) would bypass them. Drop optimizers= and set the learning "
                           "rate, weight decay, warm-up and schedule through TrainingArguments, or leave "
                           f"{', '.join(owners)} out.")
    if params.get("optimizer_cls_and_kwargs") is not None:
        raise PlmtuneError(f"{why}; optimizer_cls_and_kwargs= would replace it. Drop it, or leave "
                           f"{', '.join(owners)} out.")
    if str(getattr(args.optim, "value", args.optim)) not in ADAMW:
        raise PlmtuneError(f"{why}, with torch's AdamW as plmtune's own loop does, but TrainingArguments.optim is "
                           f"{str(getattr(args.optim, 'value', args.optim))!r}. Use optim='adamw_torch' (or "
                           f"'adamw_torch_fused'), or leave {', '.join(owners)} out.")
    grouped = [t.name for t in built if "param_groups" in t.overridden_hooks()]
    if grouped and SchedulerType(args.lr_scheduler_type).value == "greedy":
        raise PlmtuneError(f"lr_scheduler_type='greedy' sets every parameter group between the same absolute "
                           f"bounds, which undoes {', '.join(grouped)}'s per-group learning rates. Use 'linear' "
                           "(plmtune's schedule, the default) or another transformers schedule, all of which "
                           "scale each group's rate and keep the ratios.")


def _bind(args: tuple, kwargs: dict) -> dict:
    """Trainer.__init__'s arguments by name, however they were passed."""
    signature = inspect.signature(Trainer.__init__)
    params = dict(signature.bind(None, *args, **kwargs).arguments)
    params.pop(next(iter(signature.parameters)))  # self
    for name, param in signature.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            params.update(params.pop(name, {}))
    return params


class TechniqueTrainer(Trainer):
    """A Trainer that applies plmtune techniques: ``TechniqueTrainer(model=..., args=..., techniques=[...], ...)``.

    See the module docstring for what each technique hook becomes and what is refused.
    ``bridge=`` (from :func:`prepare`) is the older, lower-level way; pass one or the other.
    """

    # The adjust_loss chain works on the model's batch-mean loss, so the Trainer divides by accumulation.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, techniques: list[str | dict] | None = None, bridge: Bridge | None = None,
                 **kwargs: Any):
        params = _bind(args, kwargs)
        self._plmtune_optimizer = self._plmtune_schedule = False
        self._plmtune_evaluating = False
        if bridge is not None and techniques is not None:
            raise PlmtuneError("Pass techniques=[...] or bridge= (from plmtune.hf.prepare) to TechniqueTrainer, "
                               "not both: techniques= does everything prepare() does, from the Trainer's arguments.")
        if bridge is None:
            bridge = self._bridge_from(list(techniques or []), params)
        elif tuple(params.get("optimizers") or (None, None)) == (None, None) and bridge.optimizer is not None:
            params["optimizers"] = (bridge.optimizer, bridge.scheduler)
        callbacks = list(params.get("callbacks") or [])
        found = [c for c in callbacks if isinstance(c, TechniqueCallback) and c.bridge is bridge]
        if not found:
            found = [TechniqueCallback(bridge)]
            callbacks.append(found[0])
        params["callbacks"] = callbacks
        self.bridge, self._technique_callback = bridge, found[0]
        super().__init__(**params)
        bridge.accelerator = self.accelerator

    def _bridge_from(self, techniques: list[str | dict], params: dict) -> Bridge:
        model, args = params.get("model"), params.get("args")
        if args is None:
            args = params["args"] = TrainingArguments(output_dir="tmp_trainer")
        if params.get("model_init") is not None:
            raise PlmtuneError("TechniqueTrainer does not take model_init=: it would re-create the model at every "
                               "train() (hyper-parameter search), after the techniques' prepare_model ran. Pass "
                               "model= and build one trainer per trial.")
        if model is None:
            raise PlmtuneError("TechniqueTrainer needs model= (a transformers model for the techniques to prepare).")
        train = {"lr": args.learning_rate, "weight_decay": args.weight_decay, "grad_clip": args.max_grad_norm,
                 "seed": args.seed}
        recipe, built = _recipe_and_techniques(techniques, train)
        _refuse_unbridged(built)
        _refuse_optimiser_conflicts(built, args, params)
        user_optimizer = (params.get("optimizers") or (None, None))[0] is not None or \
            params.get("optimizer_cls_and_kwargs") is not None
        self._plmtune_optimizer = not user_optimizer and str(getattr(args.optim, "value", args.optim)) in ADAMW
        self._plmtune_schedule = SchedulerType(args.lr_scheduler_type) == SchedulerType.LINEAR
        bridge = _apply(model, recipe, built, args.seed, tokenizer=params.get("processing_class"))
        params["model"] = bridge.model
        return bridge

    @property
    def techniques(self) -> list[Technique]:
        """The technique objects of this trainer, in recipe order."""
        return self.bridge.techniques

    def create_optimizer(self, model=None):
        """plmtune's optimiser (groups -> AdamW -> wrappers) from the Trainer's arguments."""
        if self.optimizer is None and self._plmtune_optimizer:
            opt_model = self.model if model is None else model
            optimizer = build_optimizer(opt_model, self.bridge.techniques, self.bridge.ctx, self.bridge.ctx.recipe.train)
            for group in optimizer.param_groups:
                group["betas"], group["eps"] = (self.args.adam_beta1, self.args.adam_beta2), self.args.adam_epsilon
            self.optimizer = optimizer
        optimizer = super().create_optimizer(model)
        self.bridge.optimizer = optimizer
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """plmtune's linear schedule over the Trainer's own number of optimiser steps."""
        if self.lr_scheduler is None and self._plmtune_schedule:
            optimizer = self.optimizer if optimizer is None else optimizer
            warmup = self.args.get_warmup_steps(num_training_steps)
            self.lr_scheduler = linear_schedule(optimizer, warmup, num_training_steps)
            self._created_lr_scheduler = True  # the Trainer rebuilds it at the next train(), as its own
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        self.bridge.scheduler = scheduler
        return scheduler

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        folder = resume_from_checkpoint
        if isinstance(folder, bool):
            folder = get_last_checkpoint(self.args.output_dir) if folder else None
        self._technique_callback.resume_from = folder
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """Evaluate; during training, between the techniques' on_evaluate_start/end (EMA's weights)."""
        swap = self.bridge.in_fit and not self._plmtune_evaluating  # once, also for a dict of eval datasets
        if swap:
            self._plmtune_evaluating = True
            for technique in self.bridge.techniques:
                technique.on_evaluate_start(self.bridge.ctx)
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            if swap:
                for technique in self.bridge.techniques:
                    technique.on_evaluate_end(self.bridge.ctx)
                self._plmtune_evaluating = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The model's own batch-mean loss (not a sum over num_items_in_batch): what adjust_loss expects.
        # A copy of the inputs, so label smoothing's pop of "labels" leaves them for the techniques.
        loss, outputs = super().compute_loss(model, dict(inputs), return_outputs=True)
        if model.training:  # evaluation reports the plain loss, as plmtune's loop does
            self.bridge.ctx.model = model
            for technique in self.bridge.techniques:
                loss = technique.adjust_loss(loss, outputs, inputs, self.bridge.ctx)
        return (loss, outputs) if return_outputs else loss
