"""Masked-language-model pieces shared by prompt-based fine-tuning and further pre-training.

* :func:`mlm_head_for` returns the backbone's own trained MLM head where its checkpoint has one
  (BERT's ``cls.predictions.*`` weights, RoBERTa's and MPNet's ``lm_head.*``: :data:`CHECKPOINT_HEADS`;
  or the ``mlm_head.safetensors`` `plmtune pretrain` writes), and otherwise builds BERT's head, which
  RoBERTa's and MPNet's match in shape: a transform (dense hidden→hidden, GELU, LayerNorm) and a
  decoder **tied to the word embeddings** with a zero bias. The bundled all-MiniLM-L6-v2 ships no
  MLM head, so for it the transform is new: dense weight = identity, bias 0, LayerNorm weight 1
  and bias 0. Its first predictions are then the similarity of the (normalised) hidden state to
  each word embedding — they vary with the input from the start, unlike a random transform,
  whose predictions on all-MiniLM-L6-v2 start constant — and prompt and MLM training adapt it.
* :class:`MaskingCollator` masks tokens for MLM training: a share `rate` of the maskable tokens
  (never [CLS], [SEP] or padding) is chosen; of those, 80% become [MASK], 10% a random token,
  10% stay (all configurable). ``dynamic`` draws a new mask every time a sequence is seen;
  ``static`` draws `copies` fixed masks per sequence once (Sun et al. 2019 / original BERT) and
  serves them in turn, so every epoch sees the same masks. ``selective`` (Gu et al. 2020, "Train
  No Evil") takes per-token importance weights with each item (``mask_weights``) and draws
  round(rate · maskable) positions without replacement with probability proportional to the
  weight (Gumbel top-k), anew each time: important tokens are masked far more often than
  others, yet every token keeps a small chance.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

IGNORE = -100

# How checkpoints name their MLM head's tensors (prefix -> {their name: TiedMLMHead's name}); each of these
# heads is dense -> GELU -> LayerNorm -> decoder tied to the word embeddings, plus a bias.
CHECKPOINT_HEADS = {
    "cls.predictions.": {"transform.dense.weight": "dense.weight", "transform.dense.bias": "dense.bias",
                         "transform.LayerNorm.weight": "norm.weight", "transform.LayerNorm.bias": "norm.bias",
                         "bias": "decoder.bias"},  # BERT, MiniLM, ELECTRA's generator
    "lm_head.": {"dense.weight": "dense.weight", "dense.bias": "dense.bias", "layer_norm.weight": "norm.weight",
                 "layer_norm.bias": "norm.bias", "bias": "decoder.bias"},  # RoBERTa, XLM-R, MPNet, CamemBERT
}


class TiedMLMHead(nn.Module):
    """BERT's MLM head with the decoder weight shared with the input word embeddings."""

    def __init__(self, embeddings: nn.Embedding, hidden_size: int, layer_norm_eps: float = 1e-12):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.decoder = nn.Linear(hidden_size, embeddings.num_embeddings)
        self.decoder.weight = embeddings.weight  # tied: the head learns nothing the embeddings don't
        nn.init.eye_(self.dense.weight)  # see the module docstring: start as "similarity to the word embeddings"
        nn.init.zeros_(self.dense.bias)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(batch, seq, hidden) -> (batch, seq, vocab) logits."""
        return self.decoder(self.norm(nn.functional.gelu(self.dense(hidden))))


def mlm_head_for(encoder: nn.Module, backbone_dir: str | None = None) -> nn.Module:
    """The trained MLM head of the backbone where it has one; else a new tied head (see above)."""
    config = encoder.config
    if backbone_dir is not None:
        from pathlib import Path

        from safetensors import safe_open

        ours = Path(backbone_dir) / "mlm_head.safetensors"  # written by `plmtune pretrain`
        if ours.is_file():
            from safetensors.torch import load_file

            head = TiedMLMHead(encoder.get_input_embeddings(), config.hidden_size, config.layer_norm_eps)
            head.load_state_dict(load_file(str(ours)), strict=False)  # the decoder weight is the embeddings
            return head
        weights = Path(backbone_dir) / "model.safetensors"
        if weights.is_file():
            with safe_open(str(weights), "pt") as f:
                keys = set(f.keys())
                for prefix, names in CHECKPOINT_HEADS.items():
                    found = {ours: f.get_tensor(prefix + theirs) for theirs, ours in names.items()
                             if prefix + theirs in keys}
                    if found:
                        head = TiedMLMHead(encoder.get_input_embeddings(), config.hidden_size,
                                           config.layer_norm_eps)
                        head.load_state_dict(found, strict=False)  # the decoder weight is the embeddings
                        return head
    return TiedMLMHead(encoder.get_input_embeddings(), config.hidden_size, getattr(config, "layer_norm_eps", 1e-12))


class MaskingCollator:
    """Pads a batch and masks it for MLM; items need `input_ids` and an `index` (for static masks)."""

    def __init__(self, tokenizer: Any, rate: float = 0.15, split: tuple[float, float, float] = (0.8, 0.1, 0.1),
                 mode: str = "dynamic", copies: int = 10, seed: int = 0):
        if mode not in ("dynamic", "static", "selective"):
            raise ValueError(f"masking mode must be 'dynamic', 'static' or 'selective', got {mode!r}")
        if abs(sum(split) - 1.0) > 1e-6:
            raise ValueError(f"the mask/random/keep split must sum to 1, got {split}")
        self.tokenizer, self.rate, self.split, self.mode, self.copies = tokenizer, rate, split, mode, copies
        self.special = set(tokenizer.all_special_ids)
        self.generator = torch.Generator().manual_seed(seed)
        self.static: dict[int, list[tuple[list[int], list[int]]]] = {}
        self.seen: dict[int, int] = {}

    def mask(self, ids: list[int], generator: torch.Generator, weights: list[float] | None = None
             ) -> tuple[list[int], list[int]]:
        """Return (inputs, labels) for one sequence; labels are -100 where nothing is predicted."""
        ids_t = torch.tensor(ids)
        maskable = torch.tensor([i not in self.special for i in ids])
        if weights is None:
            chosen = (torch.rand(len(ids), generator=generator) < self.rate) & maskable
        else:  # selective: k positions, drawn in proportion to the importance weights
            k = max(1, round(self.rate * int(maskable.sum()))) if maskable.any() else 0
            u = torch.rand(len(ids), generator=generator).clamp(1e-9, 1 - 1e-9)
            keys = torch.log(torch.tensor(weights, dtype=torch.float32).clamp_min(1e-6)) - torch.log(-torch.log(u))
            keys[~maskable] = -float("inf")
            chosen = torch.zeros(len(ids), dtype=torch.bool)
            chosen[keys.topk(k).indices] = True
        labels = torch.where(chosen, ids_t, torch.full_like(ids_t, IGNORE))
        roll = torch.rand(len(ids), generator=generator)
        to_mask = chosen & (roll < self.split[0])
        to_random = chosen & (roll >= self.split[0]) & (roll < self.split[0] + self.split[1])
        inputs = ids_t.clone()
        inputs[to_mask] = self.tokenizer.mask_token_id
        inputs[to_random] = torch.randint(len(self.tokenizer), (int(to_random.sum()),), generator=generator)
        return inputs.tolist(), labels.tolist()

    def state_dict(self) -> dict[str, Any]:
        """What the next masks depend on (static copies are rebuilt from the seed on demand)."""
        return {"generator": self.generator.get_state(), "seen": dict(self.seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.seen = dict(state["seen"])

    def _for(self, item: dict) -> tuple[list[int], list[int]]:
        if self.mode == "dynamic":
            return self.mask(item["input_ids"], self.generator)
        if self.mode == "selective":
            return self.mask(item["input_ids"], self.generator, item["mask_weights"])
        key = item["index"]
        if key not in self.static:
            g = torch.Generator().manual_seed(self.generator.initial_seed() * 1_000_003 + key)
            self.static[key] = [self.mask(item["input_ids"], g) for _ in range(self.copies)]
        turn = self.seen.get(key, 0)
        self.seen[key] = turn + 1
        return self.static[key][turn % self.copies]

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(item["input_ids"]) for item in items)
        pad = self.tokenizer.pad_token_id
        inputs, labels, attention = [], [], []
        for item in items:
            masked, target = self._for(item)
            extra = width - len(masked)
            inputs.append(masked + [pad] * extra)
            labels.append(target + [IGNORE] * extra)
            attention.append([1] * len(masked) + [0] * extra)
        return {"input_ids": torch.tensor(inputs), "attention_mask": torch.tensor(attention),
                "labels": torch.tensor(labels)}
