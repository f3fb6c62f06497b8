"""Loading a recipe: read -> ``extends`` -> overrides -> dataclasses -> techniques and stages resolved.

Loading goes: read YAML -> resolve ``extends`` (deep merge; lists are replaced, not merged)
-> apply ``--set a.b=c`` overrides (``~a.b`` deletes) -> build frozen dataclasses, where an
unknown key fails with the nearest valid name and an out-of-range value with its range and
path -> resolve each technique through the technique registry and each stage section through
the stage registry -> cross-technique checks. :func:`check_requirements` (``plmtune
validate``) also checks that the techniques' optional dependencies import.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import SECTIONS, Recipe, StageSpec, TechniqueSpec, TrainConfig
from .errors import RecipeError, suggest
from .recipe_io import TRAIN_ALIASES, apply_override, canonical_train_keys, read_raw_recipe
from .stages import registry as stage_registry
from .technique import EXCLUSIVE_HOOKS
from .techniques import registry as technique_registry
from .validate import build_dataclass

BASE_KEYS = ("name", "description", "extends", "model", "data", "train", "techniques")

# Where the pip package that provides a module is named differently from it.
PIP_NAMES = {"sklearn": "scikit-learn", "yaml": "pyyaml"}


def top_keys() -> tuple[str, ...]:
    """The keys a recipe may have at the top level: the sections, then one per registered stage."""
    return (*BASE_KEYS, *(name for name, stage in stage_registry().items() if stage.config_class is not None))


def resolve_technique(entry: Any, where: str) -> TechniqueSpec:
    """Turn a recipe entry such as {name: llrd, decay: 0.8} into a validated spec."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or "name" not in entry:
        raise RecipeError(f"{where} must be a mapping with a 'name' key, got {entry!r}.")
    name = entry["name"]
    if not isinstance(name, str):
        raise RecipeError(f"{where}.name must be a technique name (a string), got {name!r}.")
    known = technique_registry()
    if name not in known:
        raise RecipeError(f"{where}: unknown technique '{name}'.{suggest(str(name), known)}")
    config = build_dataclass(known[name].config_class, entry, f"{where}({name})", skip=("name",))
    return TechniqueSpec(name=name, config=config)


def check_composition(recipe: Recipe) -> None:
    """Reject technique combinations that cannot work together, with the reason."""
    known = technique_registry()
    names = [spec.name for spec in recipe.techniques]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RecipeError(f"Technique(s) listed twice: {', '.join(duplicates)}. List each once.")
    for hook in EXCLUSIVE_HOOKS:
        providers = [n for n in names if hook in known[n].overridden_hooks()]
        if len(providers) > 1:
            raise RecipeError(
                f"Techniques {', '.join(providers)} all build optimiser parameter groups ({hook}); "
                "a recipe may use only one of them."
            )
    for name in names:
        for other, reason in known[name].conflicts_with.items():
            if other in names:
                raise RecipeError(f"Technique '{name}' cannot be combined with '{other}': {reason}")


def check_requirements(recipe: Recipe) -> None:
    """Raise RecipeError where a technique's optional dependency (its `requires`), or the package of an
    experiment tracker in ``train.report_to``, is not installed."""
    from .rundir import check_tracker_packages

    known = technique_registry()
    for i, spec in enumerate(recipe.techniques):
        for module in known[spec.name].requires:
            if importlib.util.find_spec(module) is None:
                package = PIP_NAMES.get(module, module)
                raise RecipeError(f"techniques[{i}]: technique '{spec.name}' needs the Python package "
                                  f"'{package}' (module '{module}'), which is not installed. Install it with "
                                  f"'pip install {package}', or remove '{spec.name}' from the recipe.")
    check_tracker_packages(recipe.train.report_to)
    check_architecture(recipe)


