"""Stateful property tests: directory + supervisor + butlers + watchers, in virtual time.

Hypothesis draws a whole *program*: hires (and hiring a ticket again after its
line retired), reports (start, progress and bursts of it, retry, cancel,
complete), watchers subscribing (from a resume point, reading fast or slowly) and
leaving, crashes injected into one ticket's butler, and the passing of (virtual)
time. Each example runs the program inside one ``trio.run`` under
``MockClock(autojump_threshold=0)``, so live butler and reader tasks persist from
one step to the next. No database, no network.

A ``Recorder`` stands in for ``tickets.advance`` (the one call a butler makes per
report): while crashes are armed for a ticket it makes that ticket's butler raise,
records the virtual time of each crash, and logs every event published per line
(the ground truth each watcher's stream is compared with).

Checked after every step:

* the directory, the supervisor's nursery and the lines agree: a line is in the
  directory <=> a butler task for it is a child of the supervisor's nursery <=>
  the line has not retired;
* the notebook is the last published event; per line seqs go up by one, with at
  most one terminal event and nothing after it;
* per watcher: the snapshot comes first (at the notebook's seq); seqs strictly
  increase; frames are the line's published events after the resume point
  (exactly those, in order, when nothing was coalesced); no status change or
  ending is ever skipped; a terminal frame is the last one; nothing reaches a
  watcher after it left; a mailbox is closed once its ticket ended or its line
  retired;
* ``sup.restarts`` equals the crashes that fired, ``give_up`` has been called
  exactly once per line for which a sliding-window model of the restart policy
  says so (never otherwise, and no butler runs after it), and ``sup.alarms``
  matches a model of the hotel-wide restart alarm.

At the end every live ticket is ended, tasks settle, and: the directory is empty,
the supervisor's nursery has no child left, every line is retired with both ends
of its inbox closed, every watcher still subscribed got a closed mailbox and
exactly one terminal frame, last, and every line that was not given up (and had
no report dropped as poison) shows exactly the events its own reports produce,
whatever crashed elsewhere.

``test_random_programs_where_lines_retire_without_an_ending`` runs the same
programs with a ``give_up`` that fails (the safe is away) and with front-desk
dismissals, so that lines also retire with their ticket unfinished.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import json
import logging
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st

from grandhotel import butler, config, directory, mailbox, supervisor, tickets

Status = tickets.Status
NotebookFactory = Callable[..., tickets.Notebook]

STEP_DEADLINE_SECONDS = 600.0
"""Virtual seconds a step may take before it counts as a hang (autojump passes them fast)."""
TOTAL = 10
ENDINGS = frozenset(status.value for status in Status if status.terminal)


# --- fakes ------------------------------------------------------------------------


class Tripped(RuntimeError):
    """What a sabotaged butler raises."""


Key = tuple[str, int]
"""One line of a ticket: its id and the epoch its butler was hired with."""


def key_of(notebook: tickets.Notebook) -> Key:
    return notebook.ticket_id, notebook.seq // tickets.SEQ_EPOCH_SPAN


class Recorder:
    """Stands in for ``tickets.advance``: injects crashes per ticket, records what happened."""

    def __init__(self) -> None:
        self.real = tickets.advance
        self.armed: collections.Counter[str] = collections.Counter()
        """Crashes waiting for a ticket's next reports (whichever line it has)."""
        self.crashes: dict[Key, list[float]] = collections.defaultdict(list)
        self.log: dict[Key, list[tickets.Event]] = collections.defaultdict(list)
        self.all_crashes: list[float] = []

    def __call__(
        self, notebook: tickets.Notebook, report: tickets.Report, at: str
    ) -> tuple[tickets.Notebook, list[tickets.Event]]:
        ticket_id = notebook.ticket_id
        # Only a butler's shift trips; the supervisor publishing an ending never does.
        in_shift = sys._getframe(1).f_code is butler.serve.__code__
        if in_shift and self.armed[ticket_id] > 0:
            self.armed[ticket_id] -= 1
            self.crashes[key_of(notebook)].append(trio.current_time())
            self.all_crashes.append(trio.current_time())
            raise Tripped(f"the butler of {ticket_id} tripped")
        return self.apply(notebook, report, at)

    def apply(
        self, notebook: tickets.Notebook, report: tickets.Report, at: str
    ) -> tuple[tickets.Notebook, list[tickets.Event]]:
        """The real ``advance``, with its events logged (never crashes)."""
        changed, events = self.real(notebook, report, at)
        self.log[key_of(notebook)].extend(events)
        return changed, events

    @property
    def total_crashes(self) -> int:
        return sum(len(times) for times in self.crashes.values())


