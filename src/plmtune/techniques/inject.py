"""Knowledge injection: join external per-example feature vectors to the model.

From the seed material on fine-tuning practice: concatenate external knowledge (e.g. entity or
knowledge-graph embeddings, hand-made features) with what the encoder computes. Each example's
vector comes either from a field of the data rows (``field``, a list of numbers) or from an id
field looked up in an embedding file (``id_field`` + ``embeddings``: JSONL lines
``{"id": ..., "vector": [...]}`` or whitespace text lines ``id v1 v2 ...``, the word2vec text
layout).

Where it joins (``at``):
* ``head``: concatenated to the pooled vector before the classifier (the classifier widens).
* ``input``: projected to the hidden size and added to every token's word embedding; the
  projection starts at zero, so training starts from the plain model.

Plug points: ``prepare_data`` (resolve and check the vectors; an example without one, or of the
wrong width, stops with its file, line and field) and ``prepare_model`` (the recipe's classifier
becomes a :class:`FeatureClassifier`). Declares the ``features`` batch field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import check_choice
from ..errors import DataError, RecipeError
from ..models import SequenceClassifier
from ..technique import Technique, TrainContext, register


@dataclass(frozen=True)
class InjectConfig:
    """Args:
    field: the row field holding each example's vector (used when id_field is not set).
    id_field: the row field holding an id to look up in `embeddings`.
    embeddings: the embedding file (JSONL or word2vec-style text).
    at: 'head' (concatenate to the pooled vector) or 'input' (add to the token embeddings).
    missing: for ids absent from the file: 'error' or 'zero' (an all-zero vector).
    """

    field: str = "features"
    id_field: str | None = None
    embeddings: str | None = None
    at: str = "head"
    missing: str = "error"

    def __post_init__(self) -> None:
        check_choice("inject.at", self.at, ("head", "input"))
        check_choice("inject.missing", self.missing, ("error", "zero"))
        if (self.id_field is None) != (self.embeddings is None):
            raise RecipeError("inject: set both id_field and embeddings (an id lookup), or neither "
                              "(vectors read from `field`).")


def _vector(value: Any, path: str, line: int | None, field: str) -> list[float]:
    if not isinstance(value, list) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise DataError(path, "must be a non-empty list of finite numbers.", line, field)
    return [float(v) for v in value]


def read_embeddings(path: str | Path) -> dict[str, list[float]]:
    """Read an id -> vector table from JSONL ({"id", "vector"}) or whitespace text (id v1 v2 ...)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "the embedding file does not exist.")
    table: dict[str, list[float]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(path, f"malformed JSON ({err.msg}).", number) from err
            if not isinstance(record, dict) or "id" not in record:
                raise DataError(path, "each line needs an 'id' and a 'vector'.", number, "id")
            table[str(record["id"])] = _vector(record.get("vector"), str(path), number, "vector")
        else:
            key, *numbers = line.split()
            try:
                table[key] = _vector([float(x) for x in numbers], str(path), number, "vector")
            except ValueError as err:
                raise DataError(path, f"not a number in the vector ({err}).", number, "vector") from err
    if not table:
        raise DataError(path, "the embedding file is empty.")
    return table


class FeatureClassifier(SequenceClassifier):
    """A SequenceClassifier whose forward takes a ``features`` vector per example, joined at the
    head (concatenated to the pooled vector; the classifier widens) or at the input (projected to
    the hidden size, starting at zero, and added to every token's word embedding).

    It takes over the wrapped model's modules under the same names, so parameter names (LLRD's
    depth, checkpoints) are those of the plain model.
    """

    def __init__(self, base: SequenceClassifier, dim: int, at: str):
        nn.Module.__init__(self)
        self.encoder, self.pooling, self.num_labels = base.encoder, base.pooling, base.num_labels
        self.pooler, self.dropout = base.pooler, base.dropout
        self.feature_dim, self.feature_at = dim, at
        if at == "head":
            self.classifier = self._new_classifier(self.pooler.out_dim + dim)
        else:
            self.classifier = base.classifier
            self.feature_projection = nn.Linear(dim, self.encoder.config.hidden_size)
            nn.init.zeros_(self.feature_projection.weight)  # starts as the plain model
            nn.init.zeros_(self.feature_projection.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, features: torch.Tensor | None = None,
                **_: Any) -> dict[str, torch.Tensor]:
        kwargs: dict[str, Any] = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        if self.pooler.needs_all_layers:
            kwargs["output_hidden_states"] = True
        if self.feature_at == "input":
            # Adding to inputs_embeds before the encoder's own position/type embeddings and
            # LayerNorm equals adding to the word-embedding output of every token.
            embeds = self.encoder.get_input_embeddings()(input_ids)
            kwargs["inputs_embeds"] = embeds + self.feature_projection(features.to(embeds.dtype)).unsqueeze(1)
        else:
            kwargs["input_ids"] = input_ids
        out = self.encoder(attention_mask=attention_mask, **kwargs)
        pooled = self.pooler(out.last_hidden_state, getattr(out, "hidden_states", None), attention_mask)
        if self.feature_at == "head":
            pooled = torch.cat([pooled, features.to(pooled.dtype)], dim=-1)
        return {"logits": self.classifier(self.dropout(pooled)), "pooled": pooled}


@register("inject", InjectConfig)
class Inject(Technique):
    inference = True  # every input needs its feature vector, at prediction too
    files = ("embeddings",)  # an id -> vector table read at prediction too: not shipped with a saved model
    batch_fields = {"features": "float32"}

    def prepare_data(self, splits: dict[str, list[dict]], ctx: TrainContext) -> dict[str, list[dict]]:
        cfg = self.config
        table = read_embeddings(cfg.embeddings) if cfg.embeddings else None
        width = len(next(iter(table.values()))) if table else None
        for rows in splits.values():
            for row in rows:
                file, _, line_text = row["source"].rpartition(":")
                line = int(line_text) if line_text.isdigit() else None
                fields = row.get("fields", {})
                if table is None:
                    if cfg.field not in fields:
                        raise DataError(file, "missing field (knowledge injection needs a vector per example).",
                                        line, cfg.field)
                    vector = _vector(fields[cfg.field], file, line, cfg.field)
                else:
                    if cfg.id_field not in fields:
                        raise DataError(file, "missing field (the id to look up).", line, cfg.id_field)
                    key = str(fields[cfg.id_field])
                    if key not in table and cfg.missing == "error":
                        raise DataError(file, f"id '{key}' is not in {cfg.embeddings}.", line, cfg.id_field)
                    vector = table.get(key) or [0.0] * width
                if width is None:
                    width = len(vector)
                if len(vector) != width:
                    raise DataError(file, f"vector of width {len(vector)}; the others have {width}.",
                                    line, cfg.field if table is None else cfg.id_field)
                row["features"] = vector
        ctx.extras["feature_dim"] = width
        return splits

    def prepare_model(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        if not isinstance(model, SequenceClassifier):
            raise RecipeError("inject needs plmtune's classifier head; another technique replaced it "
                              f"({type(model).__name__}).")
        return FeatureClassifier(model, ctx.extras["feature_dim"], self.config.at)
