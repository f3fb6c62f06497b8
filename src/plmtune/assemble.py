"""The assembler: everything a fit needs, built one way for every stage, tune, the demo and the benchmarks.

:func:`prepare` runs the sequence techniques -> context -> backbone -> ``prepare_data`` ->
head -> ``prepare_model`` -> encode -> collate once per model, and returns a :class:`Prepared`.
Its :meth:`Prepared.fit` trains with freshly built technique objects (the lifecycle rule of
:mod:`plmtune.technique`) and returns what the fit built (model, accelerator, best record,
history); :meth:`Prepared.metrics` and :meth:`Prepared.probs` read a fitted model. No caller
reads the model or the accelerator back from the context.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import set_seed

from .config import Recipe, TrainConfig
from .data import EncodedSplit, PadCollator, TaskData, eval_loader, train_loader
from .engine.loop import FitResult, MetricLog, evaluate, fit, make_accelerator, predict
from .models import SequenceClassifier, count_parameters, load_backbone
from .technique import Technique, TrainContext
from .techniques import build_techniques


@dataclass
class Prepared:
    """A prepared model and its data for one run; `ctx` is the run's context."""

    recipe: Recipe
    task: TaskData
    seed: int
    ctx: TrainContext
    model: torch.nn.Module
    splits: dict[str, list[dict]]
    encoded: dict[str, EncodedSplit]
    collate: PadCollator
    batch_fields: dict[str, str]
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)

    # ------------------------------------------------------------------ data

    def encode(self, rows: list[dict]) -> EncodedSplit:
        """Tokenise rows as the recipe's data section says (length and truncation)."""
        data = self.recipe.data
        return EncodedSplit(rows, self.ctx.tokenizer, data.max_length, data.truncation, data.head_tokens,
                            fields=self.batch_fields)

    def train_loader(self, split: str | EncodedSplit = "train", batch_size: int | None = None,
                     seed: int | None = None) -> Any:
        """A shuffled loader (seeded: `seed`, else the run's) over a split name or encoded rows."""
        data = self.encoded[split] if isinstance(split, str) else split
        return train_loader(data, batch_size or self.recipe.train.batch_size, self.seed if seed is None else seed,
                            self.collate)

    def eval_loader(self, split: str | EncodedSplit) -> Any | None:
        """A length-sorted loader over a split (None where the task has no such split)."""
        if isinstance(split, str):
            if split not in self.encoded:
                return None
            split = self.encoded[split]
        return eval_loader(split, self.recipe.train.eval_batch_size, self.collate)

    # ------------------------------------------------------------------ fits

    def fit(self, log: MetricLog, train: Any = None, extra: Iterable[Technique] = (), cfg: TrainConfig | None = None,
            dev: str | None = "dev", **kwargs: Any) -> FitResult:
        """One fit with fresh technique objects (the recipe's, then `extra`, e.g. a stage's loss)."""
        techniques = [*build_techniques(self.recipe), *extra]
        return fit(self.model, techniques, self.ctx, self.train_loader() if train is None else train,
                   self.eval_loader(dev) if dev else None, cfg or self.recipe.train, log, **kwargs)

    def unfitted(self) -> FitResult:
        """The model as it is, made ready for evaluation (a resumed stage that trains nothing first)."""
        accelerator = make_accelerator(self.recipe.train)
        return FitResult(None, 0, 0, 0, False, 0.0, model=accelerator.prepare(self.model), accelerator=accelerator)

    def metrics(self, fitted: FitResult, split: str = "test") -> dict[str, float] | None:
        """Metrics of the fitted model on `split`; None where the task has no such split."""
        if split not in self.encoded:
            return None
        loader = fitted.accelerator.prepare(self.eval_loader(split))
        return evaluate(fitted.model, loader, fitted.accelerator, self.ctx.num_labels)["metrics"]

    def probs(self, fitted: FitResult, split: EncodedSplit) -> torch.Tensor:
        """Row-ordered class probabilities of the fitted model on `split` (labels not needed)."""
        loader = fitted.accelerator.prepare(self.eval_loader(split))
        return predict(fitted.model, loader, fitted.accelerator)[0].softmax(-1)

    # ------------------------------------------------------------------ record

    def save(self, model: torch.nn.Module, directory: Any) -> dict[str, Any]:
        """Save a model trained here as a saved-model folder (:mod:`plmtune.saved`); returns its export notes."""
        from .saved import model_meta, save_model

        meta = model_meta(self.ctx, self.task.label_names, self.task.is_pair)
        return save_model(model, self.ctx.tokenizer, self.recipe, meta, directory)

    def parameters(self) -> dict[str, int]:
        return count_parameters(self.model)

    def sizes(self) -> dict[str, int]:
        """Rows per split, as result.json records them."""
        return {name: len(rows) for name, rows in self.splits.items()}

    def technique_reports(self, *fits: FitResult) -> dict[str, dict[str, Any]]:
        """Each technique's diagnostics (its notes while preparing, then its report()), by name."""
        out = {name: dict(notes) for name, notes in self.reports.items()}
        for fitted in fits:
            for technique in fitted.techniques:
                if technique.name:
                    out.setdefault(technique.name, {}).update(_json_safe(technique.report()))
        return {name: notes for name, notes in out.items() if notes}


