"""Layer-wise learning-rate decay (LLRD).

Paper: Howard & Ruder 2018 (discriminative fine-tuning, ULMFiT); Sun et al. 2019, "How to
Fine-Tune BERT for Text Classification" (Sec. 5.3, ξ = 0.95 works well for BERT-base); used by
ELECTRA and most strong GLUE recipes.

What it does: lower layers hold general features that need little change, so each layer's LR is
the one above it times ξ. Everything above the encoder (pooling, classifier, any fresh head)
learns at the base ``lr``. Where the top encoder layer sits is a convention (``top_layer_lr``):

* ``decayed`` (the default, and what every benchmark number used; as in Zhang et al. 2021's
  code, "Revisiting Few-sample BERT Fine-tuning"): the top layer already gets ``lr · ξ``. With L
  encoder layers, layer l (1..L) gets ``lr · ξ^(L+1-l)``, the embeddings ``lr · ξ^(L+1)``.
* ``full`` (Sun et al. 2019, Sec. 5.3: η^(l-1) = ξ · η^l with η^L = lr): the top layer gets
  ``lr``, layer l gets ``lr · ξ^(L-l)``, the embeddings ``lr · ξ^L``.

So ``decayed`` with ξ is ``full`` with every encoder LR multiplied by a further ξ.
Weight decay skips biases and LayerNorm weights, as in the default groups.

Plug point: ``param_groups`` (so it cannot be combined with another group builder).
Each group's ``lr`` is the scaled LR and ``lr_scale`` records the factor; the schedule is a
multiplier, so the ratios hold through warm-up and decay.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import check_choice, check_range
from ..engine.optim import is_no_decay
from ..technique import Technique, TrainContext, register
from ._select import backbone, check_layers, layer_number

# Backbone parts that read the top layer's output (a pooler of the HF bridge's models): above the layers.
ABOVE_LAYERS = ("pooler",)


@dataclass(frozen=True)
class LLRDConfig:
    """Args:
    decay: ξ, the LR factor from one layer to the layer below it (1.0 = no decay).
    top_layer_lr: 'decayed' (the top encoder layer gets lr·ξ, as in Zhang et al.'s code) or
        'full' (it gets lr, as in Sun et al. 2019).
    """

    decay: float = 0.9
    top_layer_lr: str = "decayed"

    def __post_init__(self) -> None:
        check_range("llrd.decay", self.decay, 0.0, 1.0, lo_open=True)
        check_choice("llrd.top_layer_lr", self.top_layer_lr, ("decayed", "full"))


def layer_index(name: str, num_layers: int, prefix: str = "encoder.") -> int:
    """0 for embeddings, 1..L for encoder layers, L+1 for everything above the encoder.

    Backbone parameters outside the layers that feed every layer (the embeddings, MPNet's shared
    relative-position bias ``encoder.relative_attention_bias``) are depth 0; a pooler is L+1.
    """
    if not name.startswith(prefix):
        return num_layers + 1
    number = layer_number(name)
    if number is not None:
        return number + 1
    return num_layers + 1 if any(part in ABOVE_LAYERS for part in name.split(".")) else 0


@register("llrd", LLRDConfig)
class LLRD(Technique):
    search_space = {"decay": (0.6, 1.0)}

    def check_backbone(self, encoder: nn.Module) -> None:
        check_layers(encoder, "llrd")

    def param_groups(self, model: nn.Module, ctx: TrainContext) -> list[dict]:
        cfg = ctx.recipe.train
        _, prefix, encoder = backbone(model)
        num_layers = check_layers(encoder, "llrd")
        top = num_layers + 1 if self.config.top_layer_lr == "decayed" else num_layers  # the depth at lr
        groups: dict[tuple[int, bool], dict] = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            depth = layer_index(name, num_layers, prefix)
            no_decay = is_no_decay(name)
            key = (depth, no_decay)
            if key not in groups:
                scale = self.config.decay ** max(0, top - depth)
                groups[key] = {"params": [], "lr": cfg.lr * scale, "lr_scale": scale,
                               "weight_decay": 0.0 if no_decay else cfg.weight_decay,
                               "group_name": f"layer{depth}{'-no_decay' if no_decay else ''}"}
            groups[key]["params"].append(param)
        return [groups[key] for key in sorted(groups)]
