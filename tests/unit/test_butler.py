"""Unit tests for ``grandhotel.butler``: the direct line and one butler's shift (no supervisor)."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from grandhotel import butler, chaos, mailbox, tickets

Status = tickets.Status
NotebookFactory = Callable[..., tickets.Notebook]


def make_line(notebook: tickets.Notebook, watcher_buffer: int = 8) -> butler.Line:
    return butler.Line(notebook, [b"hash"], inbox_size=4, watcher_buffer=watcher_buffer)


async def bodies(box: mailbox.Mailbox) -> list[dict[str, Any]]:
    """Every frame of ``box`` until it is closed, decoded (fails rather than hangs)."""
    out = []
    with trio.fail_after(10):
        while (frame := await box.get()) is not None:
            out.append(json.loads(frame))
    return out


def test_encode_is_compact_json_that_keeps_unicode() -> None:
    assert butler.encode({"a": [1, 2], "who": "Doña"}) == '{"a":[1,2],"who":"Doña"}'


def test_utc_now_is_iso_with_z() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", butler.utc_now())


def test_subscribe_gives_a_snapshot_then_a_mailbox(make_notebook: NotebookFactory) -> None:
    line = make_line(make_notebook(seq=5))
    frame, box = line.subscribe()
    snapshot = json.loads(frame)
    assert (snapshot["type"], snapshot["seq"]) == ("snapshot", 5)
    assert box.after == 5
    assert box in line.watchers


def test_subscribe_keeps_a_later_resume_point(make_notebook: NotebookFactory) -> None:
    _, box = make_line(make_notebook(seq=5)).subscribe(after=9)
    assert box.after == 9


async def test_subscribing_to_an_ended_ticket_gives_a_closed_mailbox(
    autojump_clock: trio.testing.MockClock,
    make_notebook: NotebookFactory,
) -> None:
    line = make_line(make_notebook(status=Status.COMPLETED))
    frame, box = line.subscribe()
    assert json.loads(frame)["status"] == "completed"
    assert await box.get() is None
    assert not line.watchers


async def test_publish_pushes_each_event_to_every_watcher(
    autojump_clock: trio.testing.MockClock, make_notebook: NotebookFactory
) -> None:
    line = make_line(make_notebook())
    boxes = [line.subscribe()[1] for _ in range(3)]
    started = tickets.advance(line.notebook, tickets.Started(1), "t")
    line.publish(*started)
    assert line.notebook is started[0]
    for box in boxes:
        assert json.loads(await box.get() or "") == started[1][0].body


async def test_publish_marks_only_progress_as_coalescable(
    autojump_clock: trio.testing.MockClock, make_notebook: NotebookFactory
) -> None:
    line = make_line(make_notebook(), watcher_buffer=1)
    _, box = line.subscribe()
    line.publish(*tickets.advance(line.notebook, tickets.Started(1), "t"))
    for done in (1, 2, 3):
        line.publish(*tickets.advance(line.notebook, tickets.Progress(done, 3), "t"))
    box.close()
    kinds = [(body["type"], body["done"]) for body in await bodies(box)]
    assert kinds == [("status", 0), ("progress", 3)]


async def test_a_terminal_publish_closes_every_mailbox(
    autojump_clock: trio.testing.MockClock, make_notebook: NotebookFactory
) -> None:
    line = make_line(make_notebook())
    _, box = line.subscribe()
    line.attempt_scope = trio.CancelScope()
    line.publish(*tickets.advance(line.notebook, tickets.Ended(Status.CANCELLED, None), "t"))
    assert [body["type"] for body in await bodies(box)] == ["cancelled"]
    assert not line.watchers
    assert line.attempt_scope.cancel_called


async def test_unsubscribe_stops_delivery(
    autojump_clock: trio.testing.MockClock, make_notebook: NotebookFactory
) -> None:
    line = make_line(make_notebook())
    _, box = line.subscribe()
    line.unsubscribe(box)
    line.publish(*tickets.advance(line.notebook, tickets.Started(1), "t"))
    assert len(box) == 0


async def test_report_after_retire_says_false(
    autojump_clock: trio.testing.MockClock, make_notebook: NotebookFactory
) -> None:
    line = make_line(make_notebook())
    _, box = line.subscribe()
    assert await line.report(tickets.Started(1)) is True
    line.retire()
    assert await line.report(tickets.Progress(1, 3)) is False
    assert line.retired.is_set()
    assert await box.get() is None


async def test_a_shift_handles_reports_until_the_ticket_ends(
    autojump_clock: trio.testing.MockClock,
    make_notebook: NotebookFactory,
) -> None:
    line = make_line(make_notebook())
    _, box = line.subscribe()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(butler.serve, line)
        for report in (
            tickets.Started(1),
            tickets.Progress(1, 3),
            tickets.Ended(Status.COMPLETED, {"done": 3}),
        ):
            await line.report(report)
    assert line.notebook.status is Status.COMPLETED
    assert [(b["seq"], b["type"]) for b in await bodies(box)] == [
        (2, "status"), (3, "progress"), (4, "completed"),
    ]  # fmt: skip


async def test_a_shift_ends_when_the_inbox_closes(
    autojump_clock: trio.testing.MockClock, make_notebook: NotebookFactory
) -> None:
    line = make_line(make_notebook())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(butler.serve, line)
        await trio.testing.wait_all_tasks_blocked()
        line.retire()
    assert line.notebook.status is Status.QUEUED


async def test_a_dismissed_line_finishes_its_inbox_then_the_shift_ends(
    autojump_clock: trio.testing.MockClock,
    make_notebook: NotebookFactory,
) -> None:
    line = make_line(make_notebook())
    await line.report(tickets.Started(1))
    line.dismiss()
    assert await line.report(tickets.Progress(1, 3)) is False
    with trio.fail_after(10):
        await butler.serve(line)
    assert line.notebook.status is Status.IN_PROGRESS


async def test_a_butler_that_raises_leaves_the_report_in_hand(
    autojump_clock: trio.testing.MockClock,
    make_notebook: NotebookFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    line = make_line(make_notebook())
    before = line.notebook

    def broken(*args: object) -> Any:
        raise RuntimeError("tripped")

    monkeypatch.setattr(tickets, "advance", broken)
    await line.report(tickets.Started(1))
    with pytest.raises(RuntimeError, match="tripped"):
        await butler.serve(line)
    assert line.in_hand == tickets.Started(1)
    assert line.notebook is before


async def test_the_next_shift_picks_up_the_report_in_hand(
    autojump_clock: trio.testing.MockClock,
    make_notebook: NotebookFactory,
) -> None:
    line = make_line(make_notebook())
    line.in_hand = tickets.Ended(Status.CANCELLED, None, "guest left")
    line.in_hand_tries = 1
    await butler.serve(line)
    assert (line.notebook.status, line.notebook.reason) == (Status.CANCELLED, "guest left")
    assert (line.in_hand, line.in_hand_tries) == (None, 0)


async def test_chaos_makes_the_butler_fall_over(
    autojump_clock: trio.testing.MockClock, make_notebook: NotebookFactory
) -> None:
    line = make_line(make_notebook())
    await line.report(tickets.Started(1))
    with pytest.raises(chaos.ChaosCrash):
        await butler.serve(line, crash_rate=1.0, rng=random.Random(3))
    assert line.in_hand == tickets.Started(1)
    assert line.notebook.status is Status.QUEUED
