"""Fine-tuning: the recipe's model and techniques trained on the labelled train split, then tested.

The default stage: a recipe without a stage section runs this. With ``--save-model`` the best
model goes to ``out/model`` (loadable as a backbone); with ``--resume`` training continues from
``out/checkpoint`` (written every ``train.checkpoint_every`` steps) and ends with the same
result as an uninterrupted run.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from ..assemble import prepare
from ..data import load_task
from ..record import RunRecord
from ..rundir import MetricLog, is_main_process
from .base import RunSpec, Stage, register_stage


@register_stage("finetune")
class FineTune(Stage):
    saves_model = True
    summary = "fine-tune the recipe's model and techniques on the labelled rows (the default)"

    def run(self, spec: RunSpec, config: Any) -> RunRecord:
        recipe, out = spec.recipe, spec.out
        task = load_task(spec.task_dir, recipe.data, need=("train",))
        prepared = prepare(recipe, task, spec.seed)
        params = prepared.parameters()  # before training: gradual unfreezing changes what trains
        main_process = is_main_process()
        log = MetricLog(out / "metrics.jsonl" if main_process else None, recipe, spec.seed)
        try:
            fitted = prepared.fit(log, progress=spec.progress, checkpoint_dir=out / "checkpoint", resume=spec.resume)
            start = time.perf_counter()
            test = prepared.metrics(fitted, "test")
            eval_seconds = time.perf_counter() - start
            if test is not None:
                log.write({"type": "eval", "split": "test", "step": fitted.steps, **test})
        finally:
            log.close()
        saved = None
        if spec.save_model and fitted.accelerator.is_main_process:
            saved = prepared.save(fitted.bare_model(), out / "model")
        details = {"dev_history": fitted.dev_history, "best_epoch": fitted.best_epoch, "steps": fitted.steps,
                   "epochs_run": fitted.epochs_run, "stopped_early": fitted.stopped_early,
                   "train_seconds": round(fitted.train_seconds, 3), "eval_seconds": round(eval_seconds, 3),
                   "techniques": prepared.technique_reports(fitted)}
        if saved:
            details["model"] = saved
        return RunRecord.for_task(task, spec.task_dir, seed=spec.seed, recipe=recipe.to_dict(), test=test,
                                  dev=fitted.best_dev, parameters=params, sizes=prepared.sizes(),
                                  details=details)

    def cleanup(self, spec: RunSpec) -> None:
        # After result.json: the checkpoint (~3x the model size) is no longer needed.
        shutil.rmtree(spec.out / "checkpoint", ignore_errors=True)
