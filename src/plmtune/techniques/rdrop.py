"""R-Drop: two dropout passes per batch and a symmetric KL between their predictions.

Paper: Liang et al., "R-Drop: Regularized Dropout for Neural Networks", NeurIPS 2021.
P₁, P₂ come from two forward passes of the same batch with independent dropout masks, and
KL_sym = ½(KL(P₁‖P₂) + KL(P₂‖P₁)) (batch mean). Two conventions (``convention``):

* ``plmtune`` (the default, and what every benchmark number used):
  Loss = ½(CE₁ + CE₂) + α · KL_sym. The cross-entropy keeps the scale of plain fine-tuning.
* ``paper`` (the paper's Eq. 3): Loss = CE₁ + CE₂ + α · KL_sym.

The two differ by a factor 2 on the cross-entropy only, so plmtune's α is the paper's α / 2
(plmtune α = 1 is paper α = 2, up to an overall factor 2 on the loss). Under ``paper`` the
gradient is about twice plain fine-tuning's, which matters with SGD and with gradient clipping
(AdamW is nearly invariant to the overall scale). The authors' README code has other
variants again (½(CE₁ + CE₂) with KL summed over the batch); set α accordingly.
The reference code concatenates the batch with itself for one forward pass; here the second
pass is a separate call, which gives the same gradients and keeps the model code untouched (at
about twice the forward cost either way).

Plug point: ``adjust_loss``. It needs dropout: with all dropout at 0 the KL term is 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..config import check_choice, check_range
from ..technique import Technique, TrainContext, register

CONVENTIONS = ("plmtune", "paper")


@dataclass(frozen=True)
class RDropConfig:
    """Args:
    alpha: α, the weight of the symmetric KL term (the paper uses 0.1–5 for classification,
        in its own convention).
    convention: 'plmtune' (½(CE₁ + CE₂) + α·KL_sym; α is the paper's α / 2) or 'paper'
        (CE₁ + CE₂ + α·KL_sym, Eq. 3 of the paper).
    """

    alpha: float = 1.0
    convention: str = "plmtune"

    def __post_init__(self) -> None:
        check_range("rdrop.alpha", self.alpha, 0.0, 100.0)
        check_choice("rdrop.convention", self.convention, CONVENTIONS)


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
        ce_weight = 0.5 if self.config.convention == "plmtune" else 1.0
        return ce_weight * (loss + ce_second) + self.config.alpha * symmetric_kl(outputs["logits"], second)
