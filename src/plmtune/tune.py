"""`plmtune tune`: search a recipe's knobs on the dev split with Optuna, then test once.

Each trial runs the whole recipe (:func:`plmtune.run.run_recipe`): a self-training or
self-distillation recipe is tuned as such, not as plain fine-tuning. A stage that cannot run once
per trial (further pre-training, ``Stage.tunable``) is refused by name.

The search space is the learning rate (log-uniform) plus each technique's own knobs, which a
technique declares on its class as ``search_space = {"field": (low, high)}`` (a float range; a
``log`` third element samples log-uniformly). Trials are full fine-tuning runs scored by the
recipe's ``train.select_metric`` on dev; the test split is never read during the search (the
trials run on a copy of the task without it). When the time budget is spent, the best trial's
values are applied and one final run evaluates on test.

Output: ``OUT/tune.json`` (every trial's values and dev score, the best values) and the final
run's folder ``OUT/final`` with its ``result.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .config import Recipe
from .data import find_split_file
from .errors import PlmtuneError, RecipeError
from .loading import build_recipe
from .recipe_io import apply_override
from .run import run_recipe
from .rundir import write_json_atomic
from .stages import plan
from .techniques import registry

logger = logging.getLogger(__name__)

LR_RANGE = (1e-5, 3e-4, "log")


def search_space(recipe: Recipe) -> dict[str, tuple]:
    """Dotted recipe paths -> (low, high[, 'log']) for the LR and every technique's knobs."""
    space: dict[str, tuple] = {"train.lr": LR_RANGE}
    known = registry()
    for i, spec in enumerate(recipe.techniques):
        for field, bounds in getattr(known[spec.name], "search_space", {}).items():
            space[f"techniques.{i}.{field}"] = bounds
    return space


def _dev_only_copy(task_dir: Path) -> Path:
    """A temporary task folder without the test split, so that no trial can see test."""
    folder = Path(tempfile.mkdtemp(prefix="plmtune-tune-"))
    for path in task_dir.iterdir():
        if path.is_file() and not path.name.startswith("test."):
            shutil.copy2(path, folder / path.name)
    return folder


def tune(recipe: Recipe, task_dir: str | Path, out: str | Path, budget_minutes: float, seed: int,
         max_trials: int | None = None) -> dict[str, Any]:
    import optuna

    task_dir, out = Path(task_dir), Path(out)
    pre, (stage, _) = plan(recipe)
    for refused in [s for s, _ in pre if not s.tunable] + ([] if stage.tunable else [stage]):
        raise RecipeError(f"plmtune tune cannot tune a recipe with a {refused.name} stage: every trial would run "
                          f"{refused.name} again. Run it once (e.g. 'plmtune pretrain'), then tune the recipe "
                          "without that section on its result.")
    if find_split_file(task_dir, "dev") is None:  # dev.* or validation.*
        raise PlmtuneError(f"Tuning needs a dev split in {task_dir} to score trials on.")
    out.mkdir(parents=True, exist_ok=True)
    space = search_space(recipe)
    base = recipe.to_dict()
    trials: list[dict[str, Any]] = []
    dev_only = _dev_only_copy(task_dir)

    def resolved(values: dict[str, float]) -> Recipe:
        raw = json.loads(json.dumps(base))
        for path, value in values.items():
            apply_override(raw, f"{path}={value!r}")
        return build_recipe(raw)

    def objective(trial: optuna.Trial) -> float:
        values = {path: trial.suggest_float(path, b[0], b[1], log=len(b) > 2 and b[2] == "log")
                  for path, b in space.items()}
        result = run_recipe(resolved(values), dev_only, out / "trials" / f"trial-{trial.number}", seed=seed,
                            overwrite=True)
        score = (result["dev"] or {}).get(recipe.train.select_metric, float("nan"))
        # null, not NaN, in tune.json: the JSON writer is strict (a trial with no dev score has none)
        trials.append({"number": trial.number, "values": values, "dev": score if score == score else None,
                       "seconds": result["train_seconds"]})
        logger.info("trial %d: %s -> dev %s %.4f", trial.number, values, recipe.train.select_metric, score)
        return score

    # ERROR, not WARNING: Optuna logs a failing trial ("Trial 0 failed ...") at WARNING with its whole
    # traceback, before plmtune's own one-paragraph message for the same error.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    start = time.perf_counter()
    try:
        study.optimize(objective, timeout=budget_minutes * 60, n_trials=max_trials)
    finally:
        shutil.rmtree(dev_only, ignore_errors=True)
    if not trials:
        raise PlmtuneError("No trial finished within the budget; give tune more minutes.")
    best = study.best_trial
    final = run_recipe(resolved(best.params), task_dir, out / "final", seed=seed, overwrite=True)
    summary = {"space": {k: list(v) for k, v in space.items()}, "trials": trials, "best_values": best.params,
               "best_dev": best.value, "search_seconds": round(time.perf_counter() - start, 1),
               "final_test": final["test"], "seed": seed}
    write_json_atomic(out / "tune.json", summary)
    return summary
