"""R-Drop: two dropout passes per batch and a symmetric KL between their predictions.

Paper: Liang et al., "R-Drop: Regularized Dropout for Neural Networks", NeurIPS 2021.
Loss = ½(CE₁ + CE₂) + α · ½(KL(P₁‖P₂) + KL(P₂‖P₁)), where P₁, P₂ come from two forward passes of
the same batch with independent dropout masks. The reference code concatenates the batch with
itself for one forward pass; here the second pass is a separate call, which gives the same
gradients and keeps the model code untouched (at about twice the forward cost either way).

Plug point: ``adjust_loss``. It needs dropout: with all dropout at 0 the KL term is 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..config import check_range
from ..technique import Technique, TrainContext, register


@dataclass(frozen=True)
class RDropConfig:
    """Args:
    alpha: α, the weight of the symmetric KL term (the paper uses 0.1–5 for classification).
    """

    alpha: float = 1.0

    def __post_init__(self) -> None:
        check_range("rdrop.alpha", self.alpha, 0.0, 100.0)


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """½(KL(P_a‖P_b) + KL(P_b‖P_a)), averaged over the batch. Shapes: (batch, classes)."""
    log_a, log_b = F.log_softmax(logits_a.float(), -1), F.log_softmax(logits_b.float(), -1)
    kl_ab = F.kl_div(log_b, log_a, log_target=True, reduction="batchmean")  # KL(P_a || P_b)
    kl_ba = F.kl_div(log_a, log_b, log_target=True, reduction="batchmean")
    return 0.5 * (kl_ab + kl_ba)


@register("rdrop", RDropConfig)
class RDrop(Technique):
    search_space = {"alpha": (0.1, 5.0, "log")}

    def adjust_loss(self, loss: torch.Tensor, outputs: dict, batch: dict[str, Any], ctx: TrainContext) -> torch.Tensor:
        second = ctx.model(**batch)["logits"]
        ce_second = F.cross_entropy(second.float(), batch["labels"])
        return 0.5 * (loss + ce_second) + self.config.alpha * symmetric_kl(outputs["logits"], second)
