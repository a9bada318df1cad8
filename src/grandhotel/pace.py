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

A ticket waiting for its turn waits in order (``Turns`` holds a lock), up to
``intake_wait_seconds``, then gets a 503 with ``Retry-After`` (the line ahead of
it at the current rate).
"""

from __future__ import annotations

import dataclasses
import math
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
    _admitted: int = 0
    _last_cut: float = -math.inf
    _last_admission: float = -math.inf

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

    def wait(self, now: float) -> float:
        """Seconds until the next ticket may come in (0: now)."""
        if self.rate is None:
            return 0.0
        return max(0.0, self._last_admission + 1.0 / max(self.rate, MIN_RATE) - now)

    def admit(self, now: float) -> None:
        """A ticket came in at ``now``."""
        self._admitted += 1
        self.admitted += 1
        self._last_admission = now

    def retry_after(self, waiting: int) -> int:
        """Seconds a refused client should wait: the line ahead of it at this rate."""
        if self.rate is None:
            return 1
        return max(1, min(RETRY_AFTER_MAX_SECONDS, math.ceil(waiting / self.rate)))

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
    paces: list[Pace],
    *,
    tick_seconds: float,
    watched: Callable[[], bool],
    held: Callable[[float, float], float] = lambda start, end: 0.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Measure the loop's lag every ``tick_seconds`` and tell ``paces``, until cancelled.

    ``held(start, end)`` says how many seconds of that span (``time.perf_counter``)
    the garbage collector held the loop: that much of a late wake-up is not the
    load's, and the collector keeps its own pauses short (housekeeping.py), so
    it is not counted as lag. Cutting the intake would not shorten a pause: in
    the watch benchmark young pauses of 10-20 ms cut the desk's pace to 22
    tickets a second where the loop itself was on time.
    """
    task_status.started()
    before = trio.current_time()
    while True:
        await trio.sleep(tick_seconds)
        now, woke = trio.current_time(), time.perf_counter()
        elapsed = now - before
        late = max(0.0, elapsed - tick_seconds)
        lag, busy = max(0.0, late - held(woke - late, woke)), watched()
        for pace in paces:
            pace.observe(now, lag, elapsed, watched=busy)
        before = now


class Turns:
    """Newcomers (tickets at the desk, connections at the door) take their turn,
    in order, at the pace's rate."""

    def __init__(self, pace: Pace, tick_seconds: float) -> None:
        self.pace = pace
        self.tick_seconds = tick_seconds
        self._line = trio.Lock()

    @property
    def waiting(self) -> int:
        """Newcomers waiting for their turn."""
        return self._line.statistics().tasks_waiting + (1 if self._line.locked() else 0)

    def retry_after(self) -> int:
        """Seconds a refused newcomer should wait: the line ahead at the current rate."""
        return self.pace.retry_after(self.waiting)

    def take_nowait(self) -> bool:
        """Take the turn now if nobody waits and the pace holds nobody back."""
        if self.pace.rate is None and not self._line.locked():
            self.pace.admit(trio.current_time())
            return True
        return False

    async def take(self) -> None:
        """Return when it is this ticket's turn (re-reading the rate as it changes)."""
        if self.take_nowait():
            return
        async with self._line:
            # A deadline, not an event: the rate may change at every tick.
            while (wait := self.pace.wait(trio.current_time())) > 0:  # noqa: ASYNC110
                await trio.sleep(min(wait, self.tick_seconds))
            self.pace.admit(trio.current_time())
