"""Bottleneck adapters with the encoder frozen (Houlsby et al., ICML 2019; as used by LiST).

An adapter maps h to h + W_up·f(W_down·h): down-projection to `size`, a non-linearity, an
up-projection back, and a residual. W_up starts at zero, so at initialisation every adapter is
the identity and the model computes exactly what the pretrained one does. Places (per layer;
the modules are BERT's, which RoBERTa, MiniLM and ELECTRA share, and MPNet's equivalents):

* ``attention``: after the attention output projection, before its residual + LayerNorm
  (Houlsby's first position);
* ``ffn``: after the feed-forward output projection, before its residual + LayerNorm (the
  second position; LiST's default pair is attention + ffn);
* ``layer``: on each layer's output (after its LayerNorm);
* ``embedding``: on the embedding output, once.

The encoder is frozen; what trains is the adapters, the head (our classifier or the prompt's MLM
head transform) and, with ``train_layernorm``, the encoder's LayerNorms. ``result.json``
reports trainable vs total parameters.

Why hand-written: the adapter library (``adapters``, AdapterHub) pins transformers 4.x and does
not import with transformers 5, and PEFT has no bottleneck adapter. The adapters attach with
forward hooks on the encoder's own modules, so the encoder's code and weight names stay as
they are (a saved encoder loads without plmtune) and the adapters live under ``adapters.``.

Plug point: ``prepare_model``. It also fills ``ctx.frozen`` so the loop's best-weights snapshot
and self-training's teacher state hold the trainable share only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import check_choice, check_range
from ..errors import RecipeError
from ..technique import Technique, TrainContext, register
from ._select import backbone, encoder_layers

PLACES = ("embedding", "attention", "ffn", "layer")
# Inside one transformer layer, the module whose output a place transforms: the dropout after the
# attention output projection / after the feed-forward output projection (each before its residual +
# LayerNorm), by BERT's names; architectures naming them otherwise are listed by model_type.
LAYER_POINTS = {"attention": "attention.output.dropout", "ffn": "output.dropout", "layer": ""}
LAYER_POINTS_BY_TYPE = {"mpnet": {"attention": "attention.dropout"}}  # MPNetAttention: LayerNorm(dropout(o(.)) + x)
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


@dataclass(frozen=True)
class AdaptersConfig:
    """Args:
    size: the bottleneck width.
    places: where adapters go: any of embedding, attention, ffn, layer.
    activation: relu, gelu or tanh.
    train_layernorm: also train the encoder's LayerNorm weights (Houlsby et al. do).
    init_std: std of the down-projection's initial weights (the up-projection starts at zero).
    """

    size: int = 64
    places: list[str] = field(default_factory=lambda: ["attention", "ffn"])
    activation: str = "gelu"
    train_layernorm: bool = True
    init_std: float = 0.01

    def __post_init__(self) -> None:
        check_range("adapters.size", self.size, 1, 65_536)
        check_range("adapters.init_std", self.init_std, 0.0, 1.0)
        check_choice("adapters.activation", self.activation, ACTIVATIONS)
        if not self.places or len(set(self.places)) != len(self.places):
            raise ValueError(f"adapters.places must list distinct places, got {self.places}")
        for place in self.places:
            check_choice("adapters.places", place, PLACES)


class Bottleneck(nn.Module):
    def __init__(self, hidden: int, size: int, activation: str, init_std: float):
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(size, hidden)
        nn.init.normal_(self.down.weight, std=init_std)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # identity at start: the model begins as the pretrained one
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.act(self.down(hidden)))


def _apply(adapter: nn.Module):
    def hook(module: nn.Module, args: tuple, output):  # noqa: ARG001 (hook signature)
        if isinstance(output, tuple):  # some layers return (hidden, attentions, ...)
            return (adapter(output[0]), *output[1:])
        return adapter(output)

    return hook


def attachment_points(encoder: nn.Module, places: list[str]) -> dict[str, nn.Module]:
    """{adapter name: module whose output it transforms} in `encoder` (see LAYER_POINTS)."""
    kind = getattr(encoder.config, "model_type", None)
    paths = {**LAYER_POINTS, **LAYER_POINTS_BY_TYPE.get(kind, {})}

    def refuse(what: str) -> RecipeError:
        return RecipeError(f"adapters: backbone type '{kind}' ({type(encoder).__name__}) has {what}, so adapters "
                           f"cannot go at places {list(places)}; they know the layers of BERT, RoBERTa, MiniLM, "
                           "ELECTRA and MPNet. Use adapters.places: [layer] (each layer's output, any "
                           "architecture) or another backbone.")

    try:
        layers = encoder_layers(encoder)
    except ValueError:
        raise refuse("no list of transformer layers") from None
    points: dict[str, nn.Module] = {}
    if "embedding" in places:
        if not isinstance(getattr(encoder, "embeddings", None), nn.Module):
            raise refuse("no 'embeddings' module")
        points["embedding"] = encoder.embeddings
    for i, layer in enumerate(layers):
        for place in (p for p in PLACES if p in places and p != "embedding"):
            try:
                points[f"{place}_{i}"] = layer.get_submodule(paths[place])
            except AttributeError:
                raise refuse(f"no module '{paths[place]}' in its layers (the '{place}' place)") from None
    return points


@register("adapters", AdaptersConfig)
class Adapters(Technique):
    inference = True  # the saved model keeps its adapters
    conflicts_with = {
        "lora": "both freeze the encoder and add their own parameters; use one parameter-efficient method",
        "gradual_unfreeze": "adapters keep the encoder frozen for the whole run",
        "reinit": "re-initialised layers would stay frozen at their random values",
    }

    def check_backbone(self, encoder: nn.Module) -> None:
        attachment_points(encoder, list(self.config.places))

    def prepare_model(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        cfg = self.config
        encoder = backbone(model)[2]
        hidden = encoder.config.hidden_size
        points = attachment_points(encoder, list(cfg.places))
        model.adapters = nn.ModuleDict({name: Bottleneck(hidden, cfg.size, cfg.activation, cfg.init_std)
                                        for name in points})
        model.adapter_hooks = [module.register_forward_hook(_apply(model.adapters[name]))
                               for name, module in points.items()]
        encoder_ids = {id(p) for p in encoder.parameters()}
        for name, param in model.named_parameters(remove_duplicate=False):
            if id(param) in encoder_ids:
                param.requires_grad = cfg.train_layernorm and _is_layernorm(name)
        ctx.frozen |= {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
        return model


def _is_layernorm(name: str) -> bool:
    return "LayerNorm" in name or ".norm" in name.lower()
