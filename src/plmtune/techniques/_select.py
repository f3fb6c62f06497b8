"""Choosing parameters by name patterns (shared by the techniques that act on a subset)."""

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
