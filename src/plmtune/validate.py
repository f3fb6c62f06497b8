"""Checking configuration values: ranges, choices, types, and building dataclasses from mappings.

Bounds are declared once, on the field (:func:`bounded`, :func:`one_of`), and checked by
:func:`check_declared` in the dataclass's ``__post_init__`` and by :func:`build_dataclass`
before construction, so that a message names the value by the path where it sits in the
recipe (``train.lr``, ``techniques[0](llrd).decay``), not by a hand-typed string.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import RecipeError, suggest


def check_range(where: str, value: float, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """Raise RecipeError unless lo <= value <= hi (or strict where *_open)."""
    ok = True
    if lo is not None:
        ok &= value > lo if lo_open else value >= lo
    if hi is not None:
        ok &= value < hi if hi_open else value <= hi
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise RecipeError(f"{where} = {value!r} is out of range; allowed: {left}{lo_s}, {hi_s}{right}.")


def check_choice(where: str, value: str, choices: Iterable[str]) -> None:
    if value not in choices:
        raise RecipeError(f"{where} = {value!r} is not allowed.{suggest(str(value), choices)}")


# --------------------------------------------------------------------------- declared bounds


def bounded(default: Any, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
            hi_open: bool = False) -> Any:
    """A dataclass field whose value must lie in [lo, hi] (open ends where *_open); None is allowed
    for optional fields."""
    return dataclasses.field(default=default, metadata={"range": (lo, hi, lo_open, hi_open)})


def one_of(default: str, choices: Iterable[str]) -> Any:
    """A dataclass field whose value must be one of `choices`."""
    return dataclasses.field(default=default, metadata={"choices": tuple(choices)})


def _check_field(field: dataclasses.Field, value: Any, where: str) -> None:
    if value is None:
        return
    if "range" in field.metadata:
        lo, hi, lo_open, hi_open = field.metadata["range"]
        check_range(where, value, lo, hi, lo_open, hi_open)
    if "choices" in field.metadata:
        check_choice(where, value, field.metadata["choices"])


def check_declared(obj: Any, where: str) -> None:
    """Check every field of dataclass `obj` against the bounds declared on it."""
    for f in dataclasses.fields(obj):
        _check_field(f, getattr(obj, f.name), f"{where}.{f.name}")


def _check_values(cls: type, values: Mapping[str, Any], where: str) -> None:
    for f in dataclasses.fields(cls):
        if f.name in values:
            _check_field(f, values[f.name], f"{where}.{f.name}")


# --------------------------------------------------------------------------- types


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a simple annotation (int, float, bool, str, list[str], X | None)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except RecipeError as err:
                errors.append(err)
        raise errors[0]
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where} must be a list, got {value!r}.")
        (item,) = typing.get_args(hint)[:1]
        return [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where} must be true or false, got {value!r}.")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where} must be an integer, got {value!r}.")
        return value
    if hint is float:
        if isinstance(value, str):
            # YAML 1.1 reads '1e-4' (no dot) as a string; accept it as the number it means.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where} must be a number, got {value!r}.")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where} must be a string, got {value!r}.")
        return value
    if hint is typing.Any:
        return value
    raise TypeError(f"unsupported annotation {_type_name(hint)} for {where}")


_coerce = coerce  # the name earlier versions used


def build_dataclass(cls: type, raw: Any, where: str, skip: tuple[str, ...] = ()) -> Any:
    """Build `cls` from a mapping, rejecting unknown keys with the nearest valid name.

    Declared bounds are checked first, with `where` as the path of each value.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{where} must be a mapping of keys to values, got {raw!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key in skip:
            continue
        if key not in names:
            raise RecipeError(f"Unknown key {f'{where}.{key}'!r}.{suggest(str(key), names)}")
        kwargs[key] = coerce(value, hints[key], f"{where}.{key}")
    _check_values(cls, kwargs, where)
    try:
        return cls(**kwargs)
    except RecipeError:
        raise
    except (TypeError, ValueError) as err:
        raise RecipeError(f"{where}: {err}") from err
