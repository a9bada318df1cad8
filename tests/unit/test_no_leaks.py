"""Nothing outlives a ticket: directory entries, butler tasks, inboxes, mailboxes, lines.

Tickets run through a real ``Supervisor`` with fakes (no database): some complete,
some are cancelled, some crash their butlers until the supervisor gives up, some
end while the supervisor is shut down. Afterwards the directory is empty, the
supervisor's nursery has no task left, every line is retired with both ends of its
inbox closed, every mailbox is closed, and no line is kept alive by anyone.
"""

from __future__ import annotations

import gc
import json
import logging
import random
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from grandhotel import butler, config, directory, mailbox, supervisor, tickets

Status = tickets.Status
NotebookFactory = Callable[..., tickets.Notebook]
OUTCOMES = ("completed", "cancelled", "given up")
REAL_ADVANCE = tickets.advance


class FakeGiveUp:
    """Records each call; ends the ticket as ``failed`` (as checkout does), or raises."""

    def __init__(self, *, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.fail = fail

    async def __call__(self, line: butler.Line, reason: str) -> None:
        self.calls.append(line.ticket_id)
        if self.fail:
            raise RuntimeError("the safe is away")
        line.stop_attempt()
        ended = tickets.Ended(Status.FAILED, None, reason)
        line.publish(*REAL_ADVANCE(line.notebook, ended, "t"))


class Saboteur:
    """Stands in for ``tickets.advance``: a doomed ticket's butlers raise on every report."""

    def __init__(self) -> None:
        self.doomed: set[str] = set()

    def __call__(
        self, notebook: tickets.Notebook, report: tickets.Report, at: str
    ) -> tuple[tickets.Notebook, list[tickets.Event]]:
        if notebook.ticket_id in self.doomed:
            raise RuntimeError("the butler tripped")
        return REAL_ADVANCE(notebook, report, at)


class Reader:
    """A guest draining a mailbox into a list until it is closed."""

    def __init__(self, box: mailbox.Mailbox) -> None:
        self.box = box
        self.frames: list[dict[str, Any]] = []
        self.done = False

    async def run(self) -> None:
        while (frame := await self.box.get()) is not None:
            self.frames.append(json.loads(frame))
        self.done = True


async def start(
    nursery: trio.Nursery, give_up: FakeGiveUp, **overrides: Any
) -> tuple[supervisor.Supervisor, directory.Directory[butler.Line]]:
    knobs: dict[str, Any] = {
        "butler_restart_limit": 2,
        "butler_restart_backoff_seconds": 0.01,
        "butler_redeliveries": 100,
    }
    settings = config.HotelConfig.from_env(env={}, **{**knobs, **overrides})
    lines: directory.Directory[butler.Line] = directory.Directory()
    sup = supervisor.Supervisor(settings, lines, give_up, rng=random.Random(7))
    await nursery.start(sup.run)
    return sup, lines


def assert_closed(line: butler.Line) -> None:
    """The line retired: no watcher, and both ends of its inbox closed."""
    assert line.retired.is_set()
    assert not line.watchers
    assert line.inbox.closed
    with pytest.raises(trio.ClosedResourceError):
        line.inbox.send_nowait(tickets.Progress(1, 1))


def assert_nothing_on_duty(
    sup: supervisor.Supervisor, lines: directory.Directory[butler.Line]
) -> None:
    assert len(lines) == sup.on_duty == 0
    assert lines.ticket_ids() == []
    assert sup._nursery is not None
    assert not sup._nursery.child_tasks, sup._nursery.child_tasks


@pytest.fixture(autouse=True)
def _quiet_supervisor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Crash logs off: pytest keeps captured records, whose tracebacks hold the lines."""
    monkeypatch.setattr(logging.getLogger("grandhotel.supervisor"), "disabled", True)


def assert_collected(refs: list[weakref.ref[butler.Line]]) -> None:
    """No one (directory, supervisor, nursery, tasks) holds on to an ended line."""
    gc.collect()
    alive = [ref() for ref in refs if ref() is not None]
    assert not alive, [line.ticket_id for line in alive if line is not None]


async def test_tickets_with_mixed_endings_leave_nothing_behind(
    autojump_clock: trio.testing.MockClock,
    make_notebook: NotebookFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    saboteur = Saboteur()
    monkeypatch.setattr(tickets, "advance", saboteur)
    give_up = FakeGiveUp()
    count = 30
    async with trio.open_nursery() as nursery:
        sup, lines = await start(nursery, give_up, butler_inbox_size=2, watcher_buffer_events=2)
        hired = [sup.hire(make_notebook(f"t{n}"), [b"h"]) for n in range(count)]
        readers: list[Reader] = []
        left: list[mailbox.Mailbox] = []
        for n, line in enumerate(hired):
            for _ in range(n % 3 + 1):
                reader = Reader(line.subscribe()[1])
                readers.append(reader)
                nursery.start_soon(reader.run)
            if n % 4 == 0:
                _, box = line.subscribe()
                line.unsubscribe(box)  # a guest that went away
                left.append(box)
        for n, line in enumerate(hired):
            outcome = OUTCOMES[n % len(OUTCOMES)]
            assert await line.report(tickets.Started(1))
            for done in range(1, 4):
                assert await line.report(tickets.Progress(done, 3))
            if outcome == "completed":
                assert await line.report(tickets.Ended(Status.COMPLETED, {"done": 3}))
            elif outcome == "cancelled":
                line.stop_attempt()
                cancelled = tickets.Ended(Status.CANCELLED, {"done": 3}, "cancelled")
                assert await line.report(cancelled)
            else:
                # Reports are handed over without yielding: let the butler take
                # the three good ones before the next one is doomed.
                await trio.testing.wait_all_tasks_blocked()
                saboteur.doomed.add(line.ticket_id)
                assert await line.report(tickets.Progress(3, 3, "this one trips"))
        with trio.fail_after(600):
            for line in hired:
                await line.retired.wait()
        await trio.testing.wait_all_tasks_blocked()

        assert_nothing_on_duty(sup, lines)
        for n, line in enumerate(hired):
            assert_closed(line)
            assert line.notebook.status.value == ["completed", "cancelled", "failed"][n % 3]
            assert await line.report(tickets.Progress(3, 3)) is False
        assert sorted(give_up.calls) == sorted(f"t{n}" for n in range(2, count, 3))
        assert sup.given_up == len(give_up.calls)
        for reader in readers:
            assert reader.done, "a reader still waits on a retired line"
            assert reader.box.closed
            assert [f["type"] for f in reader.frames].count(reader.frames[-1]["type"]) == 1
            assert reader.frames[-1]["type"] in {"completed", "cancelled", "failed"}
        for box in left:
            assert len(box) == 0  # nothing was pushed after the guest left
        nursery.cancel_scope.cancel()

    refs = [weakref.ref(line) for line in hired]
    del hired, line, readers, left
    assert_collected(refs)


async def test_shutting_the_supervisor_down_retires_every_line(
    autojump_clock: trio.testing.MockClock,
    make_notebook: NotebookFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Live tickets in every state (idle, mid-restart, a reporter waiting on a full
    inbox) when the supervisor is cancelled: nothing is left, no one waits forever."""
    saboteur = Saboteur()
    monkeypatch.setattr(tickets, "advance", saboteur)
    refused: list[bool] = []
    readers: list[Reader] = []
    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as nursery:
            sup, lines = await start(
                nursery,
                FakeGiveUp(),
                butler_inbox_size=1,
                butler_restart_limit=1000,
                butler_restart_backoff_seconds=30.0,
                butler_restart_backoff_max_seconds=30.0,
            )
            idle = sup.hire(make_notebook("idle"), [b"h"])
            working = sup.hire(make_notebook("working"), [b"h"])
            sick = sup.hire(make_notebook("sick"), [b"h"])
            hired = [idle, working, sick]
            for line in hired:
                reader = Reader(line.subscribe()[1])
                readers.append(reader)
                outer.start_soon(reader.run)
            await working.report(tickets.Started(1))
            saboteur.doomed.add("sick")
            await sick.report(tickets.Started(1))  # in hand, the butler in backoff
            await sick.report(tickets.Progress(1, 3))  # fills the inbox

            async def blocked_reporter(line: butler.Line) -> None:
                refused.append(not await line.report(tickets.Progress(2, 3)))

            outer.start_soon(blocked_reporter, sick)
            await trio.testing.wait_all_tasks_blocked()
            assert sup.restarts >= 1
            assert not refused  # still waiting for room in the inbox
            nursery.cancel_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert refused == [True]
        assert len(lines) == sup.on_duty == 0
        for line in hired:
            assert_closed(line)
        for reader in readers:
            assert reader.done
            assert reader.box.closed
    refs = [weakref.ref(line) for line in hired]
    del hired, idle, working, sick, line
    assert_collected(refs)


@pytest.mark.parametrize("how", ["dismissed", "give_up failed"])
async def test_a_line_retired_without_an_ending_hands_out_closed_mailboxes(
    autojump_clock: trio.testing.MockClock,
    make_notebook: NotebookFactory,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    """A guest that looked the line up just before it retired unfinished (the front
    desk dismissed it, or ``give_up`` could not reach the safe) and subscribes just
    after must get a closed mailbox, as every earlier watcher did at ``retire``.

    The concierge does exactly this: ``locate`` returns the line, then
    ``websocket.accept`` yields, then ``_attend`` subscribes.
    """
    saboteur = Saboteur()
    monkeypatch.setattr(tickets, "advance", saboteur)
    async with trio.open_nursery() as nursery:
        sup, lines = await start(nursery, FakeGiveUp(fail=True), butler_restart_limit=1)
        line = sup.hire(make_notebook("t1"), [b"h"])
        _, earlier = line.subscribe()
        if how == "dismissed":
            line.dismiss()
        else:
            saboteur.doomed.add("t1")
            await line.report(tickets.Started(1))
        with trio.fail_after(60):
            await line.retired.wait()
        assert not line.notebook.status.terminal
        assert "t1" not in lines
        assert earlier.closed  # retire closed the mailbox of the earlier watcher

        _, late = line.subscribe()
        assert_nothing_on_duty(sup, lines)
        assert late.closed, "a mailbox handed out by a retired line never closes"
        assert not line.watchers, "a retired line keeps a watcher forever"
        nursery.cancel_scope.cancel()
