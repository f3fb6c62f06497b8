"""Teacher → student distillation (Hinton et al. 2015): a big teacher's soft labels train a small student.

A recipe with ``distillation:`` trains its own model (its backbone, MiniLM by default, and its
techniques) as the student of a teacher (:mod:`plmtune.stages.teachers`: a saved model, or a recipe
trained first on the same task, e.g. ``teacher: baseline`` with ``teacher_backbone: mpnet``):

1. the teacher labels the train rows and a pool of unlabelled rows (``unlabeled.jsonl``: a seeded
   sample of ``unlabeled_cap`` rows, after dropping any whose text is a dev or test row's; never
   the dev or test split) with its logits; they are cached on disk, keyed by the teacher and the
   data, so other students of the same teacher reuse them without loading it;
2. the student trains (the recipe's train section, dev selection as usual) on the gold rows and
   the pool rows together, each row i with the loss

       alpha · g_i · CE(y_i, softmax(z_i)) + (1 − alpha) · k_i · T² · KL(p_i^T ‖ softmax(z_i / T)),

   averaged over the batch, where z_i are the student's logits, p_i^T = softmax(teacher logits / T),
   g_i = 1 on a gold row and 0 on a pool row (pool rows get the KL term only), and k_i = 1 where
   the teacher labelled the row (a technique's augmented copies (EDA, back-translation) have no
   teacher prediction: k_i = 0, they train on their gold label only).

With ``--save-model`` the student is saved to ``OUT/model``. ``result.json`` holds the student's
metrics (``test``, ``dev``) and, under ``distillation``, the teacher's identity and own dev/test
metrics, the cache file and whether it was a hit, and the seconds spent on the teacher (training a
recipe teacher and labelling, or reading the cache) and on the student. ``--resume`` reuses the
labelling through the cache, a recipe teacher's finished (or interrupted) run in
``OUT/distillation/teacher``, and the student's checkpoint (``OUT/checkpoint``, as fine-tuning);
it refuses to continue where the teacher or the data changed since.

Techniques that add their own loss term (``adjust_loss``: R-Drop, contrastive) are refused: their
terms would count the pool rows' pseudo-labels as gold.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..assemble import prepare
from ..config import DataConfig, Recipe
from ..data import TaskData, load_task, read_rows
from ..errors import DataError, PlmtuneError, RecipeError
from ..record import RunRecord
from ..rundir import MetricLog, is_main_process, write_json_atomic
from ..technique import Technique, TrainContext
from ..techniques import registry as technique_registry
from ..validate import bounded, check_declared
from . import teachers
from .base import RunSpec, Stage, register_stage

STATE_FILE = "labels.json"  # OUT/distillation/labels.json: which teacher predictions the student trains on


@dataclass(frozen=True)
class DistillationConfig:
    """Teacher -> student distillation (plmtune.stages.distillation).

    Args:
    teacher: a saved-model folder ('plmtune run --save-model' writes OUT/model) or a recipe (a shipped
        name or a file) trained first on the same task into OUT/distillation/teacher.
    teacher_backbone: a recipe teacher's backbone (e.g. 'mpnet'); empty: the teacher recipe's own.
    temperature: T of the soft targets; the KL term is scaled by T².
    alpha: weight of the gold-label cross-entropy on gold rows; the KL term gets 1 - alpha.
    unlabeled_cap: at most this many rows of unlabeled.jsonl (a seeded sample) are labelled by the
        teacher and trained on; 0: the train rows only.
    cache: folder of the cached teacher predictions; empty: $PLMTUNE_CACHE/teachers, else
        ~/.cache/plmtune/teachers (shared by every run, so students reuse a teacher).
    """

    teacher: str = ""
    teacher_backbone: str = ""
    temperature: float = bounded(2.0, 0.0, 100.0, lo_open=True)
    alpha: float = bounded(0.5, 0.0, 1.0)
    unlabeled_cap: int = bounded(2048, 0, 100_000_000)
    cache: str = ""

    def __post_init__(self) -> None:
        check_declared(self, "distillation")
        if not self.teacher.strip():
            raise ValueError("field 'teacher' is required: a saved-model folder ('plmtune run --save-model' writes "
                             "OUT/model) or a recipe to train first on the same task (e.g. teacher: baseline, "
                             "teacher_backbone: mpnet)")


def distillation_loss(logits: torch.Tensor, gold_ce: torch.Tensor, soft: torch.Tensor, gold: torch.Tensor,
                      kd: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    """Per-example loss: alpha·gold·CE + (1−alpha)·kd·T²·KL(soft ‖ softmax(logits/T)) (see the module doc)."""
    log_q = F.log_softmax(logits.float() / temperature, dim=-1)
    kl = (torch.special.xlogy(soft, soft) - soft * log_q).sum(-1) * temperature ** 2
    return alpha * gold * gold_ce + (1 - alpha) * kd * kl


class DistillationLoss(Technique):
    """The student's loss on a batch of gold and pool rows (appended after the recipe's techniques)."""

    name = "distillation_loss"
    batch_fields = {"soft_labels": "float32", "gold": "float32", "kd": "float32"}

    def adjust_loss(self, loss: torch.Tensor, outputs: Any, batch: dict, ctx: TrainContext) -> torch.Tensor:
        cfg = self.config
        return distillation_loss(outputs["logits"], outputs["per_example_loss"], batch["soft_labels"], batch["gold"],
                                 batch["kd"], cfg.temperature, cfg.alpha).mean()


def distillation_pool(task_dir: Path, data: DataConfig, cap: int, seed: int, task: TaskData) -> tuple[list[dict], int]:
    """(up to `cap` rows of unlabeled.jsonl, a seeded sample; how many were dropped as dev or test text).

    A pool row whose text (and pair) is a dev or test row's is never labelled nor trained on.
    """
    if cap == 0:
        return [], 0
    path = Path(task_dir) / "unlabeled.jsonl"
    hint = "; set distillation.unlabeled_cap=0 to distil on the train rows only."
    if not path.is_file():
        raise DataError(task_dir, "no unlabeled.jsonl: distillation.unlabeled_cap is "
                                  f"{cap}, so the teacher labels a pool of unlabelled text ('plmtune data fewshot' "
                                  f"writes one beside the splits){hint}")
    if not path.read_text(encoding="utf-8").strip():
        raise DataError(path, f"the unlabelled pool is empty{hint}")
    rows, _ = read_rows(path, data, labelled=False, is_pair=task.is_pair)
    held_out = {(r["text"], r.get("text_pair")) for split in ("dev", "test") for r in task.splits.get(split, ())}
    kept = [r for r in rows if (r["text"], r.get("text_pair")) not in held_out]
    dropped = len(rows) - len(kept)
    if len(kept) > cap:
        kept = random.Random(seed).sample(kept, cap)
    return kept, dropped


def check_techniques(recipe: Recipe) -> None:
    known = technique_registry()
    for i, spec in enumerate(recipe.techniques):
        if "adjust_loss" in known[spec.name].overridden_hooks():
            raise RecipeError(
                f"techniques[{i}]: '{spec.name}' adds its own loss term, which would treat the distillation "
                "pool's rows (no gold label) as labelled; a recipe with a distillation section cannot use it "
                "(remove it, or distil into a recipe without it).")


def student_rows(prepared: Any, entry: dict, temperature: float) -> tuple[list[dict], int]:
    """The student's training rows (gold, then pool) with their soft targets; and how many lack a teacher prediction."""
    soft: dict[str, list[float]] = {}
    for part in ("train", "pool"):
        probs = torch.softmax(entry[part]["logits"].float() / temperature, dim=-1)
        soft.update(zip(entry[part]["sources"], probs.tolist()))
    none = [0.0] * prepared.ctx.num_labels
    rows, missing = [], 0
    for row in prepared.splits["train"]:
        target = soft.get(row["source"])
        missing += target is None
        rows.append({**row, "soft_labels": target or none, "gold": 1.0, "kd": float(target is not None)})
    for row in prepared.splits.get("unlabeled", ()):
        target = soft[row["source"]]  # every pool row was labelled
        rows.append({**row, "label": int(torch.tensor(target).argmax()), "soft_labels": target, "gold": 0.0,
                     "kd": 1.0})
    return rows, missing


