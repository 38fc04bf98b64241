"""The typed-JSON codec: round trips (property tests) and what it refuses."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stubdom import typedjson
from stubdom.typedjson import MissingField, UnknownFields, WrongType


class Colour(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 0
    HIGH = 1


@dataclass(frozen=True)
class Inner:
    x: int
    label: str | None = None


@dataclass(frozen=True)
class Outer:
    name: str
    colour: Colour
    level: Level
    ratio: float
    flag: bool
    inners: list[Inner] = field(default_factory=list)
    pair: tuple[int, str] = (0, "")
    many: tuple[int, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    maybe: Inner | None = None
    either: int | str = 0
    anything: Any = None


_text = st.text(max_size=8)
_inners = st.builds(Inner, x=st.integers(), label=st.none() | _text)
_outers = st.builds(
    Outer,
    name=_text,
    colour=st.sampled_from(Colour),
    level=st.sampled_from(Level),
    ratio=st.floats(allow_nan=False, allow_infinity=False),
    flag=st.booleans(),
    inners=st.lists(_inners, max_size=3),
    pair=st.tuples(st.integers(), _text),
    many=st.lists(st.integers(), max_size=3).map(tuple),
    env=st.dictionaries(_text, _text, max_size=3),
    maybe=st.none() | _inners,
    either=st.integers() | _text,
    anything=st.none() | st.integers() | _text,
)


@given(_outers)
def test_round_trip_through_json_text(value: Outer) -> None:
    data = json.loads(json.dumps(typedjson.to_json(value)))
    assert typedjson.from_json(Outer, data) == value


@given(_outers)
def test_enums_are_their_values(value: Outer) -> None:
    data = typedjson.to_json(value)
    assert (data["colour"], data["level"]) == (value.colour.value, int(value.level))
    assert type(data["level"]) is int


def test_missing_fields_take_defaults() -> None:
    data = {"name": "n", "colour": "red", "level": 0, "ratio": 1, "flag": False}
    out = typedjson.from_json(Outer, data)
    assert out.inners == [] and out.ratio == 1.0 and isinstance(out.ratio, float)


@pytest.mark.parametrize(
    ("tp", "value", "message"),
    [
        (int, True, "True is not an integer"),
        (int, "3", "'3' is not an integer"),
        (bool, 1, "1 is not a boolean"),
        (float, "1", "'1' is not a number"),
        (str, 1, "1 is not a string"),
        (list[int], {}, "{} is not a list"),
        (dict[str, int], [], "[] is not an object"),
        (tuple[int, str], [1], "[1] is not a list of 2 items"),
        (Colour, "green", "'green' is not a Colour ('red', 'blue')"),
        (Level, True, "True is not a Level (0, 1)"),
        (Inner, [], "[] is not an object (Inner)"),
        (list[Inner], [{"x": "y"}], "[0].x: 'y' is not an integer"),
        (dict[str, Inner], {"k": {"x": 1, "label": 2}}, "['k'].label: 2 is not a string"),
    ],
)
def test_wrong_types(tp: Any, value: object, message: str) -> None:
    with pytest.raises(WrongType) as e:
        typedjson.from_json(tp, value)
    assert str(e.value) == message


def test_unknown_and_missing_fields_name_the_path() -> None:
    with pytest.raises(UnknownFields) as unknown:
        typedjson.from_json(list[Inner], [{"x": 1, "y": 2, "a": 3}])
    assert (unknown.value.where, unknown.value.names) == ("[0]", ["a", "y"])
    assert str(unknown.value) == "[0]: unknown field(s) a, y in Inner"
    with pytest.raises(MissingField) as missing:
        typedjson.from_json(Outer, {"name": "n"})
    assert (missing.value.where, missing.value.name, missing.value.cls) == ("", "colour", Outer)


def test_unsupported_types_and_values() -> None:
    with pytest.raises(typedjson.JsonTypeError, match="cannot read a field of type"):
        typedjson.from_json(bytes, b"")
    with pytest.raises(TypeError, match=r"value\.ratio: nan has no JSON form"):
        typedjson.to_json(Outer("n", Colour.RED, Level.LOW, float("nan"), False))
    with pytest.raises(TypeError, match="dict keys must be strings"):
        typedjson.to_json({1: 2})
    with pytest.raises(TypeError, match="cannot put a bytes in JSON"):
        typedjson.to_json(b"")
