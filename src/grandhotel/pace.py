"""Live first: the front desk's pace, set by how late the hotel's loop runs.

Theory of operation
-------------------
The hotel is one trio thread and trio has no priorities: a new ticket's work
(the POST, the INSERT, the butler, the guest's WebSocket handshake, about a
dozen tasks) waits in the same run queue as the frames of tickets already
running. Created as fast as clients can, new tickets fill every spare cycle, and
each frame then waits a whole crowded batch at every hop on its way out (the
watch benchmark: p99 140-225 ms flat out, 26 ms at a pace the server sustains).

So the desk paces itself. A metronome task (``metronome``) sleeps
``pace_tick_seconds`` over and over; how much later than asked it wakes is the
loop's lag (how long a batch of runnable tasks, or a collector pause, took).
``Pace`` is the policy, pure: while guests are watching and the lag is above
``live_lag_target_ms``, the desk admits new tickets at a rate that backs off
multiplicatively (at most once per cooldown, from what it admitted lately) and
recovers additively while the loop is on time, until it no longer holds anyone
back and the desk is open again. Without watchers nobody waits for a frame, so
intake runs flat out. The same rule as TCP congestion control (AIMD), with the
loop's lag for a lost packet.

The door (doorman.py) is paced the same way, with its own rate: the doorman
holds the one connection it has just taken until its turn, and the rest wait in
the listen backlog.

While the desk is paced, turns are handed out at the metronome's ticks, the
rate's worth at a time (``Turns.grant``): newcomers go in as a group, which
shares their work's wake-ups and round trips (the group commit, the claim,
their steps falling due together). A newcomer waiting for its turn waits in
order, up to ``intake_wait_seconds``, then gets a 503 with ``Retry-After``
(the line ahead of it at the current rate).

The metronome's ticks are jittered: at even ticks, the groups it lets in (and
their steps, a whole number of seconds later) would run just after a tick
every time, and it would measure only the quiet moments in between. While
nobody arrives and the pace is open, it rests; the next newcomer wakes it.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable
from typing import Any

import trio

DEMAND_WINDOW_SECONDS = 1.0
"""The admissions-per-second average reacts over about this long."""
OPEN_MARGIN = 2.0
"""The desk opens again once its rate is this many times what it admits."""
MIN_RATE = 0.01
"""A floor under any rate (the config requires positive ones; this guards the division)."""
QUIET_SECONDS = 1.0
"""With nobody in for this long (and the pace open), the metronome rests."""
TICK_JITTER = 0.5
"""The metronome's waits vary by this share of ``pace_tick_seconds`` either way,
so that it samples the loop at random moments, not in step with what it lets in."""
_JITTERED = (1.0 - TICK_JITTER, 1.0 + TICK_JITTER)
RETRY_AFTER_MAX_SECONDS = 30


@dataclasses.dataclass
class Pace:
    """How fast the desk lets new tickets in (pure: times are passed in).

    Args:
        target_lag: the loop lag (seconds) above which watched frames are late.
        min_rate: the slowest the desk goes (tickets per second).
        recovery: tickets per second regained per second on time.
        backoff: the factor the rate is cut by when the loop is late.
        cooldown: the shortest time (seconds) between two cuts.
    """

    target_lag: float
    min_rate: float
    recovery: float
    backoff: float
    cooldown: float
    rate: float | None = None
    """Tickets per second the desk admits; None while it is open (no limit)."""
    lag: float = 0.0
    """The last lag measured (seconds)."""
    demand: float = 0.0
    """Tickets admitted per second, averaged over about a second."""
    cuts: int = 0
    late: int = 0
    admitted: int = 0
    """Admissions since start."""
    last_admission: float = -math.inf
    """When the last newcomer came in (trio's clock)."""
    _admitted: int = 0
    _last_cut: float = -math.inf

    @property
    def enabled(self) -> bool:
        """A zero target turns pacing off."""
        return self.target_lag > 0

    def observe(self, now: float, lag: float, elapsed: float, *, watched: bool) -> None:
        """One metronome tick: the loop woke ``lag`` late after ``elapsed`` seconds."""
        if elapsed <= 0:
            return
        admitted, self._admitted = self._admitted, 0
        weight = min(1.0, elapsed / DEMAND_WINDOW_SECONDS)
        self.demand += weight * (admitted / elapsed - self.demand)
        self.lag = lag
        if not self.enabled:
            return
        if watched and lag > self.target_lag:
            self.late += 1
            if now - self._last_cut >= self.cooldown:
                # From what actually came in: a rate far above it holds nobody
                # back, and cutting it would take several cooldowns to bite.
                base = (
                    self.demand if self.rate is None else min(self.rate, self.demand or self.rate)
                )
                self.rate = max(self.min_rate, base * self.backoff)
                self._last_cut = now
                self.cuts += 1
        elif self.rate is not None:
            self.rate += self.recovery * elapsed
            if self.rate >= OPEN_MARGIN * self.demand + self.recovery:
                self.rate = None

    def admit(self, now: float) -> None:
        """A ticket came in at ``now``."""
        self._admitted += 1
        self.admitted += 1
        self.last_admission = now

    def retry_after(self, waiting: int) -> int:
        """Seconds a refused client should wait: the line ahead of it at this rate."""
        if self.rate is None:
            return 1
        return max(1, min(RETRY_AFTER_MAX_SECONDS, math.ceil(waiting / max(self.rate, MIN_RATE))))

    def report(self) -> dict[str, Any]:
        """For ``GET /stats``."""
        return {
            "rate_per_second": None if self.rate is None else round(self.rate, 1),
            "admitted_per_second": round(self.demand, 1),
            "loop_lag_ms": round(self.lag * 1000, 2),
            "target_lag_ms": round(self.target_lag * 1000, 2),
            "late_ticks": self.late,
            "cuts": self.cuts,
            "admitted": self.admitted,
        }


async def metronome(
    lines: list[Turns],
    *,
    tick_seconds: float,
    watched: Callable[[], bool],
    held: Callable[[float, float], float] = lambda start, end: 0.0,
    rng: random.Random | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Measure the loop's lag every ``tick_seconds``, tell each line's pace and
    hand out the line's turns, until cancelled.

    With ``rng``, each wait is drawn from ``tick_seconds`` +- ``TICK_JITTER``:
    the groups let in at a tick, and their steps a whole number of seconds
    later, would otherwise start right after a tick, every time, and the next
    tick would find the loop on time for the very reason that the work it
    paces keeps out of its way (bench/README.md, eighth round).

    ``held(start, end)`` says how many seconds of that span (``time.perf_counter``)
    the garbage collector held the loop: that much of a late wake-up is not the
    load's, and the collector keeps its own pauses short (housekeeping.py), so
    it is not counted as lag. Cutting the intake would not shorten a pause: in
    the watch benchmark young pauses of 10-20 ms cut the desk's pace to 22
    tickets a second where the loop itself was on time.

    While every line is quiet (open, nobody waiting, nobody in for
    ``QUIET_SECONDS``) the metronome rests until a newcomer arrives: an idle
    hotel is not woken 20 times a second to measure a lag that decides nothing.
    """
    task_status.started()
    before = trio.current_time()
    while True:
        if all(line.quiet(before) for line in lines):
            await _rest(lines)
            now = trio.current_time()
            for line in lines:  # the spell at rest: nobody came but the one who rang
                line.pace.observe(now, 0.0, now - before, watched=False)
            before = now
        asked = tick_seconds if rng is None else tick_seconds * rng.uniform(*_JITTERED)
        await trio.sleep(asked)
        now, woke = trio.current_time(), time.perf_counter()
        elapsed = now - before
        late = max(0.0, elapsed - asked)
        lag, busy = max(0.0, late - held(woke - late, woke)), watched()
        for line in lines:
            line.pace.observe(now, lag, elapsed, watched=busy)
            line.grant(elapsed)
        before = now


async def _rest(lines: list[Turns]) -> None:
    """Wait until a newcomer arrives at any of ``lines``."""
    bell = trio.Event()
    for line in lines:
        line.bell = bell
    try:
        await bell.wait()
    finally:
        for line in lines:
            line.bell = None


class Turns:
    """Newcomers (tickets at the desk, connections at the door) take their turn,
    in order, at the pace's rate.

    While the pace holds newcomers back, their turns come in groups: each tick
    of the metronome grants the rate's worth of turns for the time since the
    last one (``grant``), and the first ones in line go in together. One at a
    time, spaced by the rate, each newcomer woke the hotel from idle on its
    own, and so did its INSERT, its claim and its steps; let in together they
    share the wake-ups, the group commit gets a group to write, the laundry
    claims them in one statement and their steps fall due together (on this
    project's VM a wake-up from idle costs ~0.4 ms of CPU: bench/README.md).
    """

    def __init__(self, pace: Pace) -> None:
        self.pace = pace
        self.bell: trio.Event | None = None
        """Rung by the next newcomer while the metronome rests."""
        self._line = trio.lowlevel.ParkingLot()
        self._credit = 1.0
        """Turns granted and not yet taken (a fraction carries over). An open
        desk keeps one, so the first newcomer after a cut goes in at once."""

    @property
    def waiting(self) -> int:
        """Newcomers waiting for their turn."""
        return len(self._line)

    def retry_after(self) -> int:
        """Seconds a refused newcomer should wait: the line ahead at the current rate."""
        return self.pace.retry_after(self.waiting)

    def quiet(self, now: float) -> bool:
        """Open, nobody in line, and nobody came in for ``QUIET_SECONDS``."""
        return (
            self.pace.rate is None
            and not self._line
            and now - self.pace.last_admission > QUIET_SECONDS
        )

    def take_nowait(self) -> bool:
        """Take the turn now if nobody waits and the pace holds nobody back."""
        if self._line:
            return False  # those ahead keep their order
        if self.pace.rate is None:
            self._admit()
            return True
        if self._credit >= 1.0:
            self._credit -= 1.0
            self._admit()
            return True
        return False

    async def take(self) -> None:
        """Return when it is this newcomer's turn.

        Cancellation: a newcomer cancelled while in line leaves it, its turn untaken.
        """
        if self.take_nowait():
            return
        await self._line.park()  # ``grant`` admits it as it unparks it

    def grant(self, elapsed: float) -> None:
        """One tick: the turns the rate allows for ``elapsed`` seconds, in a group.

        Turns nobody took are kept for newcomers who arrive before the next
        tick, but a quiet spell saves up no more than one turn: a fraction
        carries over, a crowd of saved turns does not.
        """
        rate = self.pace.rate
        if rate is None:
            self._credit = 1.0
            group = len(self._line)
        else:
            self._credit = min(self._credit, 1.0) + rate * elapsed
            group = min(int(self._credit), len(self._line))
            self._credit -= group
        if group:
            for _ in self._line.unpark(count=group):
                self._admit()

    def _admit(self) -> None:
        self.pace.admit(trio.current_time())
        if self.bell is not None:
            self.bell.set()
