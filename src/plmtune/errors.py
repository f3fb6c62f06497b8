"""Errors that the command line reports as one clear paragraph and a non-zero exit.

Anything a user can get wrong (a data file, a recipe, an argument) raises a subclass of
:class:`PlmtuneError`. The CLI prints its message alone, without a traceback, and exits 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping


class PlmtuneError(Exception):
    """Base class of user-facing errors."""


class DataError(PlmtuneError):
    """A data file is malformed. The message names the file, the line and the field."""

    def __init__(self, path: object, message: str, line: int | None = None, field: str | None = None):
        where = f"{path}"
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"Bad data in {where}: {message}")
        self.path, self.line, self.field = path, line, field
        self.detail = message  # what is wrong, without where: re-raised under another name (a temp file's rows)


class RecipeError(PlmtuneError):
    """A recipe (or a --set override) is invalid."""


class TrainingError(PlmtuneError):
    """Training cannot go on (for example a non-finite loss)."""


def suggest(name: str, valid: Iterable[str], aliases: Mapping[str, str] | None = None) -> str:
    """Return ' Did you mean 'x'?' for the closest valid name, or a list of the valid names.

    `aliases` (other accepted names -> the valid name each stands for) are matched too, and named
    with what they stand for, but not listed.
    """
    valid = sorted(valid)
    aliases = aliases or {}
    candidates = [*valid, *sorted(aliases)]
    # An abbreviation ('acc' for 'accuracy') is the likeliest intent; then the closest spelling.
    close = [v for v in candidates if name and v.startswith(name)][:1] or \
        difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    if close:
        hint = f"'{close[0]}'" + (f" (the same as '{aliases[close[0]]}')" if close[0] in aliases else "")
        return f" Did you mean {hint}? Valid: {', '.join(valid)}."
    return f" Valid: {', '.join(valid)}."
