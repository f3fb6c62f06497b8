"""Gradual unfreezing: train the head first, then unfreeze the encoder from the top down.

Paper: Howard & Ruder, "Universal Language Model Fine-tuning for Text Classification" (ULMFiT),
ACL 2018. At the start only the parts above the encoder (pooling, classifier) train; every
``every_epochs`` epochs one more encoder layer, counted from the top, joins; the embeddings join
last.

How: the optimiser is built with every parameter; frozen ones get ``requires_grad = False``, so
they get no gradient, and AdamW skips parameters without a gradient (no update, no weight
decay). Unfreezing flips the flag back at an epoch end. Layer numbering is the one LLRD uses
(embeddings 0, layers 1..L, head L+1), so the two compose.

Plug points: ``on_fit_start``, ``on_epoch_end``. Multi-process (DDP) runs need
``find_unused_parameters`` while parts are frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import check_range
from ..technique import Technique, TrainContext, register
from ._select import backbone, check_layers
from .llrd import layer_index


@dataclass(frozen=True)
class GradualUnfreezeConfig:
    """Args:
    every_epochs: epochs between two unfreezing steps.
    """

    every_epochs: int = 1

    def __post_init__(self) -> None:
        check_range("gradual_unfreeze.every_epochs", self.every_epochs, 1, 10_000)


def set_trainable_depth(model: nn.Module, unfrozen: int) -> int:
    """Unfreeze the top `unfrozen` depth levels (1 = head only); return trainable tensor count."""
    _, prefix, encoder = backbone(model)
    num_layers = encoder.config.num_hidden_layers
    lowest = num_layers + 2 - unfrozen
    count = 0
    for name, param in model.named_parameters():
        param.requires_grad_(layer_index(name, num_layers, prefix) >= lowest)
        count += param.requires_grad
    return count


@register("gradual_unfreeze", GradualUnfreezeConfig)
class GradualUnfreeze(Technique):
    conflicts_with = {
        "lora": "gradual unfreezing sets requires_grad by depth and would unfreeze LoRA's frozen base weights.",
        "child_tuning": "frozen layers get no gradients, so ChildTuning-D's Fisher pass would not see them.",
    }

    def check_backbone(self, encoder: nn.Module) -> None:
        check_layers(encoder, "gradual_unfreeze")

    def on_fit_start(self, ctx: TrainContext) -> None:
        check_layers(backbone(ctx.bare_model())[2], "gradual_unfreeze")
        set_trainable_depth(ctx.bare_model(), 1 + ctx.epoch // self.config.every_epochs)

    def on_epoch_end(self, ctx: TrainContext) -> None:
        set_trainable_depth(ctx.bare_model(), 1 + (ctx.epoch + 1) // self.config.every_epochs)
