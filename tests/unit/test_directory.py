"""Unit tests for ``grandhotel.directory``: ticket id -> the butler's line."""

from __future__ import annotations

import pytest

from grandhotel import directory


class FakeLine:
    """Stands in for a butler's line: the directory only keeps and compares it."""


def test_register_then_lookup() -> None:
    lines: directory.Directory[FakeLine] = directory.Directory()
    line = FakeLine()
    lines.register("t1", line)
    assert lines.lookup("t1") is line
    assert "t1" in lines
    assert len(lines) == 1


def test_lookup_of_an_unknown_ticket_is_none() -> None:
    lines: directory.Directory[FakeLine] = directory.Directory()
    assert lines.lookup("nobody") is None
    assert "nobody" not in lines


def test_a_second_butler_for_the_same_ticket_is_refused() -> None:
    lines: directory.Directory[FakeLine] = directory.Directory()
    first = FakeLine()
    lines.register("t1", first)
    with pytest.raises(directory.AlreadyRegistered):
        lines.register("t1", FakeLine())
    assert lines.lookup("t1") is first


def test_already_registered_is_a_key_error() -> None:
    assert issubclass(directory.AlreadyRegistered, KeyError)


def test_unregister_removes_only_the_same_line() -> None:
    lines: directory.Directory[FakeLine] = directory.Directory()
    line = FakeLine()
    lines.register("t1", line)
    lines.unregister("t1", FakeLine())
    assert lines.lookup("t1") is line
    lines.unregister("t1", line)
    assert "t1" not in lines
    assert len(lines) == 0


def test_unregister_of_an_unknown_ticket_is_harmless() -> None:
    lines: directory.Directory[FakeLine] = directory.Directory()
    lines.unregister("nobody", FakeLine())
    assert len(lines) == 0


def test_a_ticket_can_be_registered_again_after_unregister() -> None:
    lines: directory.Directory[FakeLine] = directory.Directory()
    old, new = FakeLine(), FakeLine()
    lines.register("t1", old)
    lines.unregister("t1", old)
    lines.register("t1", new)
    assert lines.lookup("t1") is new


def test_ticket_ids_is_a_copy() -> None:
    lines: directory.Directory[FakeLine] = directory.Directory()
    lines.register("t1", FakeLine())
    lines.register("t2", FakeLine())
    ids = lines.ticket_ids()
    ids.clear()
    assert sorted(lines.ticket_ids()) == ["t1", "t2"]