class FakeGiveUp:
    """Records each call and tells the guests the ticket failed (as checkout does).

    With ``fail``, it raises instead, as checkout does when the safe is away: the
    line then retires without an ending.
    """

    def __init__(self, recorder: Recorder, *, fail: bool = False) -> None:
        self.recorder = recorder
        self.fail = fail
        self.calls: list[tuple[Key, str]] = []
        self.ended_before: set[Key] = set()
        """Lines whose ticket had already ended when ``give_up`` was called."""

    async def __call__(self, line: butler.Line, reason: str) -> None:
        key = key_of(line.notebook)
        self.calls.append((key, reason))
        if line.notebook.status.terminal:
            self.ended_before.add(key)
        if self.fail:
            raise RuntimeError("the safe is away")
        line.stop_attempt()
        ended = tickets.Ended(Status.FAILED, None, reason)
        line.publish(*self.recorder.apply(line.notebook, ended, "t"))


@contextmanager
def quiet() -> Iterator[None]:
    """Silence the supervisor's crash logs (thousands per run under hypothesis)."""
    logger = logging.getLogger("grandhotel.supervisor")
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was


@contextmanager
def advance_replaced_by(recorder: Recorder) -> Iterator[None]:
    """``tickets.advance`` is the recorder for the block (no monkeypatch under hypothesis)."""
    real = tickets.advance
    tickets.advance = recorder  # type: ignore[assignment]
    try:
        yield
    finally:
        tickets.advance = real


def give_up_index(times: list[float], limit: int, window_seconds: float) -> int | None:
    """The model of the restart policy: which crash (0-based) must give the ticket up.

    A crash at ``t`` gives up when more than ``limit`` crashes (itself included)
    happened within ``[t - window, t]``; the first such crash ends the ticket.
    """
    for n, now in enumerate(times):
        if sum(1 for t in times[: n + 1] if now - t <= window_seconds) > limit:
            return n
    return None


def alarms(times: list[float], per_minute: int) -> int:
    """The model of the hotel-wide alarm: more than ``per_minute`` restarts within 60 s,
    at most one alarm per minute."""
    count, alarmed_at = 0, -float("inf")
    for n, now in enumerate(times):
        recent = sum(1 for t in times[: n + 1] if now - t <= 60.0)
        if recent > per_minute and now - alarmed_at > 60.0:
            count, alarmed_at = count + 1, now
    return count


def comparable(body: Any) -> Any:
    """A frame as a guest decodes it."""
    return json.loads(butler.encode(body))


def without_time(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "at"}


# --- the world a program acts on --------------------------------------------------


@dataclasses.dataclass
class Plan:
    limit: int
    window_seconds: float
    inbox_size: int
    watcher_buffer: int
    redeliveries: int
    alarm_per_minute: int
    seed: int
    ops: list[tuple[Any, ...]]
    endless: bool = False
    """``give_up`` fails and lines get dismissed: some lines retire without an ending."""


@dataclasses.dataclass
class Ticket:
    """One line of a ticket (a ticket hired again after its line retired has several)."""

    line: butler.Line
    initial: tickets.Notebook
    attempt: int = 0
    accepted: list[tickets.Report] = dataclasses.field(default_factory=list)
    dismissed: bool = False

    @property
    def ticket_id(self) -> str:
        return self.line.ticket_id

    @property
    def key(self) -> Key:
        return key_of(self.initial)

    @property
    def epoch(self) -> int:
        return self.key[1]


