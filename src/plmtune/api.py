"""The Python API: build a recipe in code, train on in-memory data or a task folder, get a model back.

::

    import plmtune
    recipe = plmtune.recipe("llrd", train={"learning_rate": 3e-5, "epochs": 5})   # validated like YAML
    run = plmtune.train(recipe, train=df_train, dev=df_dev, test=df_test)       # DataFrame, Dataset, rows...
    run.metrics            # test metrics (accuracy, macro_f1, mcc, ...), as result.json has them
    run.predict(["a sentence"]); run.evaluate(df_other); run.save("my-model")

:func:`train` runs the whole recipe through :func:`plmtune.run.run_recipe`, the entry point of
``plmtune run``, ``tune``, ``demo`` and the bench: further pre-training, self-training and every
other stage run here exactly as on the command line. The model it returns is the saved model
loaded back (:func:`plmtune.load`), so what you use is what would ship.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .classifier import Classifier, load
from .config import Recipe
from .errors import DataError, PlmtuneError


def recipe(base: str | Path | None = "baseline", overrides: list[str] | tuple[str, ...] = (),
           **sections: Any) -> Recipe:
    """A validated recipe: `base` (a shipped recipe name or a file; None for the defaults), then `sections`.

    Each keyword is a recipe section (``model``, ``data``, ``train``, ``techniques``, a stage such as
    ``self_training``, ``name``...) merged over the base as ``extends`` merges YAML (mappings
    deep-merged, lists replaced); `overrides` are ``--set`` strings applied last. Hugging Face names
    (``learning_rate``, ``num_train_epochs``...) are accepted in ``train``.
    """
    from .loading import build_recipe
    from .recipe_io import _deep_merge, apply_override, canonical_train_keys, read_raw_recipe

    raw = read_raw_recipe(base) if base is not None else {}
    sections = json.loads(json.dumps(sections, default=str))
    if "train" in sections:  # HF names first, so that they replace the base's plmtune names
        sections["train"] = canonical_train_keys(sections["train"])
    raw = _deep_merge(raw, sections)
    for override in overrides:
        apply_override(raw, override)
    return build_recipe(raw)


def _as_recipe(value: Any, **extra: dict[str, Any]) -> Recipe:
    """`value` (a recipe's name or file, a dict, a Recipe) with the non-empty `extra` sections merged over it."""
    from .recipe_io import _deep_merge, canonical_train_keys

    extra = {name: section for name, section in extra.items() if section}
    if isinstance(value, Recipe):
        if not extra:
            return value
        base, sections = None, value.to_dict()
    elif isinstance(value, dict):
        base, sections = value.get("extends"), {k: v for k, v in value.items() if k != "extends"}
    elif isinstance(value, (str, Path)):
        base, sections = value, {}
    else:
        raise PlmtuneError(f"recipe must be a shipped recipe's name, a recipe file, a dict or a plmtune.Recipe, "
                           f"not a {type(value).__name__}.")
    if "train" in extra:  # HF names on both sides first, so that a merged section never holds a name and its alias
        extra["train"] = canonical_train_keys(extra["train"], "train()'s keyword arguments")
        sections["train"] = canonical_train_keys(sections.get("train", {}))
    return recipe(base, **_deep_merge(sections, extra))


class TrainedModel:
    """What :func:`train` returns: the trained classifier, its result.json, its history."""

    def __init__(self, model: Classifier, result: dict[str, Any], history: list[dict[str, Any]], out: Path | None):
        self.model, self.result, self.history, self.out = model, result, history, out

    @property
    def metrics(self) -> dict[str, float] | None:
        """Test metrics (None where there was no test split)."""
        return self.result.get("test")

    @property
    def dev(self) -> dict[str, float] | None:
        """The selected model's dev metrics."""
        return self.result.get("dev")

    def predict(self, inputs: Any, **kwargs: Any) -> list[str]:
        return self.model.predict(inputs, **kwargs)

    def predict_proba(self, inputs: Any, **kwargs: Any) -> Any:
        return self.model.predict_proba(inputs, **kwargs)

    def evaluate(self, data: Any, split: str = "test", **kwargs: Any) -> dict[str, float]:
        return self.model.evaluate(data, split=split, **kwargs)

    def save(self, path: str | Path) -> dict[str, Any]:
        return self.model.save(path)

    def __repr__(self) -> str:
        test = self.metrics or {}
        return (f"TrainedModel({self.model!r}, test accuracy {test.get('accuracy', float('nan')):.4f}"
                f"{', in ' + str(self.out) if self.out else ''})")


def train(recipe: Any = "baseline", train: Any = None, dev: Any = None, test: Any = None, unlabeled: Any = None, *,
          out: str | Path | None = None, seed: int | None = None, text_field: str | None = None,
          text_pair_field: str | None = None, label_field: str | None = None, progress: bool = False,
          overwrite: bool = False, **train_args: Any) -> TrainedModel:
    """Train `recipe` and return the trained model.

    `train` is a task folder (then `dev`/`test`/`unlabeled` come from it), a ``datasets.DatasetDict``
    (its ``validation`` split is dev), or the train rows themselves: a ``datasets.Dataset``, a pandas
    DataFrame, a list of dicts, a dict of lists or a .jsonl/.csv/.tsv file; `dev`, `test` and
    `unlabeled` (the pool of self-training stages) likewise; a ``Dataset`` whose label column is a
    ``ClassLabel`` names the classes (``data.label_names``, unless the recipe sets them). The field
    names come from the recipe's data section, or `text_field`/`text_pair_field`/`label_field`.
    Extra keyword arguments go to the recipe's train section (``learning_rate=3e-5``, ``epochs=5``).
    With `out` the run folder (result.json, metrics.jsonl, model/) is kept there; without, it lives
    in a temp folder that is removed once the model is loaded.
    """
    from .inputs import class_label_names, dataset_dict_splits, task_folder
    from .run import run_recipe

    fields = {k: v for k, v in (("text_field", text_field), ("text_pair_field", text_pair_field),
                                ("label_field", label_field)) if v is not None}
    chosen = _as_recipe(recipe, train=train_args, data=fields)
    if train is None:
        raise PlmtuneError("train= is required: a task folder, a DatasetDict, or the train rows.")
    splits = dataset_dict_splits(train)
    if splits is not None:
        if any(x is not None for x in (dev, test, unlabeled)):
            raise PlmtuneError("train= is a DatasetDict holding every split; do not also pass dev=, test= or unlabeled=.")
        train, dev, test, unlabeled = (splits.get(k) for k in ("train", "dev", "test", "unlabeled"))
    names = class_label_names({"train": train, "dev": dev, "test": test}, chosen.data.label_field)
    if names is not None and chosen.data.label_names is None:  # a Dataset's ClassLabel: its ids, named
        chosen = _as_recipe(chosen, data={"label_names": names})
    scratch = Path(tempfile.mkdtemp(prefix="plmtune-train-"))
    try:
        if isinstance(train, (str, Path)) and Path(train).is_dir():
            if any(x is not None for x in (dev, test, unlabeled)):
                raise PlmtuneError(f"train= is the task folder {train}, which holds its own splits; do not also "
                                   "pass dev=, test= or unlabeled=.")
            task_dir = Path(train)
        else:
            task_dir = task_folder(scratch / "data", train, dev, test, unlabeled)
        run_dir = Path(out) if out is not None else scratch / "run"
        try:
            result = run_recipe(chosen, task_dir, run_dir, seed=seed, progress=progress, save_model=True,
                                overwrite=overwrite)
        except DataError as err:  # name the rows as the caller passed them, not the temp file they went into
            if not Path(str(err.path)).is_relative_to(scratch):
                raise
            split = Path(str(err.path)).stem
            given = {"train": train, "dev": dev, "test": test, "unlabeled": unlabeled}.get(split)
            where = given if isinstance(given, (str, Path)) else f"{split}= (line = row number, from 1)"
            raise DataError(where, err.detail, err.line, err.field) from None
        model = load(run_dir / "model")
        log = run_dir / "metrics.jsonl"
        history = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.is_file() else []
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return TrainedModel(model, result, history, Path(out) if out is not None else None)
