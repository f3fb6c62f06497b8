"""The training loop: read it top to bottom.

It runs on Hugging Face Accelerate, so the same code trains on a CPU, one GPU or many
processes. Techniques reach it only through hooks (see :mod:`plmtune.technique`); the loop
has no branch for any particular technique.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..errors import TrainingError
from ..metrics import classification_metrics
from ..rundir import MetricLog
from ..technique import Technique, TrainContext
from . import checkpoint
from .best import BestTracker, dev_key, state_copy
from .checkpoint import LoopState
from .optim import build_optimizer, linear_schedule

logger = logging.getLogger(__name__)


__all__ = ["FitResult", "Fitted", "MetricLog", "evaluate", "fit", "make_accelerator", "predict"]


@dataclass
class FitResult:
    """What a fit built and found: the trained model (wrapped by `accelerator`), the best dev record,
    the dev history, and the technique objects that served it. Callers never read these back from ctx."""

    best_dev: dict[str, float] | None
    best_epoch: int
    steps: int
    epochs_run: int
    stopped_early: bool
    train_seconds: float
    dev_history: list[dict[str, Any]] = field(default_factory=list)
    model: Any = None
    accelerator: Any = None
    techniques: list[Technique] = field(default_factory=list)

    def bare_model(self) -> torch.nn.Module:
        """The model without the engine's wrappers."""
        return self.accelerator.unwrap_model(self.model)


Fitted = FitResult

# Technique objects that have served a fit: each fit needs fresh ones (the lifecycle rule in
# plmtune.technique), so that no per-fit state (EMA's shadow, a gradient mask) leaks into the next.
_SERVED: weakref.WeakSet = weakref.WeakSet()


def make_accelerator(cfg: TrainConfig) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # Accelerate keeps process-wide state; a second fit in the same process (a demo, a
    # self-training round) may ask for another precision, so start from a clean state.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(mixed_precision="bf16" if cfg.bf16 else "no",
                       gradient_accumulation_steps=cfg.grad_accum, cpu=not torch.cuda.is_available())


