"""Recipes: YAML files that say what to train and how, checked before any model loads.

A recipe has four sections and a technique list::

    name: llrd
    extends: baseline          # a shipped recipe name or a path relative to this file
    model: {backbone: minilm, pooling: cls}
    data: {max_length: 128}
    train: {lr: 5.0e-5, epochs: 20}
    techniques:
      - {name: llrd, decay: 0.9}

Loading goes: read YAML -> resolve ``extends`` (deep merge; lists are replaced, not merged)
-> apply ``--set a.b=c`` overrides (``~a.b`` deletes) -> build frozen dataclasses, where an
unknown key fails with the nearest valid name and an out-of-range value with its range ->
resolve each technique through the registry -> cross-technique checks.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import RecipeError, suggest

RECIPES_DIR = Path(__file__).parent / "recipes"

METRICS = ("accuracy", "macro_f1", "mcc")


def check_range(where: str, value: float, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """Raise RecipeError unless lo <= value <= hi (or strict where *_open)."""
    ok = True
    if lo is not None:
        ok &= value > lo if lo_open else value >= lo
    if hi is not None:
        ok &= value < hi if hi_open else value <= hi
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise RecipeError(f"{where} = {value!r} is out of range; allowed: {left}{lo_s}, {hi_s}{right}.")


def check_choice(where: str, value: str, choices: typing.Iterable[str]) -> None:
    if value not in choices:
        raise RecipeError(f"{where} = {value!r} is not allowed.{suggest(str(value), choices)}")


@dataclass(frozen=True)
class ModelConfig:
    """Args:
    backbone: 'minilm' (the bundled all-MiniLM-L6-v2), a local model directory, or a hub name.
    pooling: how the head pools the encoder output: 'cls', 'mean', 'concat_cls' (the [CLS]
        states of the top `pooling_layers` layers, concatenated) or 'cnn' (a convolution across
        the per-layer [CLS] states).
    pooling_layers: layers used by 'concat_cls' and 'cnn'; 0 = all.
    dropout: dropout before the classifier layer.
    encoder_dropout: dropout inside the encoder (hidden and attention); unset keeps the backbone's.
    """

    backbone: str = "minilm"
    pooling: str = "mean"
    pooling_layers: int = 0
    dropout: float = 0.1
    encoder_dropout: float | None = None

    def __post_init__(self) -> None:
        check_range("model.dropout", self.dropout, 0.0, 1.0, hi_open=True)
        if self.encoder_dropout is not None:
            check_range("model.encoder_dropout", self.encoder_dropout, 0.0, 1.0, hi_open=True)
        check_range("model.pooling_layers", self.pooling_layers, 0, 1000)
        from .models import POOLINGS

        check_choice("model.pooling", self.pooling, POOLINGS)


@dataclass(frozen=True)
class DataConfig:
    """Args:
    text_field / text_pair_field / label_field: field (column) names in the data files.
    label_names: names of the classes in id order; needed only where labels are names and a
        fixed order matters (otherwise names are sorted).
    max_length: tokens per example after truncation.
    truncation: which tokens of a long single text survive: 'head' (the first), 'tail' (the
        last), or 'head_tail' (the first `head_tokens` and the rest from the end; Sun et al.
        2019 found head+tail best for long reviews). Pair tasks use 'head' only.
    head_tokens: tokens kept from the start with 'head_tail'; 0 = a quarter of the budget.
    """

    text_field: str = "text"
    text_pair_field: str = "text_pair"
    label_field: str = "label"
    label_names: list[str] | None = None
    max_length: int = 128
    truncation: str = "head"
    head_tokens: int = 0

    def __post_init__(self) -> None:
        check_range("data.max_length", self.max_length, 8, 4096)
        check_choice("data.truncation", self.truncation, ("head", "tail", "head_tail"))
        check_range("data.head_tokens", self.head_tokens, 0, self.max_length - 3)
        if self.label_names is not None and len(set(self.label_names)) != len(self.label_names):
            raise RecipeError(f"data.label_names has duplicates: {self.label_names}.")


@dataclass(frozen=True)
class TrainConfig:
    """Args:
    epochs: passes over the training split (ignored where max_steps > 0).
    max_steps: optimiser steps in all; 0 lets epochs decide.
    batch_size / eval_batch_size: examples per batch for training / evaluation.
    lr: peak learning rate (AdamW) after warm-up; decays linearly to 0.
    weight_decay: AdamW decoupled weight decay, not applied to biases and LayerNorm weights.
    warmup_ratio: share of all steps spent warming up linearly from 0.
    grad_clip: max global gradient norm; 0 turns clipping off.
    grad_accum: micro-batches per optimiser step.
    bf16: bf16 autocast (much faster on CPUs with AMX and on recent GPUs).
    fused: fused AdamW kernel where the torch build has one (about 4x faster optimiser step).
    eval_every: evaluate on dev every this many epochs.
    early_stopping_patience: stop after this many evaluations without dev improvement; 0 = off.
    select_metric: the dev metric that picks the checkpoint restored before test.
    seed: seeds Python, numpy, torch and the data order.
    checkpoint_every: write a resumable checkpoint every this many steps (0 = never); `plmtune
        run --resume` continues from it after a crash.
    """

    epochs: int = 20
    max_steps: int = 0
    batch_size: int = 8
    eval_batch_size: int = 64
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1
    bf16: bool = False
    fused: bool = True
    eval_every: int = 1
    early_stopping_patience: int = 0
    select_metric: str = "accuracy"
    seed: int = 42
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        check_range("train.checkpoint_every", self.checkpoint_every, 0, 10_000_000)
        check_range("train.epochs", self.epochs, 1, 100_000)
        check_range("train.max_steps", self.max_steps, 0, 10_000_000)
        check_range("train.batch_size", self.batch_size, 1, 65_536)
        check_range("train.eval_batch_size", self.eval_batch_size, 1, 65_536)
        check_range("train.lr", self.lr, 0.0, 1.0, lo_open=True)
        check_range("train.weight_decay", self.weight_decay, 0.0, 1.0)
        check_range("train.warmup_ratio", self.warmup_ratio, 0.0, 1.0, hi_open=True)
        check_range("train.grad_clip", self.grad_clip, 0.0, None)
        check_range("train.grad_accum", self.grad_accum, 1, 4096)
        check_range("train.eval_every", self.eval_every, 1, 100_000)
        check_range("train.early_stopping_patience", self.early_stopping_patience, 0, 100_000)
        check_range("train.seed", self.seed, 0, 2**32 - 1)
        check_choice("train.select_metric", self.select_metric, METRICS)


@dataclass(frozen=True)
class SelfTrainingConfig:
    """LiST's self-training stage (plmtune.selftrain): teacher -> pseudo-labels -> student.

    Args:
    iterations: teacher -> student rounds (the LiST paper uses 5; the `list_cpu` recipe 2).
    unlabeled_cap: at most this many rows of ``unlabeled.jsonl`` (a seeded sample) are labelled.
    student_steps: optimiser steps a student trains on pseudo-labelled data.
    batch_size / labelled_batch_size: pseudo-labelled batch; labelled batch of the meta step.
    kd_warmup: share of the student's steps spent on the teacher's soft labels with equal
        weights (knowledge-distillation warm-up) before re-weighting starts.
    reweight: meta re-weighting of pseudo-labels (off: equal weights on hard pseudo-labels).
    virtual_lr: step size of the virtual SGD step (cancels in the normalisation; see reweight.py).
    finish_on_labelled: after the pseudo-labelled session, the student also fine-tunes on the
        labelled split (with dev selection) before it becomes the next teacher.
    select: which iteration's model is the result: 'last' (the final student, as in the paper)
        or 'best_dev' (the best on the few-shot dev split; 2K examples make that choice noisy).
    """

    iterations: int = 5
    unlabeled_cap: int = 2048
    student_steps: int = 300
    batch_size: int = 16
    labelled_batch_size: int = 8
    kd_warmup: float = 0.3
    reweight: bool = True
    virtual_lr: float = 1e-3
    finish_on_labelled: bool = True
    select: str = "last"

    def __post_init__(self) -> None:
        check_choice("self_training.select", self.select, ("last", "best_dev"))
        check_range("self_training.iterations", self.iterations, 1, 1000)
        check_range("self_training.unlabeled_cap", self.unlabeled_cap, 1, 100_000_000)
        check_range("self_training.student_steps", self.student_steps, 1, 10_000_000)
        check_range("self_training.batch_size", self.batch_size, 1, 65_536)
        check_range("self_training.labelled_batch_size", self.labelled_batch_size, 1, 65_536)
        check_range("self_training.kd_warmup", self.kd_warmup, 0.0, 1.0)
        check_range("self_training.virtual_lr", self.virtual_lr, 0.0, None, lo_open=True)


@dataclass(frozen=True)
class SelfDistillationConfig:
    """Self-knowledge distillation (plmtune.selftrain): fine-tune, then fine-tune a fresh model
    on the first one's soft labels mixed with the hard labels.

    Args:
    temperature: softens teacher and student distributions (the soft loss is scaled by T²).
    alpha: weight of the hard-label loss; the soft-label loss gets 1 - alpha.
    rounds: how many times the student becomes the next teacher.
    """

    temperature: float = 2.0
    alpha: float = 0.5
    rounds: int = 1

    def __post_init__(self) -> None:
        check_range("self_distillation.temperature", self.temperature, 0.0, 100.0, lo_open=True)
        check_range("self_distillation.alpha", self.alpha, 0.0, 1.0)
        check_range("self_distillation.rounds", self.rounds, 1, 100)


@dataclass(frozen=True)
class PretrainConfig:
    """Further pre-training before fine-tuning (plmtune.pretrain): masked-LM on task or domain text.

    Args:
    corpus: empty = the task folder's own text (TAPT: train + unlabeled.jsonl, never dev/test);
        or a .txt file (one text per line) or .jsonl file (a text field) of domain text (DAPT).
    masking: 'dynamic' (a new mask each time a text is seen), 'static' (`copies` fixed masks per
        text, made once) or 'selective' (mask the tokens a task model finds important).
    rate / split: share of tokens masked; their [MASK] / random-token / unchanged split.
    copies: fixed masked copies per text for 'static'.
    max_steps / batch_size / lr / warmup_ratio / weight_decay / max_length: the MLM training.
    max_texts: at most this many corpus texts (a seeded sample).
    heldout: share of texts held out (at most 1,000) for the stop rule.
    eval_every / patience: evaluate the held-out MLM loss every this many steps; stop after
        `patience` evaluations without improvement (0 = never stop early); the best is kept.
    important_share: 'selective' only; share of each labelled text's tokens labelled important.
    """

    corpus: str = ""
    masking: str = "dynamic"
    rate: float = 0.15
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    copies: int = 10
    max_steps: int = 500
    batch_size: int = 32
    lr: float = 1e-4
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_length: int = 128
    max_texts: int = 20000
    heldout: float = 0.05
    eval_every: int = 50
    patience: int = 3
    important_share: float = 0.2

    def __post_init__(self) -> None:
        check_choice("pretrain.masking", self.masking, ("dynamic", "static", "selective"))
        check_range("pretrain.rate", self.rate, 0.0, 1.0, lo_open=True, hi_open=True)
        if len(self.split) != 3 or any(x < 0 for x in self.split) or abs(sum(self.split) - 1) > 1e-6:
            raise ValueError(f"pretrain.split must be three non-negative shares summing to 1, got {self.split}")
        check_range("pretrain.copies", self.copies, 1, 1000)
        check_range("pretrain.max_steps", self.max_steps, 1, 10_000_000)
        check_range("pretrain.batch_size", self.batch_size, 1, 65_536)
        check_range("pretrain.lr", self.lr, 0.0, 1.0, lo_open=True)
        check_range("pretrain.warmup_ratio", self.warmup_ratio, 0.0, 1.0, hi_open=True)
        check_range("pretrain.weight_decay", self.weight_decay, 0.0, 1.0)
        check_range("pretrain.max_length", self.max_length, 8, 4096)
        check_range("pretrain.max_texts", self.max_texts, 2, 100_000_000)
        check_range("pretrain.heldout", self.heldout, 0.0, 0.5, lo_open=True)
        check_range("pretrain.eval_every", self.eval_every, 1, 10_000_000)
        check_range("pretrain.patience", self.patience, 0, 100_000)
        check_range("pretrain.important_share", self.important_share, 0.0, 1.0, lo_open=True)


@dataclass(frozen=True)
class TechniqueSpec:
    """One entry of a recipe's technique list, resolved through the registry."""

    name: str
    config: Any

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self.config)}


