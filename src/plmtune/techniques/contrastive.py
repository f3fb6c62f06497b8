"""Contrastive training of the sentence body, SetFit's idea, as a loss on the pooled embeddings.

Papers: Tunstall et al., "Efficient Few-Shot Learning Without Prompts" (SetFit), 2022;
Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020.

SetFit draws sentence pairs from the K labelled rows (same class → target 1, different → 0) and
trains the encoder with a cosine-similarity regression loss, then fits a logistic-regression
head on the frozen embeddings. Here the pairs are every pair of rows *within a batch*: a batch
of B shuffled rows gives B(B−1)/2 pairs, so ``epochs × rows / batch_size`` steps see as many
pairs as SetFit's ``num_iterations`` sampling at a fraction of the forward passes (each row is
encoded once per step, not once per pair). Two losses (``loss``):

* ``cosine``: mean over in-batch pairs of (cos(u_i, u_j) − 1[y_i = y_j])², SetFit's
  CosineSimilarityLoss with its default targets.
* ``supcon``: the supervised contrastive loss at temperature τ: for each anchor with at least
  one same-class row in the batch, −mean over its positives of log softmax_j(cos(u_i, u_j)/τ)
  (the anchor itself excluded from the softmax).

The fit's loss is ``ce_weight · CE(head) + weight · contrastive``. ``ce_weight: 0`` trains the
body only (SetFit's first phase; then fit a head, e.g. with the ``embedding_head`` stage);
``ce_weight > 0`` trains the differentiable head end to end with the body. sentence-transformers'
losses are not used: they take a SentenceTransformer and re-encode their own inputs, while this
loss must see the pooled output of the model the loop (and every other technique's hook) runs.

Plug point: ``adjust_loss``, on ``outputs["pooled"]`` and ``batch["labels"]``; it composes with
NoisyTune, ChildTuning, LLRD and EMA through their own hooks. A batch with a single row adds 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..config import check_choice, check_range
from ..technique import Technique, TrainContext, register

LOSSES = ("cosine", "supcon")


@dataclass(frozen=True)
class ContrastiveConfig:
    """Args:
    loss: 'cosine' (SetFit's pair loss over in-batch pairs) or 'supcon' (supervised contrastive).
    weight: weight of the contrastive loss.
    ce_weight: weight of the head's cross-entropy (0: train the body only).
    temperature: τ of 'supcon' (unused by 'cosine').
    """

    loss: str = "cosine"
    weight: float = 1.0
    ce_weight: float = 0.0
    temperature: float = 0.1

    def __post_init__(self) -> None:
        check_choice("contrastive.loss", self.loss, LOSSES)
        check_range("contrastive.weight", self.weight, 0.0, 100.0)
        check_range("contrastive.ce_weight", self.ce_weight, 0.0, 100.0)
        check_range("contrastive.temperature", self.temperature, 1e-3, 10.0)


def pair_cosine_loss(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over pairs i < j of (cos(u_i, u_j) − 1[y_i = y_j])²; 0 for fewer than two rows."""
    if embeddings.shape[0] < 2:
        return embeddings.sum() * 0.0
    unit = F.normalize(embeddings.float(), dim=-1)
    cos = unit @ unit.T
    target = (labels[:, None] == labels[None, :]).float()
    upper = torch.triu(torch.ones_like(cos, dtype=torch.bool), diagonal=1)
    return ((cos - target)[upper] ** 2).mean()


def supcon_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out), averaged over anchors with a positive."""
    n = embeddings.shape[0]
    unit = F.normalize(embeddings.float(), dim=-1)
    logits = unit @ unit.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    count = positives.sum(1)
    has = count > 0
    if not has.any():
        return embeddings.sum() * 0.0
    mean_log_prob = log_prob.masked_fill(~positives, 0.0).sum(1)[has] / count[has]
    return -mean_log_prob.mean()


@register("contrastive", ContrastiveConfig)
class Contrastive(Technique):
    search_space = {"weight": (0.1, 10.0, "log")}

    def adjust_loss(self, loss: torch.Tensor, outputs: dict, batch: dict[str, Any], ctx: TrainContext) -> torch.Tensor:
        pooled, labels = outputs["pooled"], batch["labels"]
        if self.config.loss == "cosine":
            extra = pair_cosine_loss(pooled, labels)
        else:
            extra = supcon_loss(pooled, labels, self.config.temperature)
        return self.config.ce_weight * loss + self.config.weight * extra
