"""Mixout: stochastically mix the weights being trained with the pretrained ones.

Paper: Lee, Cho & Kang, "Mixout: Effective Regularization to Finetune Large-scale Pretrained
Language Models", ICLR 2020. In training, each weight entry is replaced by its pretrained value
with probability p, and the result is rescaled so that its expectation is the current weight:

    mixout(W) = ((1 − M) ⊙ W + M ⊙ W₀ − p · W₀) / (1 − p),   M ~ Bernoulli(p)

In evaluation the layer uses W. Dropout's "drop to zero" becomes "drop to the pretrained
value", which pulls fine-tuning towards W₀ (an adaptive L2 penalty towards W₀, per the paper).

Every ``nn.Linear`` inside the encoder gets it (its weights; biases untouched); the head's layers
are fresh, have no pretrained value, and are left alone. The paper also sets the dropout
of those layers to 0; ``disable_dropout: true`` does that for the whole encoder.

Plug point: ``prepare_model`` (a parametrisation on each weight, so names and state dicts stay
the same). Cost: one Bernoulli draw per encoder weight entry per forward pass; on a 2-core CPU
this is slow (see the benchmark), on a GPU cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..config import check_range
from ..technique import Technique, TrainContext, register
from ._select import backbone


@dataclass(frozen=True)
class MixoutConfig:
    """Args:
    p: probability of replacing an entry by its pretrained value (the paper uses 0.1–0.9).
    disable_dropout: set the encoder's dropout to 0, as the paper does with mixout.
    """

    p: float = 0.1
    disable_dropout: bool = False

    def __post_init__(self) -> None:
        check_range("mixout.p", self.p, 0.0, 1.0, lo_open=True, hi_open=True)


class MixoutWeight(nn.Module):
    """A parametrisation: returns mixout(W) in training mode and W in evaluation mode."""

    def __init__(self, pretrained: torch.Tensor, p: float):
        super().__init__()
        self.register_buffer("pretrained", pretrained.detach().clone(), persistent=False)
        self.p = p

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return weight
        replace = torch.empty_like(weight).bernoulli_(self.p)
        mixed = torch.lerp(weight, self.pretrained, replace)
        return (mixed - self.p * self.pretrained) / (1 - self.p)


def apply_mixout(encoder: nn.Module, p: float) -> int:
    count = 0
    for module in list(encoder.modules()):
        if isinstance(module, nn.Linear) and not parametrize.is_parametrized(module, "weight"):
            parametrize.register_parametrization(module, "weight", MixoutWeight(module.weight, p))
            count += 1
    return count


@register("mixout", MixoutConfig)
class Mixout(Technique):
    search_space = {"p": (0.05, 0.7)}
    conflicts_with = {"lora": "LoRA replaces the same linear layers that mixout parametrises; one would "
                              "silently undo the other."}

    def prepare_model(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        encoder = backbone(model)[2]
        if self.config.disable_dropout:
            for module in encoder.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0
        ctx.extras["mixout_layers"] = apply_mixout(encoder, self.config.p)
        return model
