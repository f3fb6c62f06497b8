"""NoisyTune: perturb the pretrained weights a little before fine-tuning.

Paper: Wu et al., "NoisyTune: A Little Noise Can Help You Finetune Pretrained Language Models
Better", ACL 2022. Each parameter matrix W of the pretrained model gets

    W' = W + (U(0, 1) - 0.5) · λ · std(W)          (matrix-wise uniform noise, λ = 0.15)

so every matrix is perturbed in proportion to its own spread. The paper's ablation variants are
here too: ``distribution: gaussian`` draws N(0, 1)/√12 instead of U(0,1)-0.5 (the same variance,
so λ means the same noise power), and ``scope: global`` uses one std over all perturbed
parameters instead of each matrix's own.

Which parameters: the pretrained backbone by default (``include`` unset: ``encoder.*`` in
plmtune's model, ``bert.*`` and the like in a transformers model); the freshly initialised head
is excluded. One-element tensors are skipped (their std is undefined), tied
weights are perturbed once, and the draw uses a generator seeded from the run seed on each
parameter's own device, so every process of a distributed run adds the same noise.

Plug point: ``prepare_model``. The best λ differs per dataset; tune it (0.05–0.3 is typical).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import check_choice, check_range
from ..technique import Technique, TrainContext, register
from ._select import backbone, select_parameters

SEED_OFFSET = 7919  # keeps the noise stream apart from the stream that initialises the head


@dataclass(frozen=True)
class NoisyTuneConfig:
    """Args:
    lam: λ, the noise intensity relative to each matrix's standard deviation.
    distribution: 'uniform' (the paper's) or 'gaussian' (same variance).
    scope: 'matrix' (each matrix's own std; the paper's) or 'global' (one std for all).
    include / exclude: glob patterns over parameter names (e.g. 'encoder.*', '*.bias'); include
        unset means the whole pretrained backbone.
    """

    lam: float = 0.15
    distribution: str = "uniform"
    scope: str = "matrix"
    include: list[str] | None = None
    exclude: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_range("noisytune.lam", self.lam, 0.0, 10.0)
        check_choice("noisytune.distribution", self.distribution, ("uniform", "gaussian"))
        check_choice("noisytune.scope", self.scope, ("matrix", "global"))


def _unit_noise(param: torch.Tensor, distribution: str, generator: torch.Generator) -> torch.Tensor:
    """Zero-mean noise of variance 1/12 (the variance of U(0,1) - 0.5)."""
    if distribution == "uniform":
        return torch.rand(param.shape, generator=generator, device=param.device, dtype=param.dtype) - 0.5
    return torch.randn(param.shape, generator=generator, device=param.device, dtype=param.dtype) / math.sqrt(12)


@torch.no_grad()
def add_noise(model: nn.Module, cfg: NoisyTuneConfig, seed: int) -> dict[str, float]:
    """Perturb the selected parameters in place; return the std used for each."""
    include = cfg.include if cfg.include is not None else [backbone(model)[1] + "*"]
    params = [(n, p) for n, p in select_parameters(model, include, cfg.exclude) if p.numel() > 1]
    if cfg.scope == "global" and params:
        global_std = torch.cat([p.detach().flatten().float().cpu() for _, p in params]).std().item()
    generators: dict[torch.device, torch.Generator] = {}
    used = {}
    for name, param in params:
        if param.device not in generators:
            generators[param.device] = torch.Generator(device=param.device).manual_seed(seed + SEED_OFFSET)
        std = global_std if cfg.scope == "global" else param.std().item()
        param.add_(_unit_noise(param, cfg.distribution, generators[param.device]) * (cfg.lam * std))
        used[name] = std
    return used


@register("noisytune", NoisyTuneConfig)
class NoisyTune(Technique):
    search_space = {"lam": (0.0, 0.3)}

    def prepare_model(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        ctx.extras["noisytune_std"] = add_noise(model, self.config, ctx.seed)
        return model
