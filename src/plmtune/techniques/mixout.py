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

Plug point: ``prepare_model``. Each such layer becomes a :class:`MixoutLinear`, an ``nn.Linear``
that holds the *same* weight and bias parameters and only changes the forward pass, so parameter
names, the state dict, checkpoints and ``--save-model`` output are those of the plain model: a
saved Mixout-trained model loads back as the trained weights W, which is also what Mixout itself
uses in evaluation (E[mixout(W)] = W). (A ``torch.nn.utils.parametrize`` parametrisation would
rename ``weight`` to ``parametrizations.weight.original`` in every state dict.) W₀ is kept in a
non-persistent buffer, never saved. Cost: one Bernoulli draw per encoder weight entry per forward
pass; on a 2-core CPU this is slow (see the benchmark), on a GPU cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

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


def mixout_weight(weight: torch.Tensor, pretrained: torch.Tensor, p: float) -> torch.Tensor:
    """((1 − M) ⊙ W + M ⊙ W₀ − p · W₀) / (1 − p) with a fresh M ~ Bernoulli(p) of W's shape."""
    replace = torch.empty_like(weight).bernoulli_(p)
    return (torch.lerp(weight, pretrained, replace) - p * pretrained) / (1 - p)


class MixoutLinear(nn.Linear):
    """An ``nn.Linear`` computing with mixout(W) in training mode and with W in evaluation mode.

    :meth:`convert` turns an existing layer into one in place: the same module object with the
    same parameter objects (so names, state dicts, optimisers, hooks and any reference to the
    layer are unaffected); only ``forward`` changes, and W₀ joins as a non-persistent buffer.
    """

    p: float

    @classmethod
    def convert(cls, linear: nn.Linear, p: float) -> MixoutLinear:
        linear.__class__ = cls
        linear.p = p
        linear.register_buffer("pretrained", linear.weight.detach().clone(), persistent=False)
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = mixout_weight(self.weight, self.pretrained, self.p) if self.training else self.weight
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mixout_p={self.p}"


def apply_mixout(encoder: nn.Module, p: float) -> int:
    """Turn every plain ``nn.Linear`` inside `encoder` into a :class:`MixoutLinear`; return how many."""
    targets = [m for m in encoder.modules() if type(m) is nn.Linear]  # not subclasses, not done twice
    for module in targets:
        MixoutLinear.convert(module, p)
    return len(targets)


@register("mixout", MixoutConfig)
class Mixout(Technique):
    search_space = {"p": (0.05, 0.7)}
    conflicts_with = {"lora": "LoRA replaces the same linear layers that mixout wraps; one would "
                              "silently undo the other."}

    def prepare_model(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        encoder = backbone(model)[2]
        if self.config.disable_dropout:
            for module in encoder.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0
        ctx.extras["mixout_layers"] = apply_mixout(encoder, self.config.p)
        return model
