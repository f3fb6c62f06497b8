"""Layer-wise learning-rate decay (LLRD).

Paper: Howard & Ruder 2018 (discriminative fine-tuning, ULMFiT); Sun et al. 2019, "How to
Fine-Tune BERT for Text Classification" (Sec. 5.3, ξ = 0.95 works well for BERT-base); used by
ELECTRA and most strong GLUE recipes.

What it does: lower layers hold general features that need little change, so each layer's LR is
the one above it times ξ. With L encoder layers, layer l (1..L) gets ``lr · ξ^(L+1-l)``, the
embeddings ``lr · ξ^(L+1)``, and everything above the encoder (pooling, classifier, any fresh
head) the base ``lr``. Weight decay skips biases and LayerNorm weights, as in the default groups.

Plug point: ``param_groups`` (so it cannot be combined with another group builder).
Each group's ``lr`` is the scaled LR and ``lr_scale`` records the factor; the schedule is a
multiplier, so the ratios hold through warm-up and decay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ..config import check_range
from ..engine.optim import is_no_decay
from ..technique import Technique, TrainContext, register
from ._select import backbone

_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")


@dataclass(frozen=True)
class LLRDConfig:
    """Args:
    decay: ξ, the LR factor from one layer to the layer below it (1.0 = no decay).
    """

    decay: float = 0.9

    def __post_init__(self) -> None:
        check_range("llrd.decay", self.decay, 0.0, 1.0, lo_open=True)


def layer_index(name: str, num_layers: int, prefix: str = "encoder.") -> int:
    """0 for embeddings, 1..L for encoder layers, L+1 for everything above the encoder."""
    if not name.startswith(prefix):
        return num_layers + 1
    match = _LAYER.search(name)
    if match:
        return int(match.group(1)) + 1
    return 0 if "embeddings" in name else num_layers + 1


@register("llrd", LLRDConfig)
class LLRD(Technique):
    search_space = {"decay": (0.6, 1.0)}

    def param_groups(self, model: nn.Module, ctx: TrainContext) -> list[dict]:
        cfg = ctx.recipe.train
        _, prefix, encoder = backbone(model)
        num_layers = encoder.config.num_hidden_layers
        groups: dict[tuple[int, bool], dict] = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            depth = layer_index(name, num_layers, prefix)
            no_decay = is_no_decay(name)
            key = (depth, no_decay)
            if key not in groups:
                scale = self.config.decay ** (num_layers + 1 - depth)
                groups[key] = {"params": [], "lr": cfg.lr * scale, "lr_scale": scale,
                               "weight_decay": 0.0 if no_decay else cfg.weight_decay,
                               "group_name": f"layer{depth}{'-no_decay' if no_decay else ''}"}
            groups[key]["params"].append(param)
        return [groups[key] for key in sorted(groups)]
