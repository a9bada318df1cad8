"""Housekeeping: the server process's garbage collector, tuned and watched.

Theory of operation
-------------------
CPython's cyclic collector stops the whole process while it runs, and the hotel
is one thread: every live guest waits for it. A young-generation collection is
cheap; a full one walks every object the hotel holds (tens of thousands of
butlers, notebooks and connections) and is the longest pause a guest can see.
``tune`` freezes what start-up made (it lives forever, so no collection needs
to look at it again) and sets the thresholds from the config; ``Pauses``
measures every collection through ``gc.callbacks`` so that operators (``GET
/stats``) and the benchmark see what the collector costs instead of guessing.

Measured in the watch benchmark (2 cores, thousands of live tickets): the young
generations hold every task, cancel scope and connection made in the last
moments, so a young collection costs ~1.7 us per object there; a full one
walked ~300,000 objects and stopped the hotel for 400-650 ms, and Python
triggers one whenever enough has survived, in the middle of the busiest
minute. So the hotel schedules full collections itself (``full_collections``):
once when it turns quiet (no ticket live, after butlers worked; not every
second while other traffic keeps allocating, which cost the bare side of the
fanout benchmark 5 % of its CPU), and in any case every
``gc_full_interval_seconds`` so that cyclic garbage stays bounded. Young
collections run on the hotel's clock (``young_collections``) as well as on
Python's trigger, which keeps each pause short; the clock's interval follows
the pauses, between ``gc_young_interval_seconds`` and
``gc_young_longest_interval_seconds``: at 500 watched tickets stepping every
0.2 s, a young collection every 1 s paused the hotel about as long as one every
0.1 s did (the objects walked are the ones still alive, a step's worth) and cut
the fanout benchmark's server CPU per event by 5-8 % (bench/README.md). The
pace does not count these pauses as the load's lag (``Pauses.held``). Middle ones
(which walk every survivor of a young one again: each live ticket's tasks and
connections) are off by default and left to the full ones too.
Cyclic garbage is rare here (a 3,000-ticket run with no collection at all
peaked at 183 MB against 179 MB with them), so little waits for them.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import trio

GENERATIONS = 3
NEVER = 1_000_000_000
"""A third threshold Python never reaches: full collections are the hotel's call."""


class Pauses:
    """Count and time the collector's runs, per generation."""

    def __init__(self) -> None:
        self.count = [0] * GENERATIONS
        self.seconds = [0.0] * GENERATIONS
        self.longest = [0.0] * GENERATIONS
        self._started = 0.0
        self.frozen = 0
        """Objects frozen at start-up (counted once: counting walks them all)."""
        self.young_interval = 0.0
        """The hotel's current wait between young collections (0: none)."""
        self.last = (0.0, 0.0)
        """When the last collection started and ended (``time.perf_counter``)."""

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        """The ``gc.callbacks`` hook."""
        if phase == "start":
            self._started = time.perf_counter()
            return
        ended = time.perf_counter()
        took = ended - self._started
        self.last = (self._started, ended)
        generation = int(info.get("generation", GENERATIONS - 1))
        self.count[generation] += 1
        self.seconds[generation] += took
        self.longest[generation] = max(self.longest[generation], took)

    def held(self, start: float, end: float) -> float:
        """Seconds of ``start``..``end`` (``time.perf_counter``) that the last
        collection held the hotel: how much of a late wake-up it explains."""
        began, ended = self.last
        return max(0.0, min(end, ended) - max(start, began))

    def report(self) -> dict[str, Any]:
        """Collections, their total and longest pause (ms), per generation."""
        return {
            f"gen{n}": {
                "collections": self.count[n],
                "total_ms": round(self.seconds[n] * 1000, 1),
                "longest_ms": round(self.longest[n] * 1000, 2),
            }
            for n in range(GENERATIONS)
        } | {
            "frozen_objects": self.frozen,
            "thresholds": list(gc.get_threshold()),
            "young_interval_seconds": round(self.young_interval, 3),
        }


pauses = Pauses()
"""The process's one collector, watched once (``tune`` installs the hook)."""


def tune(gen0: int, gen1: int) -> None:
    """Freeze what exists now, set the young thresholds (``gen1`` 0: no middle
    collections), leave full collections to ``full_collections``, and start
    timing collections."""
    gc.collect()
    gc.freeze()
    pauses.frozen = gc.get_freeze_count()
    gc.set_threshold(gen0, gen1 or NEVER, NEVER)
    if pauses not in gc.callbacks:
        gc.callbacks.append(pauses)


def full_collection_due(*, quiet: bool, hired: int, since_last: float, interval: float) -> bool:
    """Whether to collect everything now: quiet after ``hired`` butlers worked
    since the last full collection (once per quiet spell, not every check while
    other traffic keeps allocating), or the longest interval has passed."""
    return (quiet and hired > 0) or since_last >= interval


GROWTH = 1.5
"""How much longer the next young interval gets while pauses stay well short."""


def next_young_interval(
    interval: float, pause: float, *, shortest: float, longest: float, target: float
) -> float:
    """The wait before the next young collection, from the last one's pause.

    A young collection walks what was made since the last one and is still
    alive. Under a steady load most of that is short-lived (a step's tasks,
    scopes and notebook, alive until the next step), so once the interval is
    longer than those lives the pause stops growing with it while the
    collections get rarer: a longer interval costs less CPU for the same pause.
    So the interval grows while a pause ``GROWTH`` times longer would still be
    within ``target``, and halves when a pause is over it (a load whose objects
    live longer: each pause then grows with the interval).
    """
    if pause > target:
        return max(shortest, interval / 2)
    if pause * GROWTH <= target:
        return min(longest, interval * GROWTH)
    return interval


async def young_collections(
    *,
    shortest_seconds: float,
    longest_seconds: float,
    pause_target_seconds: float,
    clock: Callable[[], float] = time.perf_counter,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Collect the young generation on the hotel's clock, until cancelled.

    Python's own trigger counts allocations minus deallocations, and every old
    object that dies (a finished ticket's tasks and connections) counts against
    it: under churn the young generation grew to 213,421 objects with its count
    at 10,001, and that collection took 157 ms. A clock bounds it by time
    instead; the interval starts at ``shortest_seconds`` and follows the pauses
    (``next_young_interval``, each pause timed by ``clock``), within
    ``longest_seconds``.
    """
    interval = pauses.young_interval = shortest_seconds
    task_status.started()
    while True:
        await trio.sleep(interval)
        started = clock()
        gc.collect(0)
        interval = pauses.young_interval = next_young_interval(
            interval, clock() - started, shortest=shortest_seconds,
            longest=longest_seconds, target=pause_target_seconds,
        )  # fmt: skip


async def full_collections(
    *,
    check_seconds: float,
    interval_seconds: float,
    quiet: Callable[[], bool],
    hires: Callable[[], int],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Make the full collections on the hotel's schedule, until cancelled.

    ``quiet`` says no ticket is live; ``hires`` counts butlers hired so far.
    """
    task_status.started()
    last = trio.current_time()
    hired_at_last = hires()
    while True:
        await trio.sleep(check_seconds)
        now = trio.current_time()
        hired, calm = hires(), quiet()
        if full_collection_due(
            quiet=calm, hired=hired - hired_at_last, since_last=now - last,
            interval=interval_seconds,
        ):  # fmt: skip
            gc.collect()
            last = trio.current_time()
            if calm:  # a busy spell's interval collection still owes the quiet one
                hired_at_last = hired
