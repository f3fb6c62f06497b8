"""Re-initialise the top encoder layers before fine-tuning.

Papers: Zhang et al., "Revisiting Few-sample BERT Fine-tuning", ICLR 2021 (re-init of the top
k layers and the pooler stabilises few-sample fine-tuning); Mosbach et al., ICLR 2021.

The top ``layers`` transformer layers get BERT's initialisation again: Linear weights from
N(0, initializer_range²), biases 0, LayerNorm weight 1 and bias 0. (Our head has no pooler of
BERT's: the backbone's pooler is dropped at load time, so re-initialising it is moot.)

Plug point: ``prepare_model``. Draws use a generator seeded from the run seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import check_range
from ..errors import RecipeError
from ..technique import Technique, TrainContext, register
from ._select import backbone, check_layers, encoder_layers

SEED_OFFSET = 104729


@dataclass(frozen=True)
class ReinitConfig:
    """Args:
    layers: how many of the top encoder layers to re-initialise (1 to all).
    """

    layers: int = 1

    def __post_init__(self) -> None:
        check_range("reinit.layers", self.layers, 1, 1000)


@torch.no_grad()
def reinit_top_layers(model: nn.Module, count: int, std: float, seed: int) -> list[int]:
    layers = encoder_layers(model)
    if count > len(layers):
        raise ValueError(f"reinit.layers = {count} but the encoder has only {len(layers)} layers")
    generator = torch.Generator().manual_seed(seed + SEED_OFFSET)
    chosen = list(range(len(layers) - count, len(layers)))
    for index in chosen:
        for module in layers[index].modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
    return chosen


@register("reinit", ReinitConfig)
class Reinit(Technique):
    def check_backbone(self, encoder: nn.Module) -> None:
        count = check_layers(encoder, "reinit")
        if self.config.layers > count:
            raise RecipeError(f"reinit.layers = {self.config.layers}, but backbone type "
                              f"'{encoder.config.model_type}' has only {count} layers; re-initialise at most {count}.")

    def prepare_model(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        std = getattr(backbone(model)[2].config, "initializer_range", 0.02)
        ctx.extras["reinit_layers"] = reinit_top_layers(model, self.config.layers, std, ctx.seed)
        return model