@register_stage("distillation", DistillationConfig)
class Distillation(Stage):
    saves_model = True
    state_dirs = ("distillation",)
    summary = "a teacher (saved model or recipe) labels train + unlabelled rows; the recipe's model learns from it"

    def run(self, spec: RunSpec, cfg: DistillationConfig) -> RunRecord:
        services = spec.services
        if services is None:
            raise RuntimeError("the distillation stage runs through plmtune.run.run_recipe (it needs spec.services)")
        recipe, seed, out = spec.recipe, spec.seed, spec.out
        check_techniques(recipe)
        task = load_task(spec.task_dir, recipe.data, need=("train",))
        pool, dropped = distillation_pool(spec.task_dir, recipe.data, cfg.unlabeled_cap, seed, task)
        teacher = teachers.resolve_teacher(cfg, seed, task, services)
        key = teachers.cache_key(teacher, task, pool)
        cache_file = (Path(cfg.cache).expanduser() if cfg.cache else teachers.default_cache()) / f"{key}.safetensors"
        main_process, state_file = is_main_process(), out / "distillation" / STATE_FILE
        if spec.resume and state_file.is_file():
            before = json.loads(state_file.read_text(encoding="utf-8"))
            if before.get("key") != key:
                raise PlmtuneError(
                    f"{state_file}: field 'key' is {before.get('key')!r}, but this run's teacher and data give "
                    f"{key!r}: the teacher (distillation.teacher, or the files of its folder) or the task's rows "
                    "changed since the interrupted run, so its student checkpoint would mix two runs. Run again "
                    "without --resume.")

        start = time.perf_counter()
        entry = teachers.read_cache(cache_file, key, task.splits["train"], pool, task.num_labels)
        hit = entry is not None
        if entry is None:
            entry = teachers.label(teacher, spec, task, pool, key, services)
            if main_process:
                teachers.write_cache(cache_file, entry)
        teacher_seconds = time.perf_counter() - start
        if main_process:
            write_json_atomic(state_file, {"key": key, "cache_file": str(cache_file)})

        start = time.perf_counter()
        prepared = prepare(recipe, task, seed, {**task.splits, **({"unlabeled": pool} if pool else {})},
                           extra_fields=DistillationLoss.batch_fields)
        rows, without_teacher = student_rows(prepared, entry, cfg.temperature)
        params = prepared.parameters()  # before training: gradual unfreezing changes what trains
        log = MetricLog(out / "metrics.jsonl" if main_process else None, recipe, seed)
        try:
            log.tags = {"stage": "student"}
            fitted = prepared.fit(log, prepared.train_loader(prepared.encode(rows)), extra=[DistillationLoss(cfg)],
                                  progress=spec.progress, checkpoint_dir=out / "checkpoint", resume=spec.resume)
            test = prepared.metrics(fitted, "test")
            if test is not None:
                log.write({"type": "eval", "split": "test", "step": fitted.steps, **test})
        finally:
            log.close()
        student_seconds = time.perf_counter() - start
        model_notes = prepared.save(fitted.bare_model(), out / "model") if spec.save_model and main_process else None

        summary = {
            "teacher": {**entry["teacher"], "identity": teacher.identity if teacher.kind == "folder"
                        else {"kind": "recipe", "recipe": teacher.recipe.name, "seed": seed},
                        "dev": entry["teacher_dev"], "test": entry["teacher_test"]},
            "student": {"backbone": recipe.model.backbone, "dev": fitted.best_dev, "test": test},
            "cache": {"hit": hit, "file": str(cache_file), "key": key},
            "seconds": {"teacher": round(teacher_seconds, 3), "teacher_when_labelled": entry["seconds"],
                        "student": round(student_seconds, 3)},
            "rows": {"train": len(prepared.splits["train"]), "pool": len(pool),
                     "pool_dropped_as_dev_or_test": dropped, "without_teacher": without_teacher},
            "temperature": cfg.temperature, "alpha": cfg.alpha,
        }
        details = {"dev_history": fitted.dev_history, "best_epoch": fitted.best_epoch, "steps": fitted.steps,
                   "epochs_run": fitted.epochs_run, "stopped_early": fitted.stopped_early,
                   "train_seconds": round(student_seconds, 3), "techniques": prepared.technique_reports(fitted),
                   "distillation": summary}
        if model_notes:
            details["model"] = model_notes
        return RunRecord.for_task(task, spec.task_dir, seed=seed, recipe=recipe.to_dict(), test=test,
                                  dev=fitted.best_dev, parameters=params, sizes=prepared.sizes(), details=details)

    def cleanup(self, spec: RunSpec) -> None:
        # After result.json: the student's checkpoint is no longer needed (the teacher's run folder stays).
        shutil.rmtree(spec.out / "checkpoint", ignore_errors=True)
