"""Dataclasses <-> JSON-able dicts for the aggregate's jsonb body."""
from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from datetime import date, datetime
from typing import Any


_SCALARS = (str, int, float, bool, type(None))
# One converter per type, found once: the body is written on every create and transition.
_CONVERTERS: dict[type, Callable[[Any], Any]] = {}


def to_plain(value: Any) -> Any:
    convert = _CONVERTERS.get(type(value))
    if convert is None:
        convert = _CONVERTERS[type(value)] = _converter(type(value))
    return convert(value)


def _identity(value: Any) -> Any:
    return value


def _converter(tp: type) -> Callable[[Any], Any]:
    if tp in _SCALARS:
        return _identity
    if dataclasses.is_dataclass(tp):
        names = tuple(f.name for f in dataclasses.fields(tp))
        return lambda v: {name: to_plain(getattr(v, name)) for name in names}
    if issubclass(tp, enum.Enum):
        return lambda v: v.value
    if issubclass(tp, datetime | date):
        return lambda v: v.isoformat()
    if issubclass(tp, list | tuple):
        return lambda v: [to_plain(x) for x in v]
    if issubclass(tp, dict):
        return lambda v: {k: to_plain(x) for k, x in v.items()}
    return _identity


def from_plain(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return from_plain(inner[0], value)
    if origin is list:
        (item,) = typing.get_args(tp)
        return [from_plain(item, v) for v in value]
    if origin is dict:
        return dict(value)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        known = {f.name for f in dataclasses.fields(tp)}
        return tp(**{k: from_plain(hints[k], v) for k, v in value.items() if k in known})
    if tp is datetime:
        return datetime.fromisoformat(value)
    if tp is date:
        return date.fromisoformat(value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    return value