@dataclasses.dataclass
class Watcher:
    ticket: Ticket
    box: mailbox.Mailbox
    snapshot: dict[str, Any]
    ended_before: bool
    """The ticket had ended when the watcher subscribed."""
    pace: float
    """Seconds the reader takes per frame (a slow guest makes progress coalesce)."""
    scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    frames: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    log_end: int | None = None
    """How many events the ticket had published when the watcher unsubscribed."""
    drained: bool = False
    """The reader saw the mailbox closed and empty."""
    left_queued: int = 0
    """Frames waiting in the mailbox when the watcher unsubscribed."""

    @property
    def subscribed(self) -> bool:
        return self.log_end is None


class World:
    def __init__(
        self,
        plan: Plan,
        sup: supervisor.Supervisor,
        lines: directory.Directory[butler.Line],
        recorder: Recorder,
        give_up: FakeGiveUp,
        nursery: trio.Nursery,
        make_notebook: NotebookFactory,
    ) -> None:
        self.plan = plan
        self.sup = sup
        self.lines = lines
        self.recorder = recorder
        self.give_up = give_up
        self.nursery = nursery
        self.make_notebook = make_notebook
        self.tickets: list[Ticket] = []
        self.watchers: list[Watcher] = []

    # --- steps ---

    async def step(self, op: tuple[Any, ...]) -> None:
        kind, *args = op
        if kind == "create":
            ticket = self.hire(f"t{len({t.ticket_id for t in self.tickets})}", args[1])
            if args[0]:
                await self.report(ticket, self.start_report(ticket))
            return
        if kind == "settle":
            await trio.testing.wait_all_tasks_blocked()
            return
        if kind == "sleep":
            await trio.sleep(args[0])
            return
        if kind == "unsubscribe":
            self.unsubscribe(args[0])
            return
        if not self.tickets:
            return
        ticket = self.tickets[args[0] % len(self.tickets)]
        line = ticket.line
        if kind == "start":
            await self.report(ticket, self.start_report(ticket))
        elif kind == "retry":
            await self.report(ticket, tickets.Retrying(ticket.attempt, "flaky"))
        elif kind == "progress":
            await self.report(ticket, tickets.Progress(args[1], TOTAL, f"step {args[1]}"))
        elif kind == "burst":
            for done in range(args[1]):
                await self.report(ticket, tickets.Progress(done, TOTAL))
        elif kind == "subscribe":
            self.subscribe(ticket, args[1], args[2])
        elif kind == "crash":
            self.recorder.armed[ticket.ticket_id] += args[1]
        elif kind == "cancel":
            line.stop_attempt()
            ended = tickets.Ended(Status.CANCELLED, {"done": line.notebook.done}, "cancelled")
            await self.report(ticket, ended)
        elif kind == "complete":
            await self.report(ticket, tickets.Ended(Status.COMPLETED, {"done": TOTAL}))
        elif kind == "rehire":
            self.rehire(ticket)
        elif kind == "dismiss":
            line.dismiss()
            ticket.dismissed = True
        else:  # pragma: no cover - a typo in the strategy
            raise AssertionError(f"unknown step {op!r}")

    def hire(self, ticket_id: str, epoch: int) -> Ticket:
        notebook = self.make_notebook(ticket_id, seq=tickets.first_seq(epoch), total=TOTAL)
        line = self.sup.hire(notebook, [b"h"])
        assert self.lines.lookup(ticket_id) is line, "hire returns before registering"
        ticket = Ticket(line, notebook)
        self.tickets.append(ticket)
        return ticket

    def rehire(self, ticket: Ticket) -> None:
        """Hire a ticket again: the butler on duty if any, else a new line, next epoch."""
        latest = [t for t in self.tickets if t.ticket_id == ticket.ticket_id][-1]
        if not latest.line.retired.is_set():
            notebook = self.make_notebook(ticket.ticket_id, seq=tickets.first_seq(99))
            assert self.sup.hire(notebook, [b"other"]) is latest.line
            return
        self.hire(ticket.ticket_id, latest.epoch + 1)

    @staticmethod
    def start_report(ticket: Ticket) -> tickets.Started:
        ticket.attempt += 1
        return tickets.Started(ticket.attempt)

    async def report(self, ticket: Ticket, report: tickets.Report) -> None:
        retired_before = ticket.line.retired.is_set()
        accepted = await ticket.line.report(report)
        if accepted:
            ticket.accepted.append(report)
        if retired_before:
            assert not accepted, "a retired line took a report"
        if not accepted:
            assert ticket.line.retired.is_set() or ticket.dismissed, "a live line refused"

    def subscribe(self, ticket: Ticket, delta: int | None, pace: float) -> None:
        line = ticket.line
        after = 0 if delta is None else max(0, line.notebook.seq + delta)
        ended_before = line.notebook.status.terminal
        seq_before = line.notebook.seq
        frame, box = line.subscribe(after)
        snapshot = json.loads(frame)
        assert snapshot["type"] == "snapshot"
        assert snapshot["seq"] == seq_before
        assert snapshot["status"] == line.notebook.status.value
        assert box.after == max(after, seq_before)
        watcher = Watcher(ticket, box, snapshot, ended_before, pace)
        self.watchers.append(watcher)
        self.nursery.start_soon(self.read, watcher, name=f"reader of {ticket.ticket_id}")

    @staticmethod
    async def read(watcher: Watcher) -> None:
        with watcher.scope:
            while True:
                if watcher.pace:
                    await trio.sleep(watcher.pace)
                frame = await watcher.box.get()
                if frame is None:
                    break
                watcher.frames.append(json.loads(frame))
            watcher.drained = True

    def unsubscribe(self, index: int) -> None:
        active = [w for w in self.watchers if w.subscribed and not w.drained]
        if not active:
            return
        watcher = active[index % len(active)]
        watcher.ticket.line.unsubscribe(watcher.box)
        watcher.log_end = len(self.recorder.log[watcher.ticket.key])
        watcher.left_queued = len(watcher.box)
        watcher.scope.cancel()

    async def finish(self) -> None:
        """End every ticket still live (again, if an ending was dropped), then settle."""
        for _ in range(200):
            live = [t for t in self.tickets if not t.line.retired.is_set()]
            if not live:
                break
            for ticket in live:
                ticket.line.stop_attempt()
                done = ticket.line.notebook.done
                await self.report(
                    ticket, tickets.Ended(Status.CANCELLED, {"done": done}, "closing")
                )
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(5)
            self.check()
        else:  # pragma: no cover - a hang would be a failure anyway
            raise AssertionError("tickets never ended")
        while any(w.subscribed and w.box.closed and not w.drained for w in self.watchers):
            await trio.sleep(1)  # slow readers still reading what was queued
        await trio.testing.wait_all_tasks_blocked()

    # --- invariants ---

    def check(self) -> None:
        assert self.sup._nursery is not None
        on_duty = collections.Counter(task.name for task in self.sup._nursery.child_tasks)
        live: collections.Counter[str] = collections.Counter()
        for ticket in self.tickets:
            self.check_ticket(ticket)
            live[f"butler {ticket.ticket_id}"] += not ticket.line.retired.is_set()
        # A butler task is alive exactly for each line that has not retired.
        assert +live == on_duty, f"live lines {dict(+live)} but butler tasks {dict(on_duty)}"
        assert len(self.lines) == self.sup.on_duty == live.total()
        for watcher in self.watchers:
            self.check_watcher(watcher)
        self.check_restarts()

    def check_ticket(self, ticket: Ticket) -> None:
        line, ticket_id = ticket.line, ticket.key
        retired = line.retired.is_set()
        registered = self.lines.lookup(ticket.ticket_id) is line
        assert registered == (not retired), f"{ticket_id}: registered={registered} {retired=}"
        log = self.recorder.log[ticket.key]
        seqs = [event.seq for event in log]
        first = ticket.initial.seq
        assert seqs == list(range(first + 1, first + 1 + len(log))), f"{ticket_id}: {seqs}"
        assert line.notebook.seq == (seqs[-1] if seqs else first)
        terminals = [n for n, event in enumerate(log) if event.terminal]
        assert terminals in ([], [len(log) - 1]), f"{ticket_id}: terminal events at {terminals}"
        assert bool(terminals) == line.notebook.status.terminal
        if retired:
            assert not line.watchers, f"{ticket_id}: a retired line kept watchers"

    def expected_frames(self, watcher: Watcher) -> list[dict[str, Any]]:
        log = self.recorder.log[watcher.ticket.key][: watcher.log_end]
        return [comparable(event.body) for event in log if event.seq > watcher.box.after]

    def check_watcher(self, watcher: Watcher) -> None:
        frames, line = watcher.frames, watcher.ticket.line
        name = f"watcher of {watcher.ticket.key} after {watcher.box.after}"
        seqs = [frame["seq"] for frame in frames]
        assert all(a < b for a, b in itertools.pairwise(seqs)), f"{name}: {seqs}"
        assert all(seq > watcher.snapshot["seq"] for seq in seqs), f"{name}: before snapshot"
        terminals = [n for n, frame in enumerate(frames) if frame["type"] in ENDINGS]
        assert terminals in ([], [len(frames) - 1]), f"{name}: terminal frames at {terminals}"
        if watcher.ended_before:
            assert frames == [], f"{name}: frames after an ended snapshot"
            assert watcher.box.closed
            return
        expected = self.expected_frames(watcher)
        # Frames are a subsequence of the published events ...
        by_seq = {frame["seq"]: frame for frame in expected}
        assert all(by_seq.get(frame["seq"]) == frame for frame in frames), name
        # ... never skipping a status change or an ending (only progress coalesces) ...
        last = seqs[-1] if seqs else watcher.box.after
        kept = {
            frame["seq"]
            for frame in expected
            if frame["type"] != "progress" and (frame["seq"] <= last or watcher.drained)
        }
        assert kept <= set(seqs), f"{name}: missing {sorted(kept - set(seqs))}"
        # ... and, when nothing was coalesced, exactly the events so far, in order.
        if watcher.box.coalesced == 0:
            assert frames == expected[: len(frames)], name
        if watcher.drained:
            assert watcher.box.closed
            assert frames[-1:] == expected[-1:], f"{name}: the last event did not arrive"
        if not watcher.subscribed:
            assert watcher.box not in line.watchers, f"{name}: still pushed to after leaving"
            assert len(watcher.box) <= watcher.left_queued, f"{name}: frames after leaving"
        if watcher.subscribed and line.notebook.status.terminal:
            assert watcher.box.closed, f"{name}: mailbox left open after the ending"
            assert watcher.box not in line.watchers
        if watcher.subscribed and line.retired.is_set():
            assert watcher.box.closed, f"{name}: mailbox left open after retiring"

    def check_restarts(self) -> None:
        assert self.sup.restarts == self.recorder.total_crashes == len(self.recorder.all_crashes)
        assert self.sup.alarms == alarms(self.recorder.all_crashes, self.plan.alarm_per_minute)
        calls = collections.Counter(key for key, _ in self.give_up.calls)
        given_up = 0
        for ticket in self.tickets:
            key = ticket.key
            times = self.recorder.crashes.get(key, [])
            index = give_up_index(times, self.plan.limit, self.plan.window_seconds)
            if index is None:
                assert calls[key] == 0, f"{key}: gave up early"
                continue
            if calls[key] == 0 and ticket.line.notebook.status.terminal:
                # The crash past the limit was on an ending whose redeliveries
                # were used up: the supervisor published that ending itself
                # (endings are never dropped) and an ended ticket has nothing
                # left to give up.
                assert len(times) == index + 1, f"{key}: a butler after the ending"
                endings = [r for r in ticket.accepted if isinstance(r, tickets.Ended)]
                assert endings, f"{key}: ended without an ending"
                assert ticket.line.notebook.status is endings[0].outcome, key
                continue
            given_up += 1
            assert calls[key] == 1, f"{key}: give_up calls"
            assert len(times) == index + 1, f"{key}: a butler after giving up"
            if key in self.give_up.ended_before:
                # The crash that went past the limit was on an ending: the
                # supervisor published it itself (endings are never dropped).
                assert ticket.line.notebook.status.terminal
                continue
            assert ticket.line.retired.is_set(), f"{key}: given up but not retired"
            if self.give_up.fail:
                assert not ticket.line.notebook.status.terminal
                continue
            assert ticket.line.notebook.status is Status.FAILED
            assert (ticket.line.notebook.reason or "").startswith(
                f"butler crashed {self.plan.limit + 1} times within"
            )
        assert self.sup.given_up == given_up == len(self.give_up.calls)

    def check_final(self) -> None:
        self.check()
        assert self.sup._nursery is not None
        assert len(self.lines) == 0
        assert self.lines.ticket_ids() == []
        assert not self.sup._nursery.child_tasks, self.sup._nursery.child_tasks
        for ticket in self.tickets:
            line = ticket.line
            assert line.retired.is_set()
            if not line.notebook.status.terminal:
                assert self.ended_without_ending(ticket), f"{ticket.key} retired unfinished"
            assert not line.watchers
            assert line.inbox.closed, f"{ticket.key}: the inbox is still open"
            self.check_alone(ticket)
        for watcher in self.watchers:
            if watcher.subscribed:
                assert watcher.box.closed
                assert watcher.drained, "a reader of an ended ticket is still waiting"
                if watcher.ended_before:
                    continue
                log = self.recorder.log[watcher.ticket.key]
                terminal = [f for f in watcher.frames if f["type"] in ENDINGS]
                if not log or not log[-1].terminal:
                    # Retired without an ending (dismissed, or give_up failed).
                    assert self.ended_without_ending(watcher.ticket)
                    assert terminal == []
                    continue
                ending = log[-1]
                if ending.seq > watcher.box.after:
                    # Ended while watching: exactly one terminal frame, the last one.
                    assert terminal == watcher.frames[-1:] == [comparable(ending.body)]
                else:
                    # A resume point past the ending (a guest claiming seqs it never saw).
                    assert terminal == []

    def label(self) -> None:
        """Tell hypothesis's statistics which situations the example reached."""
        event(f"steps: {len(self.plan.ops) // 10 * 10}+")
        event(f"tickets: {min(len(self.tickets), 4)}+")
        event(f"crashes fired: {bool(self.recorder.total_crashes)}")
        event(f"given up: {bool(self.give_up.calls)}")
        event(f"alarms: {bool(self.sup.alarms)}")
        event(f"ending published by the supervisor: {bool(self.give_up.ended_before)}")
        event(f"watchers: {bool(self.watchers)}")
        event(f"a watcher left: {any(not w.subscribed for w in self.watchers)}")
        event(f"progress coalesced: {any(w.box.coalesced for w in self.watchers)}")
        event(f"watched an ended ticket: {any(w.ended_before for w in self.watchers)}")
        event(f"hired again: {len(self.tickets) > len({t.ticket_id for t in self.tickets})}")
        event(f"dismissed: {any(t.dismissed for t in self.tickets)}")

    def ended_without_ending(self, ticket: Ticket) -> bool:
        """Whether a line may retire with its ticket unfinished (only if ``endless``)."""
        given_up = any(key == ticket.key for key, _ in self.give_up.calls)
        return ticket.dismissed or (given_up and self.give_up.fail)

    def check_alone(self, ticket: Ticket) -> None:
        """A ticket's events are what its own reports make, whatever the others did.

        Holds for every ticket that was not given up and had no report dropped as
        poison (a report is dropped only after ``redeliveries + 1`` crashes).
        """
        crashes = len(self.recorder.crashes.get(ticket.key, []))
        if any(key == ticket.key for key, _ in self.give_up.calls):
            return
        if crashes and self.plan.redeliveries < crashes:
            return
        notebook, events = ticket.initial, []
        for report in ticket.accepted:
            notebook, produced = self.recorder.real(notebook, report, "t")
            events.extend(produced)
        logged = self.recorder.log[ticket.key]
        assert [without_time(comparable(e.body)) for e in logged] == [
            without_time(comparable(e.body)) for e in events
        ], ticket.key
        assert ticket.line.notebook.status is notebook.status


