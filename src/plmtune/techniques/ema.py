"""EMA: keep an exponential moving average of the weights and evaluate with it.

Reference: Polyak & Juditsky 1992; common in fine-tuning recipes (e.g. timm's ModelEmaV2).
After every optimiser step: shadow ← decay · shadow + (1 − decay) · weights (floating-point
parameters and buffers). Dev evaluation, the checkpoint pick and so the test run all use the
shadow weights; training continues on the raw weights. ``warmup`` lowers the decay early on
(decay_t = min(decay, (1 + t) / (10 + t))), so the average does not stay stuck at the
pretrained weights during short few-shot runs.

Plug points: ``on_fit_start``, ``on_step_end``, ``on_evaluate_start``/``on_evaluate_end``
(swap the shadow in and out), ``on_fit_end`` (without a dev split the final model is the
shadow), ``state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check_range
from ..technique import Technique, TrainContext, register


@dataclass(frozen=True)
class EMAConfig:
    """Args:
    decay: the averaging factor per step (0.99–0.9999; few steps want the lower end).
    warmup: lower the decay during the first steps.
    """

    decay: float = 0.99
    warmup: bool = True

    def __post_init__(self) -> None:
        check_range("ema.decay", self.decay, 0.0, 1.0, hi_open=True)


@register("ema", EMAConfig)
class EMA(Technique):
    search_space = {"decay": (0.9, 0.999)}

    def __init__(self, config: EMAConfig):
        super().__init__(config)
        self.shadow: dict[str, torch.Tensor] = {}
        self.backup: dict[str, torch.Tensor] = {}
        self.updates = 0

    def _tensors(self, ctx: TrainContext) -> dict[str, torch.Tensor]:
        model = ctx.bare_model()
        return {k: v for k, v in model.state_dict().items() if v.dtype.is_floating_point}

    def on_fit_start(self, ctx: TrainContext) -> None:
        if not self.shadow:
            self.shadow = {k: v.detach().clone() for k, v in self._tensors(ctx).items()}

    @torch.no_grad()
    def on_step_end(self, ctx: TrainContext) -> None:
        self.updates += 1
        decay = self.config.decay
        if self.config.warmup:
            decay = min(decay, (1 + self.updates) / (10 + self.updates))
        for name, value in self._tensors(ctx).items():
            self.shadow[name].lerp_(value.detach(), 1 - decay)

    @torch.no_grad()
    def on_evaluate_start(self, ctx: TrainContext) -> None:
        tensors = self._tensors(ctx)
        self.backup = {k: v.detach().clone() for k, v in tensors.items()}
        for name, value in tensors.items():
            value.copy_(self.shadow[name])

    @torch.no_grad()
    def on_evaluate_end(self, ctx: TrainContext) -> None:
        for name, value in self._tensors(ctx).items():
            value.copy_(self.backup[name])
        self.backup = {}

    @torch.no_grad()
    def on_fit_end(self, ctx: TrainContext) -> None:
        if not ctx.restored_best:
            for name, value in self._tensors(ctx).items():
                value.copy_(self.shadow[name])

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.shadow, self.updates = state.get("shadow", {}), state.get("updates", 0)