def _json_safe(notes: dict[str, Any]) -> dict[str, Any]:
    safe = {}
    for key, value in notes.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            value = repr(value)
        safe[key] = value
    return safe


def _noting(technique: Technique, ctx: TrainContext, reports: dict[str, dict], hook: str, *args: Any) -> Any:
    """Call a preparation hook and file the ctx.extras entries it writes under the technique's name."""
    before = dict(ctx.extras)
    result = getattr(technique, hook)(*args, ctx)
    written = {k: v for k, v in ctx.extras.items() if k not in before or before[k] is not v}
    if written:
        reports.setdefault(technique.name, {}).update(_json_safe(written))
    return result


def head_model(recipe: Recipe, encoder: torch.nn.Module, num_labels: int) -> SequenceClassifier:
    """The recipe's classifier on `encoder`, before any technique (training and loading a saved model both start here)."""
    return SequenceClassifier(encoder, num_labels, recipe.model.pooling, recipe.model.dropout, recipe.model.pooling_layers)


def prepare(recipe: Recipe, task: TaskData, seed: int, splits: dict[str, list[dict]] | None = None,
            extra_fields: dict[str, str] | None = None, seed_rng: bool = True) -> Prepared:
    """Backbone, techniques' data and model preparation, encoded splits and the collator.

    `splits` replaces the task's (a stage adds an unlabelled pool); `extra_fields` are batch fields a
    stage's own loss reads (teacher probabilities). `seed_rng` seeds every RNG first, as every run does.
    """
    if seed_rng:
        set_seed(seed)
    techniques = build_techniques(recipe)
    ctx = TrainContext(recipe=recipe, seed=seed, num_labels=task.num_labels, task_name=task.name)
    tokenizer, encoder = load_backbone(recipe.model.backbone)
    if recipe.model.encoder_dropout is not None:
        for module in encoder.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = recipe.model.encoder_dropout
    ctx.tokenizer = tokenizer  # before prepare_data: prompts render and cut text with it
    reports: dict[str, dict] = {}
    splits = dict(task.splits if splits is None else splits)
    for technique in techniques:
        splits = _noting(technique, ctx, reports, "prepare_data", splits)
    model: torch.nn.Module = head_model(recipe, encoder, ctx.num_labels)
    for technique in techniques:
        model = _noting(technique, ctx, reports, "prepare_model", model)
    fields = {k: v for t in techniques for k, v in t.batch_fields.items()} | (extra_fields or {})
    prepared = Prepared(recipe, task, seed, ctx, model, splits, {}, PadCollator(tokenizer.pad_token_id or 0, fields),
                        fields, reports)
    prepared.encoded = {name: prepared.encode(rows) for name, rows in splits.items()}
    return prepared