async def execute(plan: Plan, make_notebook: NotebookFactory, *, label: bool = True) -> World:
    settings_ = config.HotelConfig.from_env(
        env={},
        butler_restart_limit=plan.limit,
        butler_restart_window_seconds=plan.window_seconds,
        butler_restart_backoff_seconds=0.01,
        butler_restart_backoff_max_seconds=0.5,
        butler_inbox_size=plan.inbox_size,
        butler_redeliveries=plan.redeliveries,
        restart_alarm_per_minute=plan.alarm_per_minute,
        watcher_buffer_events=plan.watcher_buffer,
    )
    recorder = Recorder()
    give_up = FakeGiveUp(recorder, fail=plan.endless)
    lines: directory.Directory[butler.Line] = directory.Directory()
    sup = supervisor.Supervisor(settings_, lines, give_up, rng=random.Random(plan.seed))
    with quiet(), advance_replaced_by(recorder):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            world = World(plan, sup, lines, recorder, give_up, nursery, make_notebook)
            for op in plan.ops:
                with trio.fail_after(STEP_DEADLINE_SECONDS):
                    await world.step(op)
                world.check()
            with trio.fail_after(STEP_DEADLINE_SECONDS * 10):
                await world.finish()
            world.check_final()
            if label:
                world.label()
            nursery.cancel_scope.cancel()
    return world


