"""Self-knowledge distillation (seeds: 自蒸馏; Furlanello et al. 2018, "Born-Again Neural Networks").

A recipe with ``self_distillation:`` fine-tunes, takes the model's soft labels on the training
rows at temperature T, then fine-tunes a fresh model on α·CE(hard) + (1−α)·T²·CE(soft_T)
(:class:`SoftTargetLoss`, appended after the recipe's techniques), ``rounds`` times. After each
round its metrics and the soft labels for the next are written atomically to
``self_distillation/state.safetensors`` (tensors and JSON, never a pickle); ``--resume``
continues at the next round.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ..assemble import prepare
from ..data import load_task
from ..engine.checkpoint import keep_log_records, load_tree, save_tree
from ..record import RunRecord
from ..reweight import sharpen, soft_target_loss
from ..rundir import MetricLog, is_main_process
from ..technique import Technique, TrainContext
from ..validate import bounded, check_declared
from .base import RunSpec, Stage, register_stage

STATE_FILE = "state.safetensors"


@dataclass(frozen=True)
class SelfDistillationConfig:
    """Self-knowledge distillation (plmtune.stages.self_distillation): fine-tune, then fine-tune a fresh
    model on the first one's soft labels mixed with the hard labels.

    Args:
    temperature: softens teacher and student distributions (the soft loss is scaled by T²).
    alpha: weight of the hard-label loss; the soft-label loss gets 1 - alpha.
    rounds: how many times the student becomes the next teacher.
    """

    temperature: float = bounded(2.0, 0.0, 100.0, lo_open=True)
    alpha: float = bounded(0.5, 0.0, 1.0)
    rounds: int = bounded(1, 1, 100)

    def __post_init__(self) -> None:
        check_declared(self, "self_distillation")


class SoftTargetLoss(Technique):
    """α·CE(hard labels) + (1−α)·T²·CE(teacher soft labels at T) — self-distillation's student loss."""

    name = "soft_target_loss"
    batch_fields = {"soft_labels": "float32"}

    def adjust_loss(self, loss: torch.Tensor, outputs: Any, batch: dict, ctx: TrainContext) -> torch.Tensor:
        soft = soft_target_loss(outputs["logits"], batch["soft_labels"], self.config.temperature).mean()
        return self.config.alpha * loss + (1 - self.config.alpha) * soft


@register_stage("self_distillation", SelfDistillationConfig)
class SelfDistillation(Stage):
    saves_model = True
    state_dirs = ("self_distillation",)
    summary = "fine-tune, then fine-tune fresh models on the previous one's soft labels"

    def run(self, spec: RunSpec, cfg: SelfDistillationConfig) -> RunRecord:
        recipe, seed, out = spec.recipe, spec.seed, spec.out
        task = load_task(spec.task_dir, recipe.data, need=("train",))
        main_process, state_file = is_main_process(), out / "self_distillation" / STATE_FILE
        # A finished round leaves its metrics and the soft labels for the next one: all a resume needs.
        saved = load_tree(state_file) if spec.resume and state_file.is_file() else None
        if saved and spec.save_model and len(saved["rounds"]) == cfg.rounds + 1:
            # Finished before the interruption, but the state keeps no model: run the last round again
            # (its soft labels are the saved ones, so it trains the same model).
            saved["rounds"] = saved["rounds"][:-1]
        if saved and main_process:
            keep_log_records(out / "metrics.jsonl", lambda record: record.get("round", 0) < len(saved["rounds"]))
        log = MetricLog(out / "metrics.jsonl" if main_process else None, recipe, seed)
        rounds, soft = (saved["rounds"], saved["soft"]) if saved else ([], None)
        model_notes = None
        params, sizes = (saved["params"], saved["sizes"]) if saved else (None, None)
        start = time.perf_counter() - (saved["seconds"] if saved else 0.0)
        reports: dict = {}
        try:
            for round_ in range(len(rounds), cfg.rounds + 1):  # round 0 is the plain teacher
                prepared = prepare(recipe, task, seed, extra_fields=SoftTargetLoss.batch_fields)
                extra = []
                if soft is not None:
                    train = prepared.splits["train"]
                    if len(soft) != len(train):
                        raise RuntimeError("the train split changed between teacher and student; prepare_data "
                                           "must be deterministic for self-distillation")
                    prepared.splits["train"] = [{**row, "soft_labels": p.tolist()} for row, p in zip(train, soft)]
                    prepared.encoded["train"] = prepared.encode(prepared.splits["train"])
                    extra = [SoftTargetLoss(cfg)]
                log.tags = {"stage": "teacher" if round_ == 0 else "student", "round": round_}
                fitted = prepared.fit(log, extra=extra, progress=spec.progress)
                rounds.append({"round": round_, "dev": fitted.best_dev, "test": prepared.metrics(fitted, "test")})
                if round_ < cfg.rounds:
                    soft = sharpen(prepared.probs(fitted, prepared.encoded["train"]), cfg.temperature)
                params, sizes = prepared.parameters(), prepared.sizes()
                reports = prepared.technique_reports(fitted)
                if round_ == cfg.rounds and spec.save_model and main_process:  # the model tested last
                    model_notes = prepared.save(fitted.bare_model(), out / "model")
                if main_process:
                    save_tree(state_file, {"rounds": rounds, "soft": soft, "params": params, "sizes": sizes,
                                           "seconds": time.perf_counter() - start})
                del prepared, fitted  # the next round loads a fresh model; never two at once
        finally:
            log.close()
        last = rounds[-1]
        details = {"train_seconds": round(time.perf_counter() - start, 3), "techniques": reports,
                   "self_distillation": {"rounds": rounds}}
        if model_notes:
            details["model"] = model_notes
        return RunRecord.for_task(task, spec.task_dir, seed=seed, recipe=recipe.to_dict(), test=last["test"],
                                  dev=last["dev"], parameters=params, sizes=sizes, details=details)
