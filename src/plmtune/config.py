"""Recipe dataclasses: what to train and how (loading and checking live in :mod:`plmtune.loading`).

A recipe has four sections, a technique list and at most one training stage (plus, optionally,
further pre-training before it)::

    name: llrd
    extends: baseline          # a shipped recipe name or a path relative to this file
    model: {backbone: minilm, pooling: cls}
    data: {max_length: 128}
    train: {lr: 5.0e-5, epochs: 20}
    techniques:
      - {name: llrd, decay: 0.9}

Range limits and choices are declared once, on the field (:func:`plmtune.validate.bounded`);
a message names the value by its path in the recipe. The optimiser knobs that training and
further pre-training share (:data:`LR`, :data:`WEIGHT_DECAY`, ...) are declared here once.
Stage configurations (``self_training:``, ``pretrain:``, ...) live in their stage modules
(:mod:`plmtune.stages`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RecipeError
from .models import POOLINGS
from .validate import bounded, check_choice, check_declared, check_range, one_of

__all__ = ["METRICS", "RECIPES_DIR", "DataConfig", "ModelConfig", "Recipe", "StageSpec", "TechniqueSpec",
           "TrainConfig", "check_choice", "check_range"]

RECIPES_DIR = Path(__file__).parent / "recipes"

METRICS = ("accuracy", "macro_f1", "mcc")


# Knobs shared by every optimiser plmtune builds (fine-tuning and further pre-training): the
# same meaning and the same limits; only the defaults differ.
def LR(default: float) -> Any:  # noqa: N802  (a field declaration, read like a type)
    return bounded(default, 0.0, 1.0, lo_open=True)


def WEIGHT_DECAY(default: float) -> Any:  # noqa: N802
    return bounded(default, 0.0, 1.0)


def WARMUP_RATIO(default: float) -> Any:  # noqa: N802
    return bounded(default, 0.0, 1.0, hi_open=True)


def BATCH_SIZE(default: int) -> Any:  # noqa: N802
    return bounded(default, 1, 65_536)


def MAX_STEPS(default: int, lo: int = 0) -> Any:  # noqa: N802
    return bounded(default, lo, 10_000_000)


def MAX_LENGTH(default: int) -> Any:  # noqa: N802
    return bounded(default, 8, 4096)


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
    pooling: str = one_of("mean", POOLINGS)
    pooling_layers: int = bounded(0, 0, 1000)
    dropout: float = bounded(0.1, 0.0, 1.0, hi_open=True)
    encoder_dropout: float | None = bounded(None, 0.0, 1.0, hi_open=True)

    def __post_init__(self) -> None:
        check_declared(self, "model")


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
    max_length: int = MAX_LENGTH(128)
    truncation: str = one_of("head", ("head", "tail", "head_tail"))
    head_tokens: int = 0

    def __post_init__(self) -> None:
        check_declared(self, "data")
        check_range("data.head_tokens", self.head_tokens, 0, self.max_length - 3)  # depends on max_length
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
    report_to: experiment trackers that get every step's and evaluation's metrics, through
        Accelerate (tensorboard, wandb, mlflow, comet_ml, aim, clearml, dvclive, ...; 'all' = every
        one installed); tensorboard writes to OUT/tracking/plmtune/. Empty: metrics.jsonl only.
    """

    epochs: int = bounded(20, 1, 100_000)
    max_steps: int = MAX_STEPS(0)
    batch_size: int = BATCH_SIZE(8)
    eval_batch_size: int = BATCH_SIZE(64)
    lr: float = LR(5e-5)
    weight_decay: float = WEIGHT_DECAY(0.01)
    warmup_ratio: float = WARMUP_RATIO(0.1)
    grad_clip: float = bounded(1.0, 0.0, None)
    grad_accum: int = bounded(1, 1, 4096)
    bf16: bool = False
    fused: bool = True
    eval_every: int = bounded(1, 1, 100_000)
    early_stopping_patience: int = bounded(0, 0, 100_000)
    select_metric: str = one_of("accuracy", METRICS)
    seed: int = bounded(42, 0, 2**32 - 1)
    checkpoint_every: int = MAX_STEPS(0)
    report_to: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_declared(self, "train")
        from .rundir import check_trackers
        object.__setattr__(self, "report_to", check_trackers(self.report_to))  # a tuple of names Accelerate knows


@dataclass(frozen=True)
class TechniqueSpec:
    """One entry of a recipe's technique list, resolved through the registry."""

    name: str
    config: Any

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self.config)}


@dataclass(frozen=True)
class StageSpec:
    """A recipe's stage section (``self_training:``, ``pretrain:``, ...), resolved through the stage registry."""

    name: str
    config: Any


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. `stages` holds the training stage (at most one) before further pre-training."""

    name: str = "recipe"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    techniques: tuple[TechniqueSpec, ...] = ()
    stages: tuple[StageSpec, ...] = ()

    def stage(self, name: str) -> Any:
        """The configuration of the recipe's stage `name`, or None where the recipe has none."""
        return next((s.config for s in self.stages if s.name == name), None)

    def without_stage(self, name: str) -> Recipe:
        return dataclasses.replace(self, stages=tuple(s for s in self.stages if s.name != name))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "model": dataclasses.asdict(self.model),
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
            "techniques": [t.to_dict() for t in self.techniques],
            **{s.name: dataclasses.asdict(s.config) for s in self.stages},
        }


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
