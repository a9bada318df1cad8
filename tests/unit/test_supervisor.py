"""Unit tests for ``grandhotel.supervisor`` with real butlers and fakes (no database).

Each test runs the supervisor in pytest-trio's ``nursery`` under ``autojump_clock``,
so restart backoffs and the intensity window pass in virtual time. A butler is
made sick by wrapping ``tickets.advance`` (``Saboteur``), the one call a butler
makes per report.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import random
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from grandhotel import butler, config, directory, mailbox, supervisor, tickets

Status = tickets.Status
NotebookFactory = Callable[..., tickets.Notebook]
ALWAYS = 10**9


class FakeGiveUp:
    """Records each call and tells the guests the ticket failed (as the hotel does)."""

    def __init__(self, *, fail: bool = False) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = fail

    async def __call__(self, line: butler.Line, reason: str) -> None:
        self.calls.append((line.ticket_id, reason))
        if self.fail:
            raise RuntimeError("the safe is away")
        ended = tickets.Ended(tickets.Status.FAILED, None, reason)
        line.publish(*tickets.advance(line.notebook, ended, "t"))


class Saboteur:
    """Stands in for ``tickets.advance``: raises on a report the first ``times`` it sees it."""

    def __init__(self, target: tickets.Report, times: int) -> None:
        self.real = tickets.advance
        self.target = target
        self.times = times
        self.seen = 0

    def __call__(
        self, notebook: tickets.Notebook, report: tickets.Report, at: str
    ) -> tuple[tickets.Notebook, list[tickets.Event]]:
        if report is self.target:
            self.seen += 1
            if self.seen <= self.times:
                raise RuntimeError("the butler tripped")
        return self.real(notebook, report, at)


@dataclasses.dataclass
class Staff:
    sup: supervisor.Supervisor
    lines: directory.Directory[butler.Line]
    give_up: FakeGiveUp


async def start(nursery: trio.Nursery, *, fail_give_up: bool = False, **overrides: Any) -> Staff:
    settings = config.HotelConfig.from_env(env={}, **overrides)
    lines: directory.Directory[butler.Line] = directory.Directory()
    give_up = FakeGiveUp(fail=fail_give_up)
    sup = supervisor.Supervisor(settings, lines, give_up, rng=random.Random(1))
    await nursery.start(sup.run)
    return Staff(sup, lines, give_up)


def sabotage(monkeypatch: pytest.MonkeyPatch, target: tickets.Report, times: int) -> Saboteur:
    saboteur = Saboteur(target, times)
    monkeypatch.setattr(tickets, "advance", saboteur)
    return saboteur


async def read(box: mailbox.Mailbox, count: int | None = None) -> list[dict[str, Any]]:
    """``count`` frames (or all until closed), decoded; TooSlowError rather than a hang."""
    out: list[dict[str, Any]] = []
    with trio.fail_after(60):
        while count is None or len(out) < count:
            frame = await box.get()
            if frame is None:
                break
            out.append(json.loads(frame))
    return out


async def send(line: butler.Line, *reports: tickets.Report) -> None:
    for report in reports:
        assert await line.report(report)


def seqs(bodies: list[dict[str, Any]]) -> list[int]:
    return [body["seq"] for body in bodies]


# --- hiring ---------------------------------------------------------------------


def test_hire_before_run_is_refused(make_notebook: NotebookFactory) -> None:
    settings = config.HotelConfig.from_env(env={})
    sup = supervisor.Supervisor(settings, directory.Directory(), FakeGiveUp())
    with pytest.raises(RuntimeError, match="not running"):
        sup.hire(make_notebook(), [b"h"])


async def test_hire_registers_the_line_before_returning(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_notebook: NotebookFactory
) -> None:
    staff = await start(nursery)
    line = staff.sup.hire(make_notebook("t1"), [b"h"])
    assert staff.lines.lookup("t1") is line
    assert staff.sup.on_duty == 1
    assert line.token_hashes == [b"h"]


async def test_a_second_hire_returns_the_butler_on_duty(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_notebook: NotebookFactory
) -> None:
    staff = await start(nursery)
    line = staff.sup.hire(make_notebook("t1"), [b"h"])
    assert staff.sup.hire(make_notebook("t1"), [b"other"]) is line
    assert staff.sup.on_duty == 1


async def test_a_butler_does_not_keep_the_context_of_whoever_hired_it(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_notebook: NotebookFactory
) -> None:
    """The front desk hires from a request handler: the butler must not hold the
    request (a context variable of the handler) alive for as long as it works."""
    staff = await start(nursery)
    request: contextvars.ContextVar[object] = contextvars.ContextVar("request")
    request.set(object())
    staff.sup.hire(make_notebook("t1"), [b"h"])
    butlers = [task for task in nursery.child_tasks if task.name.startswith("butler t1")]
    butlers += [
        child
        for task in nursery.child_tasks
        for kid in task.child_nurseries
        for child in kid.child_tasks
        if child.name.startswith("butler t1")
    ]
    assert len(butlers) == 1
    assert request not in butlers[0].context


# --- reports and watchers ---------------------------------------------------------


async def test_reports_reach_the_notebook_and_the_watchers(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_notebook: NotebookFactory
) -> None:
    staff = await start(nursery)
    line = staff.sup.hire(make_notebook("t1"), [b"h"])
    _, box = line.subscribe()
    await send(line, tickets.Started(1), tickets.Progress(1, 3, "one"))
    bodies = await read(box, 2)
    assert [(b["type"], b["seq"]) for b in bodies] == [("status", 2), ("progress", 3)]
    assert (line.notebook.done, line.notebook.message, line.notebook.seq) == (1, "one", 3)


async def test_the_directory_is_empty_once_every_ticket_ended(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_notebook: NotebookFactory
) -> None:
    staff = await start(nursery)
    lines = [staff.sup.hire(make_notebook(f"t{n}"), [b"h"]) for n in range(3)]
    await send(lines[0], tickets.Started(1), tickets.Ended(Status.COMPLETED, {"done": 3}))
    await send(lines[1], tickets.Ended(Status.CANCELLED, None, "guest left"))
    await send(lines[2], tickets.Started(1), tickets.Ended(Status.FAILED, None, "torn"))
    with trio.fail_after(60):
        for line in lines:
            await line.retired.wait()
    assert len(staff.lines) == staff.sup.on_duty == 0
    assert staff.sup.restarts == 0


async def test_a_dismissed_ticket_leaves_the_directory(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_notebook: NotebookFactory
) -> None:
    staff = await start(nursery)
    line = staff.sup.hire(make_notebook("t1"), [b"h"])
    line.dismiss()
    with trio.fail_after(60):
        await line.retired.wait()
    assert "t1" not in staff.lines


# --- sick butlers -----------------------------------------------------------------


async def test_a_crashed_butler_is_replaced_and_its_watchers_see_no_gap(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    make_notebook: NotebookFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    staff = await start(nursery)
    line = staff.sup.hire(make_notebook("t1"), [b"h"])
    _, box = line.subscribe()
    tricky = tickets.Progress(2, 3, "tricky")
    saboteur = sabotage(monkeypatch, tricky, times=1)
    await send(line, tickets.Started(1), tickets.Progress(1, 3), tricky)
    first = await read(box, 3)
    assert [(b["seq"], b["done"]) for b in first] == [(2, 0), (3, 1), (4, 2)]
    assert (saboteur.seen, staff.sup.restarts) == (2, 1)
    assert box in line.watchers
    await send(line, tickets.Progress(3, 3), tickets.Ended(Status.COMPLETED, {"done": 3}))
    rest = await read(box)
    assert rest[-1]["type"] == "completed"
    assert seqs(rest) == [5, 6]
    assert staff.give_up.calls == []


async def test_a_report_in_hand_survives_many_crashes_in_one_gap_free_stream(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    make_notebook: NotebookFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    staff = await start(nursery, butler_redeliveries=3, butler_restart_limit=5)
    line = staff.sup.hire(make_notebook("t1"), [b"h"])
    _, box = line.subscribe()
    tricky = tickets.Started(1)
    saboteur = sabotage(monkeypatch, tricky, times=3)
    await send(line, tricky, tickets.Progress(1, 2), tickets.Ended(Status.COMPLETED, None))
    bodies = await read(box)
    assert seqs(bodies) == [2, 3, 4]
    assert (saboteur.seen, staff.sup.restarts) == (4, 3)


@pytest.mark.parametrize("redeliveries", [0, 1, 2, 4])
async def test_a_poisonous_report_is_dropped_after_its_redeliveries(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    make_notebook: NotebookFactory,
    monkeypatch: pytest.MonkeyPatch,
    redeliveries: int,
) -> None:
    staff = await start(nursery, butler_redeliveries=redeliveries, butler_restart_limit=10)
    line = staff.sup.hire(make_notebook("t1"), [b"h"])
    _, box = line.subscribe()
    poison = tickets.Progress(1, 3, "poison")
    saboteur = sabotage(monkeypatch, poison, times=ALWAYS)
    await send(line, tickets.Started(1), poison, tickets.Progress(2, 3, "fine"))
    bodies = await read(box, 2)
    assert [b["message"] for b in bodies] == [None, "fine"]
    assert seqs(bodies) == [2, 3]
    assert saboteur.seen == redeliveries + 1
    assert staff.give_up.calls == []
    assert staff.lines.lookup("t1") is line


async def test_crashing_past_the_limit_gives_up_once(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    make_notebook: NotebookFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    staff = await start(nursery, butler_restart_limit=3, butler_redeliveries=100)
    sick = staff.sup.hire(make_notebook("sick"), [b"h"])
    _, box = sick.subscribe()
    saboteur = sabotage(monkeypatch, poison := tickets.Started(1), times=ALWAYS)
    await send(sick, poison)
    bodies = await read(box)
    assert [b["type"] for b in bodies] == ["failed"]
    assert bodies[0]["reason"] == "butler crashed 4 times within 5s: RuntimeError"
    assert staff.give_up.calls == [("sick", bodies[0]["reason"])]
    assert (saboteur.seen, staff.sup.given_up) == (4, 1)
    with trio.fail_after(60):
        await sick.retired.wait()
    assert "sick" not in staff.lines


async def test_a_sick_ticket_leaves_the_other_butlers_alone(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    make_notebook: NotebookFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    staff = await start(nursery, butler_restart_limit=2, butler_redeliveries=100)
    sick = staff.sup.hire(make_notebook("sick"), [b"h"])
    well = staff.sup.hire(make_notebook("well"), [b"h"])
    _, box = well.subscribe()
    sabotage(monkeypatch, poison := tickets.Started(1), times=ALWAYS)
    await send(sick, poison)
    with trio.fail_after(60):
        await sick.retired.wait()
    assert staff.lines.lookup("well") is well
    assert not well.retired.is_set()
    await send(well, tickets.Started(1))
    assert [b["type"] for b in await read(box, 1)] == ["status"]
    assert box in well.watchers


async def test_crashes_further_apart_than_the_window_never_give_up(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    make_notebook: NotebookFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    staff = await start(nursery, butler_restart_limit=1, butler_restart_window_seconds=5.0)
    line = staff.sup.hire(make_notebook("t1"), [b"h"])
    _, box = line.subscribe()
    first, second = tickets.Started(1), tickets.Progress(1, 3)
    monkeypatch.setattr(tickets, "advance", Saboteur(first, times=1))
    await send(line, first)
    await read(box, 1)
    await trio.sleep(6)
    monkeypatch.setattr(tickets, "advance", Saboteur(second, times=1))
    await send(line, second)
    assert seqs(await read(box, 1)) == [3]
    assert (staff.sup.restarts, staff.give_up.calls) == (2, [])


async def test_a_failing_give_up_still_frees_the_directory(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    make_notebook: NotebookFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    staff = await start(nursery, fail_give_up=True, butler_restart_limit=1)
    sick = staff.sup.hire(make_notebook("sick"), [b"h"])
    sabotage(monkeypatch, poison := tickets.Started(1), times=ALWAYS)
    await send(sick, poison)
    with trio.fail_after(60):
        await sick.retired.wait()
    assert "sick" not in staff.lines
    assert len(staff.give_up.calls) == 1
    assert staff.sup.hire(make_notebook("next"), [b"h"]) is staff.lines.lookup("next")


# --- shutdown ---------------------------------------------------------------------


async def test_cancelling_the_supervisor_retires_every_line(
    autojump_clock: trio.testing.MockClock, make_notebook: NotebookFactory
) -> None:
    async with trio.open_nursery() as nursery:
        staff = await start(nursery)
        line = staff.sup.hire(make_notebook("t1"), [b"h"])
        _, box = line.subscribe()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert line.retired.is_set()
    assert len(staff.lines) == 0
    assert await box.get() is None
