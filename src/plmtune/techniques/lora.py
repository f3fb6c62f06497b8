"""LoRA through the PEFT library: low-rank updates on the encoder's attention projections.

Paper: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022. The encoder's
weights are frozen; each targeted linear layer W gets W + (α/r)·B·A with A (r × in), B (out × r),
B initialised at zero so training starts from the pretrained model. Our classification head
stays fully trainable. Implemented by ``peft.get_peft_model`` (not hand-written).

Plug point: ``prepare_model``. ``result.json`` reports trainable vs total parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..config import check_range
from ..technique import Technique, TrainContext, register
from ._select import backbone


@dataclass(frozen=True)
class LoRAConfig:
    """Args:
    r: the rank of the update.
    alpha: the scale numerator (the update is scaled by alpha / r).
    dropout: dropout on the LoRA branch input.
    target_modules: names of the linear layers to adapt (BERT: query, key, value, dense).
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])

    def __post_init__(self) -> None:
        check_range("lora.r", self.r, 1, 4096)
        check_range("lora.alpha", self.alpha, 1, 100_000)
        check_range("lora.dropout", self.dropout, 0.0, 1.0, hi_open=True)
        if not self.target_modules:
            raise ValueError("lora.target_modules must name at least one layer")


@register("lora", LoRAConfig)
class LoRA(Technique):
    requires = ("peft",)

    def prepare_model(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=self.config.r, lora_alpha=self.config.alpha, lora_dropout=self.config.dropout,
                            target_modules=list(self.config.target_modules), bias="none")
        attribute, _, encoder = backbone(model)
        setattr(model, attribute, get_peft_model(encoder, config))
        return model