# --- strategies -------------------------------------------------------------------

ticket_index = st.integers(0, 7)
STEPS: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "create": st.tuples(st.just("create"), st.booleans(), st.integers(0, 2)),
    "start": st.tuples(st.just("start"), ticket_index),
    "progress": st.tuples(st.just("progress"), ticket_index, st.integers(0, TOTAL)),
    "burst": st.tuples(st.just("burst"), ticket_index, st.integers(2, 8)),
    "subscribe": st.tuples(
        st.just("subscribe"),
        ticket_index,
        st.none() | st.integers(-2, 2),
        st.sampled_from([0.0, 0.0, 0.05, 1.0, 1.0]),
    ),
    "unsubscribe": st.tuples(st.just("unsubscribe"), st.integers(0, 7)),
    "crash": st.tuples(st.just("crash"), ticket_index, st.integers(1, 4)),
    "cancel": st.tuples(st.just("cancel"), ticket_index),
    "complete": st.tuples(st.just("complete"), ticket_index),
    "retry": st.tuples(st.just("retry"), ticket_index),
    "rehire": st.tuples(st.just("rehire"), ticket_index),
    "settle": st.tuples(st.just("settle")),
    "sleep": st.tuples(st.just("sleep"), st.sampled_from([0.001, 0.02, 0.3, 2.0, 30.0])),
}
WEIGHTS = {"create": 2, "start": 2, "progress": 3, "burst": 3, "subscribe": 3}


