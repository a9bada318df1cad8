"""Loads the safe's SQL from ``.sql`` files: no SQL is written inline elsewhere.

``queries.sql`` holds named blocks, each opened by a ``-- name --`` line and a
comment saying what it does. Migrations are numbered files in ``migrations/``.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import LiteralString

_BLOCK = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)


def _read(name: str) -> str:
    return resources.files("grandhotel.safe").joinpath(name).read_text(encoding="utf-8")


def parse(text: str) -> dict[str, LiteralString]:
    """Split a file of named blocks into ``{name: sql}``."""
    parts = _BLOCK.split(text)
    blocks: dict[str, LiteralString] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in blocks:
            raise ValueError(f"duplicate SQL block {name!r}")
        # Comment lines go: a "%(name)s" in a comment would count as a parameter.
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        blocks[name] = "\n".join(lines).strip().rstrip(";")  # mypy: LiteralString is str
    return blocks


QUERIES = parse(_read("queries.sql"))


def schema() -> LiteralString:
    """The current schema, ``schema.sql``."""
    return _read("schema.sql")  # mypy treats LiteralString as str


def migrations() -> list[tuple[int, str, LiteralString]]:
    """Every migration as ``(version, name, sql)``, in order."""
    folder = resources.files("grandhotel.safe").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found)
