"""Finding the pretrained backbone in a model and choosing parameters by name patterns.

Techniques work on plmtune's SequenceClassifier (backbone under ``encoder``) and, through the
Hugging Face bridge, on transformers' task models (backbone under ``base_model_prefix``, e.g.
``bert``), so they ask here where the backbone is instead of assuming a name.

Per-layer techniques (LLRD, re-init, gradual unfreezing, ChildTuning-D) find the transformer layers
here too, by structure: the ``ModuleList`` named ``layer``/``layers``/``h``/``block(s)`` holding
``config.num_hidden_layers`` layers (``encoder.layer`` in BERT, RoBERTa, MPNet, ELECTRA, DeBERTa;
``transformer.layer`` in DistilBERT). :func:`check_layers` says, before any weights load, where an
architecture has no such per-layer parameters (ALBERT shares one layer's weights across all).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Sequence

from torch import nn

from ..errors import RecipeError

LAYER_LISTS = ("layer", "layers", "h", "block", "blocks")
# A parameter inside transformer layer N: '...layer.N...' and the other names above.
LAYER_NAME = re.compile(rf"(?:^|\.)(?:{'|'.join(LAYER_LISTS)})\.(\d+)\.")


def select_parameters(model: nn.Module, include: Sequence[str], exclude: Sequence[str] = ()
                      ) -> Iterator[tuple[str, nn.Parameter]]:
    """Yield (name, parameter) whose name matches an `include` glob and no `exclude` glob.

    Tied parameters (one tensor under two names) are yielded once, under their first name.
    """
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            continue
        if any(fnmatch.fnmatchcase(name, pat) for pat in include) and \
                not any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
            seen.add(id(param))
            yield name, param


def backbone(model: nn.Module) -> tuple[str, str, nn.Module]:
    """(attribute name, parameter-name prefix, module) of the pretrained encoder in `model`."""
    attribute = getattr(model, "backbone_attribute", None)  # plmtune's own models
    if attribute:
        return attribute, f"{attribute}.", getattr(model, attribute)
    attribute = getattr(model, "base_model_prefix", "")
    if attribute and isinstance(getattr(model, attribute, None), nn.Module):
        return attribute, f"{attribute}.", getattr(model, attribute)
    raise ValueError(f"cannot find the pretrained backbone in {type(model).__name__}: expected plmtune's "
                     "SequenceClassifier or a transformers model with base_model_prefix")


def layer_number(name: str) -> int | None:
    """The 0-based transformer layer a parameter name lies in, or None (embeddings, head, shared parts)."""
    match = LAYER_NAME.search(name)
    return int(match.group(1)) if match else None


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer layers of the backbone in `model` (or of a bare encoder; also under a PEFT wrapper)."""
    try:
        config = backbone(model)[2].config
    except ValueError:
        config = getattr(model, "config", None)
    count = getattr(config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rpartition(".")[2] in LAYER_LISTS \
                and (count is None or len(module) == count):
            return module
    raise ValueError(f"no list of transformer layers ({' / '.join(LAYER_LISTS)}, {count} of them) found in "
                     f"{type(model).__name__}")


def check_layers(encoder: nn.Module, who: str) -> int:
    """The number of layers of `encoder` (a bare encoder, e.g. a weightless skeleton) after checking that
    its parameters lie in that many numbered layers; a RecipeError naming `who` where they do not."""
    count = encoder.config.num_hidden_layers
    found = {layer_number(name) for name, _ in encoder.named_parameters()} - {None}
    if found != set(range(count)):
        kind = getattr(encoder.config, "model_type", type(encoder).__name__)
        raise RecipeError(f"{who} works layer by layer, but backbone type '{kind}' ({type(encoder).__name__}) has no "
                          f"parameters in {count} numbered layers (names like 'encoder.layer.N.'; found "
                          f"{len(found)}): its layers share weights or are named otherwise, so {who} cannot tell "
                          f"them apart. Remove {who} from the recipe or use a BERT-style backbone (BERT, RoBERTa, "
                          "MPNet, MiniLM, ELECTRA, DeBERTa).")
    return count
