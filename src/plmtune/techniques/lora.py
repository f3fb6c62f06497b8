"""LoRA through the PEFT library: low-rank updates on the encoder's attention projections.

Paper: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022. The encoder's
weights are frozen; each targeted linear layer W gets W + (α/r)·B·A with A (r × in), B (out × r),
B initialised at zero so training starts from the pretrained model. Our classification head
stays fully trainable. Implemented by ``peft.get_peft_model`` (not hand-written).

Which layers: ``target_modules`` unset means the attention query and value projections of the
backbone's architecture, by its model_type: PEFT's own table (BERT, RoBERTa, ELECTRA, DeBERTa, ...:
``query``/``value`` or their names there), and :data:`TARGETS` for types PEFT has none for (MPNet:
``q``/``v``). Names that match no linear layer of the backbone are refused before any weights load.

Plug points: ``prepare_model``; ``export_model`` merges the updates into the saved encoder. ``result.json`` reports trainable vs total parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import check_range
from ..errors import RecipeError
from ..technique import Technique, TrainContext, register
from ._select import backbone


@dataclass(frozen=True)
class LoRAConfig:
    """Args:
    r: the rank of the update.
    alpha: the scale numerator (the update is scaled by alpha / r).
    dropout: dropout on the LoRA branch input.
    target_modules: names of the linear layers to adapt (BERT: query, key, value, dense; MPNet: q, k,
        v, o); unset = the architecture's query and value projections.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        check_range("lora.r", self.r, 1, 4096)
        check_range("lora.alpha", self.alpha, 1, 100_000)
        check_range("lora.dropout", self.dropout, 0.0, 1.0, hi_open=True)
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("lora.target_modules must name at least one layer (or be unset for the "
                             "architecture's query and value projections)")


# Query/value projections of architectures PEFT's table (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING) lacks.
TARGETS = {"mpnet": ["q", "v"]}


def target_modules(config: LoRAConfig, encoder: nn.Module) -> list[str]:
    """The layer names to adapt in `encoder` (a bare encoder or a skeleton); a RecipeError where they match none."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    kind = getattr(encoder.config, "model_type", None)
    full = [name for name, m in encoder.named_modules() if isinstance(m, nn.Linear)]
    linear = sorted({name.rpartition(".")[2] for name in full})
    names = config.target_modules or TARGETS.get(kind) or PEFT_TARGETS.get(kind)
    if not names:
        raise RecipeError(f"lora: no default target_modules for backbone type '{kind}'; set lora.target_modules "
                          f"to some of its linear layers: {', '.join(linear)}.")
    # PEFT matches a name against the end of each module's dotted path
    unknown = [n for n in names if not any(f == n or f.endswith(f".{n}") for f in full)]
    if unknown:
        verb = "is no linear layer" if len(unknown) == 1 else "are no linear layers"
        raise RecipeError(f"lora.target_modules {list(names)}: {', '.join(map(repr, unknown))} {verb} of backbone "
                          f"type '{kind}' ({type(encoder).__name__}), whose linear layers are named "
                          f"{', '.join(linear)}; name some of those, or leave target_modules unset for the "
                          "architecture's query and value projections.")
    return list(names)


@register("lora", LoRAConfig)
class LoRA(Technique):
    requires = ("peft",)

    def check_backbone(self, encoder: nn.Module) -> None:
        target_modules(self.config, encoder)

    def prepare_model(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        attribute, _, encoder = backbone(model)
        config = LoraConfig(r=self.config.r, lora_alpha=self.config.alpha, lora_dropout=self.config.dropout,
                            target_modules=target_modules(self.config, encoder), bias="none")
        setattr(model, attribute, get_peft_model(encoder, config))
        return model

    def export_model(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        """The low-rank updates merged into the encoder's weights: a plain encoder, loadable anywhere."""
        attribute, _, encoder = backbone(model)
        if hasattr(encoder, "merge_and_unload"):
            setattr(model, attribute, encoder.merge_and_unload())
        return model