def _loss(outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    # Per-example losses stay in `outputs` so techniques can re-weight them (pseudo-labels).
    per_example = F.cross_entropy(outputs["logits"].float(), labels, reduction="none")
    outputs["per_example_loss"] = per_example
    return per_example.mean()


@torch.inference_mode()
def predict(model: torch.nn.Module, loader: Any, accelerator: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row-ordered logits over a whole split (gathered from every process), and the labels if it has them."""
    model.eval()
    indices, logits_all, labels_all = [], [], []
    for batch in loader:
        with accelerator.autocast():
            logits = model(**batch)["logits"].float()
        parts = (batch["index"], logits) + ((batch["labels"],) if "labels" in batch else ())
        index, logits, *labels = accelerator.gather_for_metrics(parts)
        indices.append(index.cpu())
        logits_all.append(logits.cpu())
        labels_all += [t.cpu() for t in labels]
    order = torch.cat(indices).argsort()
    return torch.cat(logits_all)[order], torch.cat(labels_all)[order] if labels_all else None


def evaluate(model: torch.nn.Module, loader: Any, accelerator: Any, num_labels: int) -> dict[str, Any]:
    """Metrics and row-ordered predictions/probabilities over a whole split."""
    logits, labels = predict(model, loader, accelerator)
    metrics = classification_metrics(labels.numpy(), logits.argmax(-1).numpy(), num_labels)
    metrics["loss"] = float(F.cross_entropy(logits, labels))
    return {"metrics": metrics, "probs": logits.softmax(-1).numpy(), "labels": labels.numpy()}


def _data_generator(loader: Any) -> torch.Generator | None:
    """The generator that decides the shuffled order (replayed to resume mid-epoch)."""
    return getattr(loader, "generator", None) or getattr(getattr(loader, "sampler", None), "generator", None)


def fit(model: torch.nn.Module, techniques: list[Technique], ctx: TrainContext, train_loader: Any,
        dev_loader: Any | None, cfg: TrainConfig, log: MetricLog, progress: bool = False,
        checkpoint_dir: Path | None = None, resume: bool = False) -> FitResult:
    """Train `model` in place and leave it holding the weights of the best dev evaluation.

    `techniques` must not have served another fit (build fresh ones: plmtune.techniques.build_techniques);
    `ctx` gets fresh per-fit state. With `checkpoint_dir` and ``cfg.checkpoint_every``, a checkpoint
    is written every that many steps; with `resume`, training continues from the checkpoint
    found there (if any).
    """
    served = [type(t).__name__ for t in techniques if t in _SERVED]
    if served:
        raise RuntimeError(f"technique object(s) {', '.join(served)} already served a fit; each fit needs "
                           "freshly built techniques (see the lifecycle in plmtune.technique)")
    _SERVED.update(techniques)
    accelerator = make_accelerator(cfg)
    log.enabled = accelerator.is_main_process
    generator = _data_generator(train_loader)
    optimizer = build_optimizer(model, techniques, ctx, cfg)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if dev_loader is not None:
        dev_loader = accelerator.prepare(dev_loader)
    steps_per_epoch = max(1, math.ceil(len(train_loader) / cfg.grad_accum))
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = linear_schedule(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    ctx.start_fit(model=model, optimizer=optimizer, accelerator=accelerator, train_loader=train_loader,
                  total_steps=total_steps)
    state, pending_rng = LoopState(), None
    loaded = checkpoint.load(checkpoint_dir, accelerator.unwrap_model(model), optimizer, scheduler, techniques,
                             fingerprint=checkpoint.fingerprint(ctx.recipe, ctx.seed, cfg)) \
        if resume and checkpoint_dir is not None else None
    if loaded:
        state, pending_rng = loaded
        ctx.step, ctx.epoch = state.step, state.epoch
        logger.info("resuming at step %d (epoch %d, batch %d)", state.step, state.epoch + 1, state.position)
    if resume and log.path is not None and accelerator.is_main_process:
        # Drop what the log holds beyond the checkpoint (all of it where there is none).
        checkpoint.truncate_log(log.path, state.step)

    for technique in techniques:
        technique.on_fit_start(ctx)
    tracker = BestTracker(dev_key(cfg.select_metric), cfg.early_stopping_patience, holder=state)
    stopped_early, start = False, time.perf_counter()
    bar = tqdm(total=total_steps, initial=state.step, desc="train",
               disable=not (progress and accelerator.is_main_process))
    replay = checkpoint.EpochReplay(state, generator, pending_rng)
    while state.epoch < epochs and not stopped_early:
        epoch = ctx.epoch = state.epoch
        model.train()
        for index, batch in replay(train_loader):
            if state.step >= total_steps:
                break
            with accelerator.accumulate(model), accelerator.autocast():
                outputs = model(**batch)
                loss = _loss(outputs, batch["labels"])
                for technique in techniques:
                    loss = technique.adjust_loss(loss, outputs, batch, ctx)
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise TrainingError(
                        f"The training loss became {loss_value} at step {state.step + 1} (epoch {epoch + 1}). "
                        f"Likely causes: a learning rate too high (train.lr = {cfg.lr:g}), bf16 overflow "
                        "(try train.bf16=false), or a technique's strength (noise, loss weights) set too "
                        "high. Nothing was saved from this run.")
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients and cfg.grad_clip > 0:
                    grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state.position = index + 1
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state.step += 1
            ctx.step = state.step
            log.write({"type": "train", "step": state.step, "epoch": epoch + 1, "loss": loss_value,
                       "lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm})
            for technique in techniques:
                technique.on_step_end(ctx)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            if checkpoint_dir is not None and cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 \
                    and accelerator.is_main_process:
                checkpoint.save(checkpoint_dir, accelerator.unwrap_model(model), optimizer, scheduler,
                                techniques, state, fingerprint=checkpoint.fingerprint(ctx.recipe, ctx.seed, cfg))
            if state.step >= total_steps:
                break
        for technique in techniques:
            technique.on_epoch_end(ctx)
        last = state.step >= total_steps or epoch == epochs - 1
        if dev_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or last):
            stopped_early = _evaluate_and_select(model, dev_loader, accelerator, techniques, ctx, cfg, log, state,
                                                 tracker)
        state.epoch, state.position = epoch + 1, 0
    bar.close()
    train_seconds = time.perf_counter() - start
    if state.best_state is not None:
        accelerator.unwrap_model(model).load_state_dict(state.best_state, strict=not ctx.frozen)
    ctx.restored_best = state.best_state is not None
    for technique in techniques:
        technique.on_fit_end(ctx)
    return FitResult(state.best, state.best_epoch, state.step, state.epoch, stopped_early, train_seconds,
                     state.history, model=model, accelerator=accelerator, techniques=list(techniques))


def _evaluate_and_select(model: torch.nn.Module, dev_loader: Any, accelerator: Any, techniques: list[Technique],
                         ctx: TrainContext, cfg: TrainConfig, log: MetricLog, state: LoopState,
                         tracker: BestTracker) -> bool:
    """Evaluate on dev, keep the best weights; return True where early stopping says stop."""
    for technique in techniques:
        technique.on_evaluate_start(ctx)
    dev = evaluate(model, dev_loader, accelerator, ctx.num_labels)["metrics"]
    state.history.append({"epoch": ctx.epoch + 1, "step": state.step, **dev})
    log.write({"type": "eval", "split": "dev", "step": state.step, "epoch": ctx.epoch + 1, **dev})
    logger.info("epoch %d step %d dev %s=%.4f loss=%.4f", ctx.epoch + 1, state.step, cfg.select_metric,
                dev[cfg.select_metric], dev["loss"])
    # The copy is taken before on_evaluate_end, so weights swapped in for evaluation (EMA) are the
    # ones kept. Tensors a technique keeps frozen for the whole fit (ctx.frozen) need no copy.
    improved = tracker.offer(dev, lambda: state_copy(accelerator.unwrap_model(model), ctx.frozen))
    if improved:
        state.best_epoch = ctx.epoch + 1
    for technique in techniques:
        technique.on_evaluate_end(ctx)
    return not improved and tracker.exhausted
