"""Recipe files: find a recipe, read its YAML, resolve ``extends`` and apply ``--set`` overrides.

No validation happens here (see :mod:`plmtune.loading`): these functions work on plain
mappings, so that any layer may read a shipped recipe without the registries. The one
translation done here renames Hugging Face ``TrainingArguments`` names in a ``train:``
section to plmtune's keys (:data:`TRAIN_ALIASES`), in each file and override on its own, so
that a child's ``learning_rate`` replaces its parent's ``lr``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from .config import RECIPES_DIR, Recipe
from .errors import RecipeError, suggest
from .safe_yaml import YamlProblem, load_yaml


# Hugging Face TrainingArguments names accepted in a recipe's train section, renamed to plmtune's
# key before validation (so `plmtune show` and result.json name plmtune's key). Only names that
# mean the same are mapped. Names the two share need no alias: bf16, weight_decay, warmup_ratio,
# max_steps (but HF's "off" is -1, plmtune's is 0) and seed.
TRAIN_ALIASES = {
    "learning_rate": "lr",  # the peak AdamW LR after warm-up, then linear decay to 0 (HF's default schedule)
    "num_train_epochs": "epochs",  # ignored where max_steps > 0 in both; plmtune takes whole epochs only
    "per_device_train_batch_size": "batch_size",  # plmtune's batch_size is per process too (under torchrun)
    "per_device_eval_batch_size": "eval_batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "max_grad_norm": "grad_clip",  # HF clips only where max_grad_norm > 0: 0 turns clipping off in both
    "metric_for_best_model": "select_metric",  # plmtune's metric names (accuracy, macro_f1, mcc), no 'eval_'
    "save_steps": "checkpoint_every",  # whole steps only (HF reads a float below 1 as a share of all steps)
}


def canonical_train_keys(section: Any, where: str = "train") -> Any:
    """A copy of a train section with Hugging Face names (:data:`TRAIN_ALIASES`) renamed to plmtune's.

    Giving a name and its alias in one mapping is an error naming both; anything that is not a
    mapping is returned as it is (validation reports it).
    """
    if not isinstance(section, dict):
        return section
    for key in section:
        canonical = TRAIN_ALIASES.get(key)
        if canonical is not None and canonical in section:
            raise RecipeError(f"{where} sets both '{key}' (the Hugging Face name of '{canonical}') and "
                              f"'{canonical}'; keep one of them.")
    return {TRAIN_ALIASES.get(key, key): value for key, value in section.items()}


def _deep_merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def find_recipe(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """A recipe path, or the name of a shipped recipe ('baseline', 'llrd', ...)."""
    candidates = [Path(name_or_path)]
    if relative_to is not None:
        candidates.insert(0, relative_to / str(name_or_path))
    stem = Path(str(name_or_path)).name.removesuffix(".yaml").removesuffix(".yml")
    candidates.append(RECIPES_DIR / f"{stem}.yaml")
    for path in candidates:
        if path.is_file():
            return path
    shipped = [p.stem for p in RECIPES_DIR.glob("*.yaml")]
    raise RecipeError(f"Recipe '{name_or_path}' is neither a file nor a shipped recipe.{suggest(stem, shipped)}")


def read_raw_recipe(name_or_path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe file and resolve its `extends` chain (no validation yet)."""
    path = find_recipe(name_or_path, _seen[-1].parent if _seen else None).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise RecipeError(f"Recipe extends itself in a loop: {chain}.")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8")) or {}
    except YamlProblem as err:
        raise RecipeError(f"Recipe {path} is not valid YAML: {err.problem}{err.where}.") from None
    except UnicodeDecodeError as err:
        raise RecipeError(f"Recipe {path} is not UTF-8 text: {err}") from err
    if not isinstance(raw, dict):
        raise RecipeError(f"Recipe {path} must be a YAML mapping at the top level.")
    if "train" in raw:
        raw["train"] = canonical_train_keys(raw["train"], f"Recipe {path}: train")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str) or not parent.strip():
        raise RecipeError(f"Recipe {path}: 'extends' must name one recipe (a shipped name such as 'baseline', "
                          f"or a path), got {parent!r}.")
    return _deep_merge(read_raw_recipe(parent, (*_seen, path)), raw)


def apply_override(raw: dict[str, Any], override: str) -> dict[str, Any]:
    """Apply one `a.b=c` (value parsed as YAML) or `~a.b` (delete) override in place."""
    delete = override.startswith("~")
    if delete:
        dotted, value = override[1:], None
    else:
        if "=" not in override:
            raise RecipeError(f"Override '{override}' must look like key.sub=value or ~key.sub.")
        dotted, text = override.split("=", 1)
        try:
            value = load_yaml(text) if text.strip() else ""
        except YamlProblem as err:
            raise RecipeError(f"Override '{override}': the value is not valid YAML ({err.problem}).") from None
    keys = dotted.strip().split(".")
    if not all(keys):
        raise RecipeError(f"Override '{override}' has an empty key.")
    if keys[0] == "train" and len(keys) > 1:  # train.learning_rate sets (or deletes) train.lr
        keys[1] = TRAIN_ALIASES.get(keys[1], keys[1])
    if keys[0] == "extends":
        # extends is resolved when the file is read, before any override; accepting it here would
        # silently do nothing.
        raise RecipeError(f"Override '{override}': 'extends' cannot be set with --set (it is resolved when the "
                          "recipe file is read). Write a recipe file with 'extends:' instead, or run the other "
                          "recipe with your overrides.")
    node: Any = raw
    for i, key in enumerate(keys[:-1]):
        node = _child(node, key, override, create=not delete)
    last = keys[-1]
    if not isinstance(node, (dict, list)):
        raise RecipeError(f"Override '{override}': '{keys[-2]}' holds a single value ({node!r}), "
                          f"so it has no key '{last}'.")
    if isinstance(node, list):
        index = _index(node, last, override)
        if delete:
            node.pop(index)
        else:
            node[index] = value
    elif delete:
        node.pop(last, None)
    else:
        node[last] = value
    return raw


def _index(node: list, key: str, override: str) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise RecipeError(f"Override '{override}': '{key}' is not an index of a list of {len(node)}.")
    return int(key)


def _child(node: Any, key: str, override: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, key, override)]
    if not isinstance(node, dict):
        raise RecipeError(f"Override '{override}': '{key}' is below a value that is not a mapping.")
    if key not in node or node[key] is None:
        if not create:
            return {}
        node[key] = {}
    return node[key]


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
