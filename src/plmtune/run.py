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

__all__ = ["StageServices", "run_finetune", "run_recipe", "write_json_atomic"]


class StageServices:
    """What a stage may use from the layers above it (``spec.services``): a stage cannot import the recipe
    loader, this runner or :func:`plmtune.load`, which import the stages (tests/test_import_graph.py).
    The distillation stage trains a recipe teacher and loads a saved one through these."""

    @staticmethod
    def load_recipe(name_or_path: str | Path) -> Recipe:
        from .loading import load_recipe

        return load_recipe(name_or_path)

    @staticmethod
    def run_recipe(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return run_recipe(*args, **kwargs)  # looked up when called: a nested run is a run like any other

    @staticmethod
    def load_model(path: str | Path) -> Any:
        from .classifier import load

        return load(path)


def run_recipe(recipe: Recipe, task_dir: str | Path, out: str | Path, seed: int | None = None,
               progress: bool = False, save_model: bool = False, resume: bool = False,
               overwrite: bool = False) -> dict[str, Any]:
    """Run `recipe` on a task folder into `out` and return the result.json it writes.

    With `save_model`, the training stage saves its model to ``out/model`` (where the stage can);
    with `resume`, stages continue from what an interrupted run left (checkpoints, stage state);
    with `overwrite`, a folder holding a finished run may be re-run (see :func:`plmtune.rundir.run_folder`:
    the old outputs are replaced only once the new run has succeeded).
    """
    import os

    if not isinstance(task_dir, (str, os.PathLike)):
        raise RecipeError(f"run_recipe takes a task folder, not a {type(task_dir).__name__}; for in-memory data "
                          "(a datasets.Dataset, a DataFrame, a list of dicts) use plmtune.train(recipe, train=..., "
                          "dev=..., test=...).")
    pre, (stage, config) = plan(recipe)
    if save_model:  # before any training: a model that could not be shipped is refused now, not after the run
        from .saved import outside_files
        from .techniques import build_techniques

        problem = outside_files(build_techniques(recipe))
        if problem:
            raise RecipeError(f"--save-model: the model could not be saved, because {problem}.")
    if save_model and not stage.saves_model:
        raise RecipeError(f"--save-model is not available for recipes with a {stage.name} stage yet.")
    spec = RunSpec(recipe, Path(task_dir), Path(out), recipe.train.seed if seed is None else seed, progress,
                   resume, save_model, StageServices())
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
