"""Self-training (LiST, Wang et al. 2022): teacher -> pseudo-labels -> re-weighted student, repeated.

A recipe with a ``self_training:`` section:

1. the teacher (the recipe's model: prompt + adapters in LiST) trains on the K labelled rows;
2. it labels the unlabelled pool (``unlabeled.jsonl``, a seeded sample of ``unlabeled_cap``):
   hard labels and soft probabilities;
3. the student — the same model object with its trainable tensors reset to their initial
   values (fresh adapters and head on the *same* frozen encoder; no model copy) — trains on
   the pseudo-labelled rows: the first ``kd_warmup`` share of its steps on the teacher's soft
   labels with equal weights, then on hard pseudo-labels weighted by meta re-weighting
   (:mod:`plmtune.reweight`) against a labelled batch; optionally it then fine-tunes on the
   labelled rows (``finish_on_labelled``);
4. the student becomes the teacher; repeat ``iterations`` times. The last student is the result
   (``select: last``, as in the paper), or the iteration with the best few-shot dev score
   (``select: best_dev``); every iteration's dev and test metrics are in ``result.json``.

Every fit (teacher, student, labelled finish) gets fresh technique objects and starts at step 0,
so the student's first batch takes the warm-up path. After each iteration the teacher's
trainable state is written atomically to ``self_training/state.safetensors`` (tensors and JSON,
never a pickle); ``--resume`` continues at the next iteration.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from ..assemble import Prepared, prepare
from ..config import BATCH_SIZE, MAX_STEPS, Recipe
from ..data import load_task, read_rows
from ..engine.best import BestTracker, dev_key, state_copy
from ..engine.checkpoint import keep_log_records, load_tree, save_tree
from ..errors import DataError
from ..per_example import PerExampleGradients, unsupported_parameters
from ..record import RunRecord
from ..reweight import meta_weights_from_graph, reweighted_loss, soft_target_loss
from ..rundir import MetricLog, is_main_process
from ..technique import Technique, TrainContext
from ..validate import bounded, check_declared, one_of
from .base import RunSpec, Stage, register_stage

STATE_FILE = "state.safetensors"


@dataclass(frozen=True)
class SelfTrainingConfig:
    """LiST's self-training stage (plmtune.stages.self_training): teacher -> pseudo-labels -> student.

    Args:
    iterations: teacher -> student rounds (the LiST paper uses 5; the `list_cpu` recipe 2).
    unlabeled_cap: at most this many rows of ``unlabeled.jsonl`` (a seeded sample) are labelled.
    student_steps: optimiser steps a student trains on pseudo-labelled data.
    batch_size / labelled_batch_size: pseudo-labelled batch; labelled batch of the meta step.
    kd_warmup: share of the student's steps spent on the teacher's soft labels with equal
        weights (knowledge-distillation warm-up) before re-weighting starts.
    reweight: meta re-weighting of pseudo-labels (off: equal weights on hard pseudo-labels).
    virtual_lr: step size of the virtual SGD step (cancels in the normalisation; see reweight.py).
    finish_on_labelled: after the pseudo-labelled session, the student also fine-tunes on the
        labelled split (with dev selection) before it becomes the next teacher.
    select: which iteration's model is the result: 'last' (the final student, as in the paper)
        or 'best_dev' (the best on the few-shot dev split; 2K examples make that choice noisy).
    """

    iterations: int = bounded(5, 1, 1000)
    unlabeled_cap: int = bounded(2048, 1, 100_000_000)
    student_steps: int = MAX_STEPS(300, lo=1)
    batch_size: int = BATCH_SIZE(16)
    labelled_batch_size: int = BATCH_SIZE(8)
    kd_warmup: float = bounded(0.3, 0.0, 1.0)
    reweight: bool = True
    virtual_lr: float = bounded(1e-3, 0.0, None, lo_open=True)
    finish_on_labelled: bool = True
    select: str = one_of("last", ("last", "best_dev"))

    def __post_init__(self) -> None:
        check_declared(self, "self_training")


class PseudoLabelLoss(Technique):
    """The student's loss on pseudo-labelled batches: KD warm-up, then re-weighted hard labels."""

    name = "pseudo_label_loss"
    batch_fields = {"soft_labels": "float32"}

    def __init__(self, config: Any, warmup_steps: int, labelled_loader: Any, one_backward: bool | None = None):
        super().__init__(config)
        self.warmup_steps, self.labelled_loader, self._batches = warmup_steps, labelled_loader, None
        # None: the one-backward re-weighting wherever the model allows it; False: always the
        # reverse-over-reverse route (benchmarks compare the two)
        self.one_backward = one_backward
        self._attention: str | None = None
        self._capture: PerExampleGradients | None = None
        self._verified = False
        self.zero_weight_share: list[float] = []  # per re-weighted batch: share of examples given no weight

    def _labelled_batch(self, device: torch.device) -> dict[str, torch.Tensor]:
        try:
            batch = next(self._batches)
        except (TypeError, StopIteration):
            self._batches = iter(self.labelled_loader)
            batch = next(self._batches)
        return {k: v.to(device) for k, v in batch.items()}

    def on_fit_start(self, ctx: TrainContext) -> None:
        if not self.config.reweight:
            return
        model = ctx.bare_model()
        if self.one_backward is not False and not unsupported_parameters(model):  # one backward per step
            self._capture, self._verified = PerExampleGradients(model), False
        else:
            # Reverse-over-reverse on the step's graph instead; fused SDPA kernels have no double
            # backward, so the encoder runs eager attention while this student trains.
            self._attention = _set_attention(model, "eager")

    def on_fit_end(self, ctx: TrainContext) -> None:
        if self._capture is not None:
            self._capture.remove()  # the encoder is shared with the next student: leave no hooks
            self._capture = None
        if self._attention:
            _set_attention(ctx.bare_model(), self._attention)
            self._attention = None

    def adjust_loss(self, loss: torch.Tensor, outputs: Any, batch: dict, ctx: TrainContext) -> torch.Tensor:
        if ctx.step < self.warmup_steps:  # consistency with the teacher, every example weighted equally
            if self._capture is not None:
                self._capture.clear()  # it recorded this step's forward, which re-weights nothing
            return soft_target_loss(outputs["logits"], batch["soft_labels"]).mean()
        if not self.config.reweight:
            return loss
        model, per_example = ctx.bare_model(), outputs["per_example_loss"]
        labelled = self._labelled_batch(batch["labels"].device)
        if self._capture is None:
            weights = meta_weights_from_graph(model, per_example, labelled, self.config.virtual_lr)
            loss = (weights * per_example).sum()
        else:
            if not self._verified:  # once per student: the model's layers really allow the shortcut
                self._capture.verify(model, per_example)
                self._verified = True
            loss, weights = reweighted_loss(self._capture, model, per_example, labelled, self.config.virtual_lr)
        self.zero_weight_share.append(float((weights == 0).float().mean()))
        return loss


