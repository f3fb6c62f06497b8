"""Running a recipe: optional pre-training, then exactly one training stage, then result.json once.

The pipeline is :func:`run_recipe`; the stages live in :mod:`plmtune.stages`. Everything a run
writes goes into its output folder: ``recipe.yaml`` (the resolved recipe), ``metrics.jsonl``
(every step and evaluation), the stages' own folders (``pretrain/``, ``self_training/``) and
``result.json``, written atomically and last, so that a folder with a result.json holds a
finished run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .config import Recipe
from .errors import RecipeError
from .recipe_io import recipe_to_yaml
from .rundir import is_main_process, run_folder, write_json_atomic, write_text_atomic
from .stages import RunSpec, plan

__all__ = ["run_finetune", "run_recipe", "write_json_atomic"]


def run_recipe(recipe: Recipe, task_dir: str | Path, out: str | Path, seed: int | None = None,
               progress: bool = False, save_model: bool = False, resume: bool = False,
               overwrite: bool = False) -> dict[str, Any]:
    """Run `recipe` on a task folder into `out` and return the result.json it writes.

    With `save_model`, the training stage saves its model to ``out/model`` (where the stage can);
    with `resume`, stages continue from what an interrupted run left (checkpoints, stage state);
    with `overwrite`, a folder holding a finished run may be re-run (see :func:`plmtune.rundir.run_folder`:
    the old outputs are replaced only once the new run has succeeded).
    """
    pre, (stage, config) = plan(recipe)
    if save_model and not stage.saves_model:
        raise RecipeError(f"--save-model is not available for recipes with a {stage.name} stage yet.")
    spec = RunSpec(recipe, Path(task_dir), Path(out), recipe.train.seed if seed is None else seed, progress,
                   resume, save_model)
    main_process = is_main_process()  # under torchrun only the first process writes the folder's files
    if not main_process:
        return _run_stages(spec, pre, stage, config)
    with run_folder(spec.out, resume, overwrite, stage.state_dirs):
        if not resume:
            write_text_atomic(spec.out / "recipe.yaml", recipe_to_yaml(recipe))
        result = _run_stages(spec, pre, stage, config)
        if resume:  # only now: a refused resume (another recipe) must leave the folder's recipe.yaml as it was
            write_text_atomic(spec.out / "recipe.yaml", recipe_to_yaml(recipe))
        write_json_atomic(spec.out / "result.json", result)
        stage.cleanup(spec)
    return result


def _run_stages(spec: RunSpec, pre: list, stage: Any, config: Any) -> dict[str, Any]:
    recipe = trained = spec.recipe
    summaries: dict[str, Any] = {}
    for before, before_config in pre:  # further pre-training: the training stage starts from its backbone
        done = before.run(dataclasses.replace(spec, recipe=trained), before_config)
        trained = dataclasses.replace(trained.without_stage(before.name),
                                      model=dataclasses.replace(trained.model, backbone=done.backbone))
        summaries[before.name] = done.summary
    record = stage.run(dataclasses.replace(spec, recipe=trained), config)
    record.recipe = recipe.to_dict()  # the recipe as written, not the one with the swapped backbone
    record.details.update(summaries)
    return record.to_dict()


def run_finetune(recipe: Recipe, task_dir: str | Path, out: str | Path, seed: int | None = None,
                 progress: bool = False, save_model: bool = False, resume: bool = False,
                 overwrite: bool = False) -> dict[str, Any]:
    """The name earlier versions used: runs the whole recipe (see :func:`run_recipe`)."""
    return run_recipe(recipe, task_dir, out, seed, progress, save_model, resume, overwrite)