@dataclass(frozen=True)
class Recipe:
    name: str = "recipe"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    techniques: tuple[TechniqueSpec, ...] = ()
    self_training: SelfTrainingConfig | None = None
    self_distillation: SelfDistillationConfig | None = None
    pretrain: PretrainConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        stages = {name: dataclasses.asdict(getattr(self, name)) for name in (*STAGES, "pretrain")
                  if getattr(self, name)}
        return {
            "name": self.name,
            "description": self.description,
            "model": dataclasses.asdict(self.model),
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
            "techniques": [t.to_dict() for t in self.techniques],
            **stages,
        }


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
# Optional stages that run around fine-tuning (plmtune.selftrain); a recipe has at most one.
STAGES: dict[str, type] = {"self_training": SelfTrainingConfig, "self_distillation": SelfDistillationConfig}
TOP_KEYS = ("name", "description", "extends", "model", "data", "train", "techniques", *STAGES, "pretrain")


# --------------------------------------------------------------------------- building


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a simple annotation (int, float, bool, str, list[str], X | None)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except RecipeError as err:
                errors.append(err)
        raise errors[0]
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where} must be a list, got {value!r}.")
        (item,) = typing.get_args(hint)[:1]
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where} must be true or false, got {value!r}.")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where} must be an integer, got {value!r}.")
        return value
    if hint is float:
        if isinstance(value, str):
            # YAML 1.1 reads '1e-4' (no dot) as a string; accept it as the number it means.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where} must be a number, got {value!r}.")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where} must be a string, got {value!r}.")
        return value
    if hint is typing.Any:
        return value
    raise TypeError(f"unsupported annotation {_type_name(hint)} for {where}")


