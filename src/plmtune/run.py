"""The fine-tuning stage: data -> techniques -> model -> fit -> test -> result.json.

Everything a run writes goes into its output folder: ``metrics.jsonl`` (every step and
evaluation), ``recipe.yaml`` (the resolved recipe) and ``result.json``, the last written
atomically so that a folder with a result.json holds a finished run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .config import Recipe, recipe_to_yaml
from .data import EncodedSplit, PadCollator, eval_loader, load_task, train_loader
from .engine.loop import MetricLog, evaluate, fit
from .models import SequenceClassifier, count_parameters, load_backbone
from .provenance import git_commit, machine, peak_memory, versions
from .technique import TrainContext, build_techniques

logger = logging.getLogger(__name__)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temp file and rename, so readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prepare_out_dir(out: Path, resume: bool = False) -> None:
    """Create the run folder and make sure it is writable before any training time is spent."""
    from .errors import PlmtuneError

    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise PlmtuneError(f"Cannot write to the output folder {out}: {err.strerror or err}.") from err
    (out / "result.json").unlink(missing_ok=True)
    if not resume:
        (out / "metrics.jsonl").unlink(missing_ok=True)
        shutil.rmtree(out / "checkpoint", ignore_errors=True)


def build_model_and_data(recipe: Recipe, splits: dict[str, list[dict]], techniques: list, ctx: TrainContext
                         ) -> tuple[torch.nn.Module, dict[str, list[dict]]]:
    """Load the backbone, let techniques prepare the rows and the model; set ctx.tokenizer."""
    tokenizer, encoder = load_backbone(recipe.model.backbone)
    if recipe.model.encoder_dropout is not None:
        for module in encoder.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = recipe.model.encoder_dropout
    ctx.tokenizer = tokenizer  # before prepare_data: prompts render and cut text with it
    for technique in techniques:
        splits = technique.prepare_data(splits, ctx)
    model = SequenceClassifier(encoder, ctx.num_labels, recipe.model.pooling, recipe.model.dropout,
                               recipe.model.pooling_layers)
    for technique in techniques:
        model = technique.prepare_model(model, ctx)
    return model, splits


def encode(rows: list[dict], ctx: TrainContext) -> EncodedSplit:
    """Tokenise rows as the recipe's data section says (length and truncation)."""
    data = ctx.recipe.data
    return EncodedSplit(rows, ctx.tokenizer, data.max_length, data.truncation, data.head_tokens)


def test_metrics(ctx: TrainContext, encoded: dict[str, EncodedSplit]) -> dict[str, float] | None:
    """Metrics of the current model (ctx.model, after a fit) on the test split; None without one."""
    if "test" not in encoded:
        return None
    collate = PadCollator(ctx.tokenizer.pad_token_id or 0)
    loader = ctx.accelerator.prepare(eval_loader(encoded["test"], ctx.recipe.train.eval_batch_size, collate))
    return evaluate(ctx.model, loader, ctx.accelerator, ctx.num_labels)["metrics"]


def split_sizes(splits: dict[str, list[dict]]) -> dict[str, int]:
    """Rows per split, as result.json records them."""
    return {name: len(rows) for name, rows in splits.items()}


def result_record(recipe: Recipe, task: Any, task_dir: str | Path, seed: int, sizes: dict[str, int],
                  test: dict | None, dev: dict | None, params: dict[str, int], **details: Any) -> dict[str, Any]:
    """The result.json every stage writes: what ran on what, its metrics, and the environment."""
    return {
        "status": "ok",
        "task": task.name,
        "task_dir": str(Path(task_dir).resolve()),
        "data_files": {k: str(v.resolve()) for k, v in task.files.items()},
        "num_labels": task.num_labels,
        "label_names": task.label_names,
        "sizes": sizes,
        "recipe": recipe.to_dict(),
        "seed": seed,
        "test": test,
        "dev": dev,
        **details,
        "parameters": params,
        "peak_memory": peak_memory(),
        "versions": versions(),
        "machine": machine(),
        "git": git_commit(),
    }