def _set_attention(model: torch.nn.Module, implementation: str) -> str:
    """Switch the encoder's attention implementation; return the previous one."""
    config = model.encoder.config
    previous = getattr(config, "_attn_implementation", None) or "sdpa"
    model.encoder.set_attn_implementation(implementation)
    return previous


def read_unlabelled(task_dir: Path, recipe: Recipe, cap: int, seed: int, is_pair: bool) -> list[dict]:
    path = task_dir / "unlabeled.jsonl"
    if not path.is_file():
        raise DataError(task_dir, "no unlabeled.jsonl: self-training needs a pool of unlabelled text "
                                  "('plmtune data fewshot' writes one beside the splits).")
    if path.stat().st_size == 0 or not path.read_text(encoding="utf-8").strip():
        raise DataError(path, "the unlabelled pool is empty; self-training needs unlabelled text to "
                              "pseudo-label (add rows or remove the self_training section).")
    rows, _ = read_rows(path, recipe.data, labelled=False, is_pair=is_pair)
    if len(rows) > cap:
        rows = random.Random(seed).sample(rows, cap)
    return rows


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() * v.element_size() for v in state.values())


def model_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


@register_stage("self_training", SelfTrainingConfig)
class SelfTraining(Stage):
    saves_model = True
    state_dirs = ("self_training",)
    summary = "LiST: teacher -> pseudo-labelled unlabelled pool -> re-weighted student, repeated"

    def run(self, spec: RunSpec, cfg: SelfTrainingConfig) -> RunRecord:
        recipe, seed, out, task_dir = spec.recipe, spec.seed, spec.out, spec.task_dir
        task = load_task(task_dir, recipe.data, need=("train",))
        pool = read_unlabelled(task_dir, recipe, cfg.unlabeled_cap, seed, task.is_pair)
        main_process, state_file = is_main_process(), out / "self_training" / STATE_FILE
        prepared = prepare(recipe, task, seed, {**task.splits, "unlabeled": pool},
                           extra_fields=PseudoLabelLoss.batch_fields)
        model, frozen = prepared.model, prepared.ctx.frozen
        initial = state_copy(model, frozen)  # what every fresh student starts from
        # One loader for every labelled fit: its shuffling continues from fit to fit.
        labelled = prepared.train_loader()
        saved = load_tree(state_file) if spec.resume and state_file.is_file() else None
        log = MetricLog(out / "metrics.jsonl" if main_process else None, recipe, seed)
        if saved and main_process:
            # keep the metrics of finished iterations only (an interrupted one is run again)
            keep_log_records(out / "metrics.jsonl", lambda record: record.get("iteration", 0) <= saved["iteration"])
        history: list[dict] = saved["history"] if saved else []
        by_dev = dev_key(recipe.train.select_metric)
        best = BestTracker(lambda r: by_dev(r["dev"]))  # the iteration whose teacher was best on dev
        if saved:
            best.holder.best, best.holder.best_state = saved["best"], saved["best_state"]
        start = time.perf_counter() - (saved["seconds"] if saved else 0.0)
        fits = []
        try:
            if saved is None:
                log.tags = {"stage": "teacher", "iteration": 0}
                fitted = prepared.fit(log, labelled, progress=spec.progress)
                fits.append(fitted)
                self._finish_iteration(0, fitted, prepared, history, best, {})
                self._save(state_file, 0, fitted, frozen, history, best, start, main_process)
            else:  # resumed: the saved teacher labels the pool next
                model.load_state_dict(saved["teacher"], strict=False)
                fitted = prepared.unfitted()
            for iteration in range((saved["iteration"] if saved else 0) + 1, cfg.iterations + 1):
                set_seed(seed + iteration)
                probs = self.predict_probs(prepared, fitted)
                pseudo = [{**row, "label": int(p.argmax()), "soft_labels": p.tolist()}
                          for row, p in zip(prepared.splits["unlabeled"], probs)]
                model.load_state_dict(initial, strict=False)  # a fresh student on the same frozen encoder
                student_cfg = dataclasses.replace(recipe.train, max_steps=cfg.student_steps,
                                                  batch_size=cfg.batch_size, early_stopping_patience=0)
                loss = PseudoLabelLoss(cfg, int(cfg.kd_warmup * cfg.student_steps),
                                       prepared.train_loader("train", cfg.labelled_batch_size, seed + iteration))
                log.tags = {"stage": "student", "iteration": iteration}
                fitted = prepared.fit(log, prepared.train_loader(prepared.encode(pseudo), cfg.batch_size,
                                                                 seed + iteration),
                                      extra=[loss], cfg=student_cfg, progress=spec.progress)
                fits.append(fitted)
                if cfg.finish_on_labelled:
                    log.tags = {"stage": "student_labelled", "iteration": iteration}
                    fitted = prepared.fit(log, labelled, progress=spec.progress)
                    fits.append(fitted)
                shares = loss.zero_weight_share
                notes = {"pseudo_label_distribution": torch.bincount(probs.argmax(-1),
                                                                     minlength=prepared.ctx.num_labels).tolist(),
                         "zero_weight_share": sum(shares) / len(shares) if shares else None}
                self._finish_iteration(iteration, fitted, prepared, history, best, notes)
                self._save(state_file, iteration, fitted, frozen, history, best, start, main_process)
        finally:
            log.close()

        if cfg.select == "best_dev":
            model.load_state_dict(best.best_state, strict=False)
            chosen = best.best
        else:  # the model in hand is the last iteration's
            chosen = {k: history[-1][k] for k in ("iteration", "dev", "test")}
        # Copies held besides the one model: the fresh-student state, the best iteration's state and
        # the loop's best-weights snapshot (all the trainable share only; the encoder is never copied).
        held = state_bytes(initial) + 2 * state_bytes(best.best_state)
        memory = {"model_bytes": model_bytes(model), "state_copies_bytes": held,
                  "ratio_to_one_model": round((model_bytes(model) + held) / model_bytes(model), 4)}
        if torch.cuda.is_available():
            memory["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
        details = {"train_seconds": round(time.perf_counter() - start, 3),
                   "techniques": prepared.technique_reports(*fits),
                   "self_training": {"iterations": history, "selected_iteration": chosen["iteration"],
                                     "memory": memory, "unlabeled_used": len(pool)}}
        if spec.save_model and main_process:  # the selected iteration's model, as tested
            details["model"] = prepared.save(model, out / "model")
        return RunRecord.for_task(task, task_dir, seed=seed, recipe=recipe.to_dict(), test=chosen["test"],
                                  dev=chosen["dev"], parameters=prepared.parameters(), sizes=prepared.sizes(),
                                  details=details)

    @staticmethod
    def predict_probs(prepared: Prepared, fitted: Any) -> torch.Tensor:
        """The teacher's class probabilities on the unlabelled pool."""
        return prepared.probs(fitted, prepared.encoded["unlabeled"])

    @staticmethod
    def _finish_iteration(iteration: int, fitted: Any, prepared: Prepared, history: list[dict], best: BestTracker,
                          notes: dict) -> None:
        dev, test = fitted.best_dev, prepared.metrics(fitted, "test")
        history.append({"iteration": iteration, "dev": dev, "test": test, **notes})
        # without a dev split every iteration replaces the last
        best.offer({"iteration": iteration, "dev": dev, "test": test},
                   lambda: state_copy(fitted.bare_model(), prepared.ctx.frozen), force=dev is None)

    @staticmethod
    def _save(path: Path, iteration: int, fitted: Any, frozen: set[str], history: list[dict], best: BestTracker,
              start: float, main_process: bool) -> None:
        if main_process:
            save_tree(path, {"iteration": iteration, "teacher": state_copy(fitted.bare_model(), frozen),
                             "history": history, "best": best.best, "best_state": best.best_state,
                             "seconds": time.perf_counter() - start})