def build_dataclass(cls: type, raw: Any, where: str, skip: tuple[str, ...] = ()) -> Any:
    """Build `cls` from a mapping, rejecting unknown keys with the nearest valid name."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{where} must be a mapping of keys to values, got {raw!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key in skip:
            continue
        if key not in names:
            raise RecipeError(f"Unknown key '{where}.{key}'.{suggest(str(key), names)}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except RecipeError:
        raise
    except (TypeError, ValueError) as err:
        raise RecipeError(f"{where}: {err}") from err


def build_recipe(raw: dict[str, Any]) -> Recipe:
    """Turn a merged, override-applied mapping into a validated :class:`Recipe`."""
    from .technique import check_composition, resolve_technique

    if not isinstance(raw, dict):
        raise RecipeError(f"A recipe must be a mapping at the top level, got {type(raw).__name__}.")
    for key in raw:
        if key not in TOP_KEYS:
            raise RecipeError(f"Unknown top-level key '{key}'.{suggest(str(key), TOP_KEYS)}")
    sections = {name: build_dataclass(cls, raw.get(name), name) for name, cls in SECTIONS.items()}
    entries = raw.get("techniques") or []
    if not isinstance(entries, list):
        raise RecipeError("techniques must be a list of {name: ..., <options>} mappings.")
    specs = tuple(resolve_technique(entry, f"techniques[{i}]") for i, entry in enumerate(entries))
    stages = {name: build_dataclass(cls, raw[name], name) for name, cls in STAGES.items()
              if raw.get(name) is not None}
    if len(stages) > 1:
        raise RecipeError(f"A recipe runs at most one stage; it sets {' and '.join(stages)}.")
    if raw.get("pretrain") is not None:  # runs before any stage or fine-tuning
        stages["pretrain"] = build_dataclass(PretrainConfig, raw["pretrain"], "pretrain")
    recipe = Recipe(
        name=str(raw.get("name", "recipe")),
        description=str(raw.get("description", "")),
        techniques=specs,
        **sections,
        **stages,
    )
    check_composition(recipe)
    return recipe


# --------------------------------------------------------------------------- loading


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
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"Recipe {path} is not valid YAML: {problem}{where}.") from err
    except UnicodeDecodeError as err:
        raise RecipeError(f"Recipe {path} is not UTF-8 text: {err}") from err
    if not isinstance(raw, dict):
        raise RecipeError(f"Recipe {path} must be a YAML mapping at the top level.")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
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
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise RecipeError(f"Override '{override}': the value is not valid YAML ({problem}).") from err
    keys = dotted.strip().split(".")
    if not all(keys):
        raise RecipeError(f"Override '{override}' has an empty key.")
    node: Any = raw
    for i, key in enumerate(keys[:-1]):
        node = _child(node, key, override, create=not delete)
    last = keys[-1]
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


def load_recipe(name_or_path: str | Path, overrides: typing.Sequence[str] = ()) -> Recipe:
    """Load, merge, override and validate a recipe.

    Example:
        >>> recipe = load_recipe("llrd", ["train.lr=3e-5", "techniques.0.decay=0.8"])
    """
    raw = read_raw_recipe(name_or_path)
    for override in overrides:
        apply_override(raw, override)
    return build_recipe(raw)


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
