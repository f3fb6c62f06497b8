"""Recipe files: find a recipe, read its YAML, resolve ``extends`` and apply ``--set`` overrides.

No validation happens here (see :mod:`plmtune.loading`): these functions work on plain
mappings, so that any layer may read a shipped recipe without the registries.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from .config import RECIPES_DIR, Recipe
from .errors import RecipeError, suggest
from .safe_yaml import YamlProblem, load_yaml


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
