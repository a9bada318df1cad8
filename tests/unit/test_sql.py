"""Unit tests for ``grandhotel.safe.sql``: named SQL blocks, loaded from files."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from grandhotel.safe import sql

TWO_BLOCKS = """\
-- first --
-- Reads one thing; %(unused)s in a comment is no parameter.
SELECT 1;

-- second --
  -- an indented comment line goes too
SELECT %(x)s
FROM t;
"""


def test_parse_splits_named_blocks() -> None:
    assert sql.parse(TWO_BLOCKS) == {"first": "SELECT 1", "second": "SELECT %(x)s\nFROM t"}


def test_parse_strips_comment_lines() -> None:
    blocks = sql.parse(TWO_BLOCKS)
    assert "unused" not in blocks["first"]
    assert "--" not in blocks["second"]


def test_parse_ignores_text_before_the_first_block() -> None:
    assert sql.parse("-- a file header\n\n-- only --\nSELECT 2;\n") == {"only": "SELECT 2"}


def test_parse_rejects_a_duplicate_name() -> None:
    with pytest.raises(ValueError, match="duplicate SQL block 'first'"):
        sql.parse(TWO_BLOCKS + "\n-- first --\nSELECT 3;\n")


def test_a_header_must_be_the_whole_line() -> None:
    blocks = sql.parse("-- one --\nSELECT 1 -- two --\n")
    assert list(blocks) == ["one"]


def test_every_real_query_loads() -> None:
    assert sql.QUERIES
    for name, query in sql.QUERIES.items():
        assert query, name
        assert not query.endswith(";"), name
        assert not any(line.lstrip().startswith("--") for line in query.splitlines()), name


def test_the_real_file_has_no_duplicate_names() -> None:
    text = resources.files("grandhotel.safe").joinpath("queries.sql").read_text("utf-8")
    names = re.findall(r"^-- ([a-z_]+) --$", text, re.MULTILINE)
    assert len(names) == len(set(names)) == len(sql.QUERIES)


def test_every_query_the_safe_names_exists() -> None:
    package = resources.files("grandhotel.safe")
    used: set[str] = set()
    for entry in package.iterdir():
        if entry.name.endswith(".py"):
            source = entry.read_text("utf-8")
            used |= set(re.findall(r"QUERIES\[\"([a-z_]+)\"\]", source))
            used |= set(re.findall(r"_(?:one|rows)\(\s*\"([a-z_]+)\"", source))
    assert used, "the scan found no query names: the pattern is stale"
    assert used <= set(sql.QUERIES)


def test_schema_is_not_empty() -> None:
    assert "CREATE TABLE" in sql.schema()


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    found = sql.migrations()
    assert [version for version, _, _ in found] == list(range(1, len(found) + 1))
    assert all(name and text.strip() for _, name, text in found)
