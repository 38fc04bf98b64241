"""Typed values <-> JSON data, by reflection on their annotations.

Dataclasses (their ``init`` fields) become objects, enums their values, lists and
tuples arrays; reading back checks every value against its annotation (``Optional``,
unions, ``list``, ``tuple``, ``dict``, enums, nested dataclasses, ``bool``/``int``/
``float``/``str``, ``Any``).  Used for the save file's guest config and the host API's
requests, so that both read their JSON with the same rules.

A value that does not fit raises a `JsonTypeError` subclass carrying the path to it
(``disks[0].format``) and what was wrong, so each user can word it for its readers.
Standard library only: it sits below every other package.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class JsonTypeError(ValueError):
    """JSON data that does not fit the type it is read as.

    ``where`` is the path to the value (``disks[0].format``; empty for the top) and
    ``detail`` what is wrong with it.
    """

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(f"{where}: {detail}" if where else detail)
        self.where = where
        self.detail = detail


class WrongType(JsonTypeError):
    """``value`` is not of the type ``tp``; ``expected`` describes that type in words."""

    def __init__(self, where: str, value: Any, tp: Any, expected: str) -> None:
        super().__init__(where, f"{value!r} is not {expected}")
        self.value = value
        self.tp = tp


class UnknownFields(JsonTypeError):
    """An object has keys that ``cls`` has no field for (data from a newer version)."""

    def __init__(self, where: str, cls: type, names: list[str]) -> None:
        super().__init__(where, f"unknown field(s) {', '.join(names)} in {cls.__name__}")
        self.cls = cls
        self.names = names


class MissingField(JsonTypeError):
    """An object lacks a field of ``cls`` that has no default."""

    def __init__(self, where: str, cls: type, name: str) -> None:
        super().__init__(where, f"required field {name!r} is missing")
        self.cls = cls
        self.name = name


# -- to JSON -------------------------------------------------------------------------


def to_json(value: Any, where: str = "value") -> Any:
    """``value`` as JSON data; `TypeError` naming ``where`` (a path) if part of it has
    no JSON form (a non-finite float, a dict with non-string keys, an object)."""
    if isinstance(value, enum.Enum):
        return to_json(value.value, where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_json(getattr(value, f.name), f"{where}.{f.name}")
            for f in dataclasses.fields(value)
            if f.init
        }
    if isinstance(value, list | tuple):
        return [to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"{where}: dict keys must be strings")
        return {k: to_json(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        raise TypeError(f"{where}: {value!r} has no JSON form")
    if value is None or isinstance(value, str | bool | int | float):
        return value
    raise TypeError(f"{where}: cannot put a {type(value).__name__} in JSON")


# -- from JSON -----------------------------------------------------------------------


def from_json(tp: Any, value: Any, where: str = "") -> Any:
    """``value`` checked against the annotation ``tp`` and converted to it (an enum
    from its value, a dataclass from an object, ...); `JsonTypeError` if it does not fit."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return _union_from_json(tp, value, where)
    if origin is list or origin is tuple:
        return _sequence_from_json(tp, value, where)
    if origin is dict:
        return _dict_from_json(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum_from_json(tp, value, where)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return dataclass_from_json(tp, value, where)
    scalar = _SCALARS.get(tp)
    if scalar is not None:
        expected, fits = scalar
        if not fits(value):
            raise WrongType(where, value, tp, expected)
        return float(value) if tp is float else value
    raise JsonTypeError(where, f"cannot read a field of type {tp!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: The scalar types: how each is described, and which JSON values fit it (bool is
#: not an int here, and an int is a float).
_SCALARS: dict[Any, tuple[str, Callable[[Any], bool]]] = {
    bool: ("a boolean", lambda v: isinstance(v, bool)),
    int: ("an integer", _is_int),
    float: ("a number", lambda v: _is_int(v) or isinstance(v, float)),
    str: ("a string", lambda v: isinstance(v, str)),
}


def _union_from_json(tp: Any, value: Any, where: str) -> Any:
    """The first alternative ``value`` fits; None for an ``Optional`` only."""
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    errors: list[JsonTypeError] = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return from_json(arg, value, where)
        except JsonTypeError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    raise WrongType(where, value, tp, f"any of {tp}")


def _sequence_from_json(tp: Any, value: Any, where: str) -> Any:
    """A list, a ``tuple[X, ...]`` or a fixed-length tuple, from a JSON array."""
    origin = typing.get_origin(tp)
    if not isinstance(value, list):
        raise WrongType(where, value, tp, "a list")
    args = typing.get_args(tp)
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        if len(args) != len(value):
            raise WrongType(where, value, tp, f"a list of {len(args)} items")
        return tuple(
            from_json(a, v, f"{where}[{i}]")
            for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    item = args[0] if args else Any
    items = [from_json(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    return items if origin is list else tuple(items)


def _dict_from_json(tp: Any, value: Any, where: str) -> dict[str, Any]:
    """A ``dict[str, X]`` from a JSON object (whose keys are strings already)."""
    if not isinstance(value, dict):
        raise WrongType(where, value, tp, "an object")
    args = typing.get_args(tp)
    value_tp = args[1] if args else Any
    return {k: from_json(value_tp, v, f"{where}[{k!r}]") for k, v in value.items()}


def _enum_from_json(tp: type[enum.Enum], value: Any, where: str) -> enum.Enum:
    """The member whose value is ``value``, of the same type (``true`` is not 1)."""
    for member in tp:
        if member.value == value and type(member.value) is type(value):
            return member
    values = ", ".join(repr(m.value) for m in tp)
    raise WrongType(where, value, tp, f"a {tp.__name__} ({values})")


def dataclass_from_json(cls: type[T], value: Any, where: str = "") -> T:
    """An instance of the dataclass ``cls`` from a JSON object: every key must be one of
    its ``init`` fields; fields left out take their defaults."""
    if not isinstance(value, dict):
        raise WrongType(where, value, cls, f"an object ({cls.__name__})")
    try:
        hints = typing.get_type_hints(cls)
    except Exception as exc:  # a forward reference that cannot be resolved
        raise JsonTypeError(where, f"cannot resolve {cls.__name__}'s types: {exc}") from None
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise UnknownFields(where, cls, unknown)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = from_json(hints[name], value[name], f"{where}.{name}" if where else name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise MissingField(where, cls, name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise JsonTypeError(where, str(exc)) from None
