"""Typed settings: what a setting accepts, read from its annotation (``int``, ``float``, ``bool``,
``str``, a ``Literal`` of the valid values, ``X | None``), and a message naming the valid values
when a value does not fit. Trial settings (``TrialConfig``'s fields) and each model's settings
(its constructor's keyword arguments) are checked with it where they are read: when a search
space loads, and when a trial's settings are built."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal


def accepts(annotation: Any, value: Any) -> bool:
    """Whether ``value`` fits ``annotation`` (a float setting takes an int too; a bool is
    never a number)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return any(value == v and type(value) is type(v) for v in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return any(accepts(a, value) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if annotation is Any:
        return True
    return isinstance(value, annotation) if isinstance(annotation, type) else True


def describe(annotation: Any) -> str:
    """What a setting accepts, in words: ``one of 'paper', 'reference'``, ``an int``."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    name = getattr(annotation, "__name__", str(annotation))
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def problem(name: str, annotation: Any, value: Any) -> str | None:
    """Why ``value`` cannot be setting ``name`` (None when it can)."""
    if accepts(annotation, value):
        return None
    return f"{name}: {value!r} is not {describe(annotation)}"
