"""Argument schemas for services: validation and JSON Schema from one definition.

A service declares its arguments as an ``Object`` of fields; the front desk
validates every request with ``Object.validate`` (unknown fields rejected, every
error names the field), and the OpenAPI document is generated from
``Object.json_schema``. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, Protocol


class Invalid(ValueError):
    """The arguments do not match the schema; the message says where and why."""


class Field(Protocol):
    """One argument's type and limits."""

    def validate(self, name: str, value: Any) -> Any:
        """The value, checked (and normalised); raise ``Invalid`` otherwise."""
        ...

    def json_schema(self) -> dict[str, Any]:
        """This field as JSON Schema."""
        ...


@dataclasses.dataclass(frozen=True)
class Integer:
    """A whole number in ``[minimum, maximum]`` (booleans are not numbers here)."""

    minimum: int | None = None
    maximum: int | None = None
    description: str = ""

    def validate(self, name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"{name} must be an integer")
        if self.minimum is not None and value < self.minimum:
            raise Invalid(f"{name} must be at least {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise Invalid(f"{name} must be at most {self.maximum}")
        return value

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "integer"}
        _put(schema, minimum=self.minimum, maximum=self.maximum, description=self.description)
        return schema


@dataclasses.dataclass(frozen=True)
class String:
    """A string of ``min_length..max_length`` characters, optionally matching ``pattern``."""

    min_length: int = 0
    max_length: int = 256
    pattern: str | None = None
    description: str = ""

    def validate(self, name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid(f"{name} must be a string")
        if not self.min_length <= len(value) <= self.max_length:
            raise Invalid(f"{name} must have {self.min_length} to {self.max_length} characters")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise Invalid(f"{name} must match {self.pattern}")
        return value

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "string", "minLength": self.min_length, "maxLength": self.max_length,
        }  # fmt: skip
        _put(schema, pattern=self.pattern, description=self.description)
        return schema


@dataclasses.dataclass(frozen=True)
class Object:
    """A JSON object with exactly the named fields; ``optional`` ones may be missing."""

    fields: Mapping[str, Field]
    optional: frozenset[str] = frozenset()

    def validate(self, value: Any, name: str = "args") -> dict[str, Any]:
        """The checked arguments; raise ``Invalid`` on the first problem found."""
        if not isinstance(value, Mapping):
            raise Invalid(f"{name} must be an object")
        unknown = sorted(set(value) - set(self.fields))
        if unknown:
            raise Invalid(f"{name} has unknown field(s): {', '.join(map(str, unknown))}")
        checked: dict[str, Any] = {}
        for key, field in self.fields.items():
            if key in value:
                checked[key] = field.validate(f"{name}.{key}", value[key])
            elif key not in self.optional:
                raise Invalid(f"{name}.{key} is required")
        return checked

    def json_schema(self) -> dict[str, Any]:
        """This object as JSON Schema (``additionalProperties: false``)."""
        return {
            "type": "object",
            "properties": {key: field.json_schema() for key, field in self.fields.items()},
            "required": [key for key in self.fields if key not in self.optional],
            "additionalProperties": False,
        }


def _put(schema: dict[str, Any], **values: Any) -> None:
    camel = {"max_length": "maxLength"}
    for key, value in values.items():
        if value not in (None, ""):
            schema[camel.get(key, key)] = value