def check_architecture(recipe: Recipe) -> None:
    """Raise RecipeError where a technique cannot work on the backbone's architecture (its check_backbone),
    judged on a weightless skeleton built from the backbone's config.json: nothing loads. A hub name (no
    local config offline) or an unreadable folder is left to the load, which reports it."""
    from .technique import Technique

    known = technique_registry()
    checking = [(i, known[spec.name](spec.config)) for i, spec in enumerate(recipe.techniques)
                if known[spec.name].check_backbone is not Technique.check_backbone]
    skeleton = backbone_skeleton(recipe.model.backbone) if checking else None
    for i, technique in checking if skeleton is not None else ():
        try:
            technique.check_backbone(skeleton)
        except RecipeError as err:
            raise RecipeError(f"techniques[{i}] on backbone '{recipe.model.backbone}': {err}") from None


def backbone_skeleton(name: str) -> Any:
    """The backbone's encoder built from its config.json on the meta device (no weights), or None."""
    import torch
    from transformers import AutoConfig, AutoModel

    from .errors import PlmtuneError
    from .models import resolve_backbone

    try:
        folder = Path(resolve_backbone(name))
    except PlmtuneError:
        return None  # a bad path or a missing package: the load says so in its own words
    if not (folder / "config.json").is_file():
        return None
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        with torch.device("meta"):
            return AutoModel.from_config(config)
    except Exception:  # noqa: BLE001  (an unloadable config: load_backbone names the fault)
        return None


def _stages(raw: dict[str, Any]) -> tuple[StageSpec, ...]:
    known = stage_registry()
    specs = [StageSpec(name, build_dataclass(stage.config_class, raw[name], name))
             for name, stage in known.items() if stage.config_class is not None and raw.get(name) is not None]
    training = [s.name for s in specs if known[s.name].kind == "train"]
    if len(training) > 1:
        raise RecipeError(f"A recipe runs at most one stage; it sets {' and '.join(training)}.")
    # the training stage first, then what runs before it (the order result.json's recipe has)
    return tuple(sorted(specs, key=lambda s: known[s.name].kind != "train"))


def _train_section(section: Any) -> Any:
    """The train section with aliases renamed; a typo near an alias is pointed at it."""
    section = canonical_train_keys(section)
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    for key in section if isinstance(section, dict) else ():
        if key not in names:
            raise RecipeError(f"Unknown key {f'train.{key}'!r}.{suggest(str(key), names, TRAIN_ALIASES)}")
    return section


def build_recipe(raw: dict[str, Any]) -> Recipe:
    """Turn a merged, override-applied mapping into a validated :class:`Recipe`.

    The train section may use Hugging Face TrainingArguments names (``learning_rate``,
    ``num_train_epochs``, ...: :data:`plmtune.recipe_io.TRAIN_ALIASES`) for plmtune's keys.
    """
    if not isinstance(raw, dict):
        raise RecipeError(f"A recipe must be a mapping at the top level, got {type(raw).__name__}.")
    allowed = top_keys()
    for key in raw:
        if key not in allowed:
            raise RecipeError(f"Unknown top-level key {str(key)!r}.{suggest(str(key), allowed)}")
    if "train" in raw:  # Hugging Face names (learning_rate, ...) become plmtune's; the caller's dict is kept
        raw = {**raw, "train": _train_section(raw["train"])}
    sections = {name: build_dataclass(cls, raw.get(name), name) for name, cls in SECTIONS.items()}
    entries = raw.get("techniques") or []
    if not isinstance(entries, list):
        raise RecipeError("techniques must be a list of {name: ..., <options>} mappings.")
    specs = tuple(resolve_technique(entry, f"techniques[{i}]") for i, entry in enumerate(entries))
    recipe = Recipe(
        name=str(raw.get("name", "recipe")),
        description=str(raw.get("description", "")),
        techniques=specs,
        stages=_stages(raw),
        **sections,
    )
    check_composition(recipe)
    return recipe


def load_recipe(name_or_path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Load, merge, override and validate a recipe.

    Example:
        >>> recipe = load_recipe("llrd", ["train.lr=3e-5", "techniques.0.decay=0.8"])
    """
    raw = read_raw_recipe(name_or_path)
    for override in overrides:
        apply_override(raw, override)
    return build_recipe(raw)