def steps(*extra: str) -> st.SearchStrategy[tuple[Any, ...]]:
    strategies = {**STEPS, "dismiss": st.tuples(st.just("dismiss"), ticket_index)}
    kinds = [kind for kind in STEPS for _ in range(WEIGHTS.get(kind, 1))] + list(extra)
    return st.sampled_from(kinds).flatmap(strategies.__getitem__)


def plans(*, endless: bool = False) -> st.SearchStrategy[Plan]:
    extra = ("dismiss",) if endless else ()
    return st.builds(
        Plan,
        limit=st.integers(1, 3),
        window_seconds=st.sampled_from([0.05, 1.0, 5.0]),
        inbox_size=st.sampled_from([1, 2, 64]),
        watcher_buffer=st.sampled_from([1, 2, 32]),
        redeliveries=st.sampled_from([0, 1, 100]),
        alarm_per_minute=st.sampled_from([1, 3, 120]),
        seed=st.integers(0, 2**16),
        ops=st.lists(steps(*extra), min_size=8, max_size=60).map(
            lambda ops: [("create", True, 0), *ops]
        ),
        endless=st.just(endless),
    )


PROPERTY_SETTINGS = settings(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # Explaining a failure re-runs it hundreds of times; the shrunk program says enough.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
)


@settings(PROPERTY_SETTINGS, max_examples=150)
@given(plan=plans())
def test_random_programs_keep_the_supervision_invariants(
    plan: Plan, make_notebook: NotebookFactory
) -> None:
    note(repr(plan))
    trio.run(execute, plan, make_notebook, clock=trio.testing.MockClock(autojump_threshold=0))


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(plan=plans(endless=True))
def test_random_programs_where_lines_retire_without_an_ending(
    plan: Plan, make_notebook: NotebookFactory
) -> None:
    """The same invariants when ``give_up`` fails and front desks dismiss lines.

    A line may then retire with its ticket unfinished; every mailbox must still
    be closed (a guest must never wait forever on a line that is gone).
    """
    note(repr(plan))
    trio.run(execute, plan, make_notebook, clock=trio.testing.MockClock(autojump_threshold=0))


