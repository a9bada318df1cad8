"""Unit tests for ``grandhotel.schemas``: argument validation and its JSON Schema."""

from __future__ import annotations

import pytest

from grandhotel import schemas

SUITS = schemas.Integer(minimum=1, maximum=100, description="Suits to clean.")
ROOM = schemas.String(min_length=3, max_length=8, pattern=r"room-\d+")
ARGS = schemas.Object({"suits": SUITS, "room": ROOM}, optional=frozenset({"room"}))


@pytest.mark.parametrize("value", [1, 50, 100])
def test_integer_accepts_values_in_range(value: int) -> None:
    assert SUITS.validate("suits", value) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "suits must be at least 1"),
        (101, "suits must be at most 100"),
        (True, "suits must be an integer"),
        (False, "suits must be an integer"),
        (2.0, "suits must be an integer"),
        ("3", "suits must be an integer"),
        (None, "suits must be an integer"),
    ],
)
def test_integer_rejects(value: object, message: str) -> None:
    with pytest.raises(schemas.Invalid) as caught:
        SUITS.validate("suits", value)
    assert str(caught.value) == message


def test_integer_without_bounds_takes_any_int() -> None:
    assert schemas.Integer().validate("n", -(10**30)) == -(10**30)


def test_integer_json_schema() -> None:
    assert SUITS.json_schema() == {
        "type": "integer", "minimum": 1, "maximum": 100, "description": "Suits to clean.",
    }  # fmt: skip
    assert schemas.Integer(minimum=0).json_schema() == {"type": "integer", "minimum": 0}


@pytest.mark.parametrize("value", ["room-1", "room-123"])
def test_string_accepts(value: str) -> None:
    assert ROOM.validate("room", value) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (412, "room must be a string"),
        ("ro", "room must have 3 to 8 characters"),
        ("room-12345", "room must have 3 to 8 characters"),
        ("suite-1", r"room must match room-\d+"),
        ("room-1x", r"room must match room-\d+"),
    ],
)
def test_string_rejects(value: object, message: str) -> None:
    with pytest.raises(schemas.Invalid) as caught:
        ROOM.validate("room", value)
    assert str(caught.value) == message


def test_string_json_schema() -> None:
    assert ROOM.json_schema() == {
        "type": "string", "minLength": 3, "maxLength": 8, "pattern": r"room-\d+",
    }  # fmt: skip
    assert schemas.String().json_schema() == {"type": "string", "minLength": 0, "maxLength": 256}


def test_object_returns_the_checked_fields() -> None:
    assert ARGS.validate({"suits": 3, "room": "room-9"}) == {"suits": 3, "room": "room-9"}
    assert ARGS.validate({"suits": 3}) == {"suits": 3}


def test_object_rejects_unknown_fields_by_name() -> None:
    with pytest.raises(schemas.Invalid, match=r"args has unknown field\(s\): colour, shirts"):
        ARGS.validate({"suits": 3, "shirts": 1, "colour": "red"})


def test_object_names_a_missing_required_field() -> None:
    with pytest.raises(schemas.Invalid, match=r"^args\.suits is required$"):
        ARGS.validate({"room": "room-9"})


def test_object_names_the_bad_field_with_its_path() -> None:
    with pytest.raises(schemas.Invalid, match=r"^body\.suits must be an integer$"):
        ARGS.validate({"suits": True}, name="body")


@pytest.mark.parametrize("value", [[("suits", 3)], "suits=3", None, 3])
def test_object_must_be_a_mapping(value: object) -> None:
    with pytest.raises(schemas.Invalid, match=r"^args must be an object$"):
        ARGS.validate(value)


def test_invalid_is_a_value_error() -> None:
    assert issubclass(schemas.Invalid, ValueError)


def test_object_json_schema() -> None:
    assert ARGS.json_schema() == {
        "type": "object",
        "properties": {"suits": SUITS.json_schema(), "room": ROOM.json_schema()},
        "required": ["suits"],
        "additionalProperties": False,
    }
