"""Finding the pretrained backbone in a model and choosing parameters by name patterns.

Techniques work on plmtune's SequenceClassifier (backbone under ``encoder``) and, through the
Hugging Face bridge, on transformers' task models (backbone under ``base_model_prefix``, e.g.
``bert``), so they ask here where the backbone is instead of assuming a name.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence

from torch import nn


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