# --- a few programs pinned as examples (readable regressions) ----------------------


def run_ops(make_notebook: NotebookFactory, *ops: tuple[Any, ...], **knobs: Any) -> World:
    fields: dict[str, Any] = {
        "limit": 2, "window_seconds": 5.0, "inbox_size": 2, "watcher_buffer": 32,
        "redeliveries": 100, "alarm_per_minute": 120, "seed": 1, "ops": list(ops),
    }  # fmt: skip
    fields.update(knobs)
    plan = Plan(**fields)
    clock = trio.testing.MockClock(autojump_threshold=0)
    return trio.run(functools.partial(execute, plan, make_notebook, label=False), clock=clock)


def statuses(world: World) -> list[str]:
    return [ticket.line.notebook.status.value for ticket in world.tickets]


def test_a_crash_storm_in_one_ticket_leaves_its_neighbour_alone(
    make_notebook: NotebookFactory,
) -> None:
    world = run_ops(
        make_notebook,
        ("create", True, 0), ("create", True, 0),
        ("subscribe", 0, None, 0.0), ("subscribe", 1, None, 1.0),
        ("crash", 0, 5), ("progress", 0, 1), ("progress", 1, 1), ("settle",),
        ("sleep", 2.0), ("progress", 1, 2), ("complete", 1),
    )  # fmt: skip
    assert (world.sup.restarts, world.give_up.calls[0][0]) == (3, ("t0", 0))
    assert statuses(world) == ["failed", "completed"]
    assert [f["type"] for f in world.watchers[1].frames] == [
        "status", "progress", "progress", "completed",
    ]  # fmt: skip