def run_finetune(recipe: Recipe, task_dir: str | Path, out: str | Path, seed: int | None = None,
                 progress: bool = False, save_model: bool = False, resume: bool = False) -> dict[str, Any]:
    """Fine-tune `recipe` on a task folder and write the run folder; return the result dict.

    With `save_model`, the best checkpoint goes to ``out/model`` (loadable as a backbone). With
    `resume`, training continues from ``out/checkpoint`` (written every ``train.checkpoint_every``
    steps) and ends with the same result as an uninterrupted run.
    """
    from accelerate.utils import set_seed

    seed = recipe.train.seed if seed is None else seed
    out = Path(out)
    task = load_task(task_dir, recipe.data, need=("train",))
    # Under torchrun every process runs this; only the first touches the folder's files.
    main_process = int(os.environ.get("RANK", "0")) == 0
    if main_process:
        prepare_out_dir(out, resume)
        (out / "recipe.yaml").write_text(recipe_to_yaml(recipe), encoding="utf-8")
    set_seed(seed)
    techniques = build_techniques(recipe)
    ctx = TrainContext(recipe=recipe, seed=seed, num_labels=task.num_labels, task_name=task.name)
    model, splits = build_model_and_data(recipe, task.splits, techniques, ctx)
    tokenizer, params = ctx.tokenizer, count_parameters(model)

    collate = PadCollator(tokenizer.pad_token_id or 0)
    encoded = {name: encode(rows, ctx) for name, rows in splits.items()}
    cfg = recipe.train
    loader = train_loader(encoded["train"], cfg.batch_size, seed, collate)
    dev = eval_loader(encoded["dev"], cfg.eval_batch_size, collate) if "dev" in encoded else None
    log = MetricLog(out / "metrics.jsonl" if main_process else None)
    try:
        fitted = fit(model, techniques, ctx, loader, dev, cfg, log, progress=progress,
                     checkpoint_dir=out / "checkpoint", resume=resume)
        start = time.perf_counter()
        test = test_metrics(ctx, encoded)
        eval_seconds = time.perf_counter() - start
        if test is not None:
            log.write({"type": "eval", "split": "test", "step": fitted.steps, **test})
    finally:
        log.close()

    result = result_record(recipe, task, task_dir, seed, split_sizes(splits), test, fitted.best_dev, params,
                           dev_history=fitted.dev_history, best_epoch=fitted.best_epoch, steps=fitted.steps,
                           epochs_run=fitted.epochs_run, stopped_early=fitted.stopped_early,
                           train_seconds=round(fitted.train_seconds, 3), eval_seconds=round(eval_seconds, 3))
    if ctx.accelerator.is_main_process:
        write_json_atomic(out / "result.json", result)
        shutil.rmtree(out / "checkpoint", ignore_errors=True)  # finished: ~3x the model size, no longer needed
        if save_model:
            ctx.accelerator.unwrap_model(ctx.model).save(out / "model", tokenizer)
    return result


def run_recipe(recipe: Recipe, task_dir: str | Path, out: str | Path, seed: int | None = None,
               progress: bool = False, save_model: bool = False, resume: bool = False) -> dict[str, Any]:
    """Run a recipe: its stage (self-training, self-distillation) where it has one, else fine-tuning."""
    import dataclasses

    from .errors import RecipeError
    from .selftrain import STAGE_RUNNERS

    pretrained = None
    if recipe.pretrain is not None:  # further pre-training first; fine-tuning then starts from its model
        from .pretrain import run_pretrain_stage

        pretrained = run_pretrain_stage(recipe.pretrain, recipe.model.backbone, task_dir, Path(out) / "pretrain",
                                        recipe.data, recipe.train.seed if seed is None else seed, progress)
        original = recipe
        recipe = dataclasses.replace(recipe, pretrain=None,
                                     model=dataclasses.replace(recipe.model, backbone=pretrained["model"]))
    result = None
    for name, runner in STAGE_RUNNERS.items():
        if getattr(recipe, name) is not None:
            if save_model:
                raise RecipeError(f"--save-model is not available for recipes with a {name} stage yet.")
            result = runner(recipe, task_dir, out, seed, progress=progress, resume=resume)
    if result is None:
        result = run_finetune(recipe, task_dir, out, seed, progress=progress, save_model=save_model, resume=resume)
    if pretrained is not None and int(os.environ.get("RANK", "0")) == 0:
        summary = {k: pretrained[k] for k in ("masking", "texts", "heldout_texts", "steps", "best_step",
                                              "best_heldout_loss", "stopped", "seconds", "model")}
        result = {**result, "recipe": original.to_dict(), "pretrain": summary}
        write_json_atomic(Path(out) / "result.json", result)
    return result