def test_crashes_spread_wider_than_the_window_never_give_up(
    make_notebook: NotebookFactory,
) -> None:
    world = run_ops(
        make_notebook,
        ("create", True, 0), ("subscribe", 0, None, 0.0),
        ("crash", 0, 1), ("progress", 0, 1), ("sleep", 30.0),
        ("crash", 0, 1), ("progress", 0, 2), ("sleep", 30.0),
        ("crash", 0, 1), ("complete", 0),
        limit=1, window_seconds=1.0,
    )  # fmt: skip
    assert (world.sup.restarts, world.give_up.calls) == (3, [])
    assert statuses(world) == ["completed"]


def test_watchers_come_and_go_while_a_ticket_is_cancelled(
    make_notebook: NotebookFactory,
) -> None:
    world = run_ops(
        make_notebook,
        ("create", True, 1), ("subscribe", 0, None, 0.0), ("subscribe", 0, 2, 1.0),
        ("progress", 0, 1), ("unsubscribe", 0), ("progress", 0, 2),
        ("crash", 0, 1), ("cancel", 0), ("subscribe", 0, None, 0.0), ("settle",),
        ("sleep", 1.0), ("subscribe", 0, None, 0.0),
        watcher_buffer=1,
    )  # fmt: skip
    assert statuses(world) == ["cancelled"]
    assert [w.subscribed for w in world.watchers] == [False, True, True, True]
    assert [w.ended_before for w in world.watchers] == [False, False, False, True]
    assert world.watchers[2].frames[-1]["type"] == "cancelled"


def test_a_slow_watcher_of_a_ticket_hired_again_gets_coalesced_progress(
    make_notebook: NotebookFactory,
) -> None:
    world = run_ops(
        make_notebook,
        ("create", True, 0), ("complete", 0), ("settle",), ("rehire", 0),
        ("subscribe", 1, None, 1.0), ("start", 1), ("burst", 1, 8), ("crash", 1, 1),
        ("complete", 1),
        watcher_buffer=1,
    )  # fmt: skip
    assert [t.key for t in world.tickets] == [("t0", 0), ("t0", 1)]
    watcher = world.watchers[0]
    assert watcher.box.coalesced > 0
    assert watcher.frames[0]["seq"] == tickets.first_seq(1) + 1
    assert watcher.frames[-1]["type"] == "completed"
