"""The desk's pace: cut while watched frames are late, regained while on time."""

from __future__ import annotations

import functools
import itertools
import random
from typing import Any

import pytest
import trio
import trio.testing

from grandhotel import pace


def make(**overrides: float) -> pace.Pace:
    values = {
        "target_lag": 0.005, "min_rate": 2.0, "recovery": 5.0, "backoff": 0.5, "cooldown": 0.5,
    } | overrides  # fmt: skip
    return pace.Pace(**values)


def admit_steadily(desk: pace.Pace, per_second: int, seconds: float, start: float = 0.0) -> float:
    """Admit ``per_second`` tickets a second and tick every 50 ms, on time."""
    now = start
    while now < start + seconds:
        for _ in range(per_second // 20):
            desk.admit(now)
        now += 0.05
        desk.observe(now, 0.0, 0.05, watched=True)
    return now


def test_the_desk_is_open_until_the_loop_runs_late() -> None:
    desk = make()
    admit_steadily(desk, 100, 3.0)
    assert desk.rate is None
    assert desk.demand == pytest.approx(100, rel=0.15)


def test_late_while_watched_cuts_the_rate_from_what_was_admitted() -> None:
    desk = make()
    now = admit_steadily(desk, 100, 3.0)
    desk.observe(now + 0.05, 0.030, 0.05, watched=True)
    assert desk.rate == pytest.approx(desk.backoff * desk.demand)
    assert desk.cuts == 1
    assert desk.report()["rate_per_second"] == round(desk.rate, 1)


def test_late_with_nobody_watching_changes_nothing() -> None:
    desk = make()
    now = admit_steadily(desk, 100, 3.0)
    desk.observe(now + 0.05, 0.500, 0.05, watched=False)
    assert desk.rate is None
    assert desk.cuts == 0


def test_a_zero_target_turns_pacing_off() -> None:
    desk = make(target_lag=0.0)
    now = admit_steadily(desk, 100, 3.0)
    desk.observe(now + 0.05, 0.500, 0.05, watched=True)
    assert desk.rate is None


def test_cuts_wait_out_the_cooldown_and_stop_at_the_floor() -> None:
    desk = make()
    admit_steadily(desk, 40, 1.0)
    desk.observe(10.0, 0.030, 0.05, watched=True)
    first = desk.rate
    assert first is not None
    desk.observe(10.2, 0.030, 0.05, watched=True)  # within the cooldown
    assert desk.rate == first
    assert desk.late == 2
    for step in range(1, 20):
        desk.observe(10.0 + step * 0.5, 0.030, 0.05, watched=True)
    assert desk.rate == desk.min_rate


def test_on_time_ticks_regain_the_rate_then_open_the_desk() -> None:
    desk = make()
    desk.observe(1.0, 0.030, 0.05, watched=True)  # nothing admitted yet: the floor
    assert desk.rate == desk.min_rate
    desk.observe(1.05, 0.0, 0.2, watched=True)
    assert desk.rate == pytest.approx(desk.min_rate + desk.recovery * 0.2)
    now = 1.05
    while desk.rate is not None:  # nobody is held back any more: open
        now += 0.05
        desk.observe(now, 0.0, 0.05, watched=True)
        assert now < 5


async def test_a_paced_line_lets_newcomers_in_by_the_group_each_tick() -> None:
    turns = pace.Turns(make())
    turns.pace.rate = 70.0  # 3.5 turns a tick
    assert turns.take_nowait()  # the one turn an open desk keeps: straight in after a cut
    assert not turns.take_nowait()
    turns.grant(0.05)
    assert [turns.take_nowait() for _ in range(4)] == [True, True, True, False]
    turns.grant(0.05)  # the half turn left over, and this tick's 3.5
    assert [turns.take_nowait() for _ in range(5)] == [True] * 4 + [False]
    for _ in range(20):  # a quiet second saves up one turn, no more
        turns.grant(0.05)
    assert [turns.take_nowait() for _ in range(5)] == [True] * 4 + [False]
    turns.pace.rate = 0.5  # slower than a turn a tick: a turn every 40 ticks
    taken = 0
    for _ in range(80):
        turns.grant(0.05)
        taken += turns.take_nowait()
    assert taken == 2
    assert turns.pace.admitted == 14


async def run_metronome(nursery: trio.Nursery, lines: list[pace.Turns], ticks: list[float]) -> None:
    """A metronome ticking every 50 ms; ``ticks`` gets the time of each tick."""

    def watched() -> bool:
        ticks.append(trio.current_time())
        return True

    metronome = functools.partial(pace.metronome, lines, tick_seconds=0.05, watched=watched)
    await nursery.start(metronome)


async def test_waiting_newcomers_go_in_together_at_the_ticks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    turns = pace.Turns(make(target_lag=0.0))  # the policy off: the rate set by hand
    turns.pace.rate = 100.0  # five turns a tick
    entered: list[tuple[int, float]] = []

    async def guest(number: int) -> None:
        await turns.take()
        entered.append((number, trio.current_time()))

    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await run_metronome(nursery, [turns], [])
        for number in range(16):
            nursery.start_soon(guest, number)
            await trio.sleep(0)  # arrive in this order
        await trio.sleep(0.01)
        assert turns.waiting == 15  # the first went straight in
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    groups: dict[float, set[int]] = {}
    for number, at in entered:
        groups.setdefault(round(at - start, 3), set()).add(number)
    # In order of arrival, a group per tick (trio runs a group in any order).
    assert groups == {0.0: {0}, 0.05: {1, 2, 3, 4, 5}, 0.1: {6, 7, 8, 9, 10},
                      0.15: {11, 12, 13, 14, 15}}  # fmt: skip


async def test_tickets_take_their_turns_in_order_at_the_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    turns = pace.Turns(make(target_lag=0.0))
    turns.pace.rate = 4.0
    entered: list[tuple[int, float]] = []

    async def guest(number: int) -> None:
        await turns.take()
        entered.append((number, trio.current_time()))

    async with trio.open_nursery() as nursery:
        await run_metronome(nursery, [turns], [])
        async with trio.open_nursery() as guests:
            for number in range(5):
                guests.start_soon(guest, number)
                await trio.sleep(0)  # arrive in this order
            await trio.sleep(0.01)
            assert turns.waiting == 4  # the first went straight in
        nursery.cancel_scope.cancel()
    assert [number for number, _ in entered] == [0, 1, 2, 3, 4]
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(entered)]
    assert gaps == pytest.approx([0.25] * 4, abs=0.051)
    assert turns.waiting == 0


async def test_a_newcomer_cancelled_in_line_leaves_it_without_a_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    turns = pace.Turns(make())
    turns.pace.rate = 20.0
    assert turns.take_nowait()
    with trio.move_on_after(0.01):
        await turns.take()
    assert turns.waiting == 0
    turns.grant(0.05)  # the turn it would have had is the next newcomer's
    assert turns.take_nowait()
    assert turns.pace.admitted == 2


async def test_the_metronome_rests_while_nobody_comes_and_a_newcomer_wakes_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    turns = pace.Turns(make(target_lag=0.0))  # the rate only changes by hand
    ticks: list[float] = []
    async with trio.open_nursery() as nursery:
        await run_metronome(nursery, [turns], ticks)
        await trio.sleep(5.0)  # nobody came: no tick at all
        assert ticks == []
        await turns.take()  # a newcomer: ticks from now on
        arrived = trio.current_time()
        await trio.sleep(0.5)
        assert len(ticks) == 10
        assert ticks[0] == pytest.approx(arrived + 0.05)
        await trio.sleep(pace.QUIET_SECONDS + 2.0)  # quiet again: rests
        last = ticks[-1]
        assert last - arrived <= pace.QUIET_SECONDS + 0.1
        turns.pace.rate = 5.0  # a cut pace keeps the metronome ticking
        await turns.take()
        woke = trio.current_time()
        await trio.sleep(2.99)
        assert len([tick for tick in ticks if tick > woke]) == 59
        nursery.cancel_scope.cancel()
    assert turns.pace.lag == pytest.approx(0.0, abs=1e-9)  # no tick was ever late
    assert turns.pace.demand < 1.0  # the spells at rest count as seconds with nobody in


async def test_a_jittered_metronome_ticks_at_random_moments_without_hearing_lag(
    autojump_clock: trio.testing.MockClock,
) -> None:
    turns = pace.Turns(make(target_lag=0.0))
    turns.pace.rate = 20.0  # paced by hand: 20 newcomers a second
    ticks: list[float] = []

    def watched() -> bool:
        ticks.append(trio.current_time())
        return True

    lateness: list[float] = []

    def held(start: float, end: float) -> float:
        lateness.append(end - start)  # how late the tick woke
        return 0.0

    metronome = functools.partial(
        pace.metronome, [turns], tick_seconds=0.05, watched=watched, held=held,
        rng=random.Random(7),
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        await nursery.start(metronome)
        for _ in range(300):  # a crowd waits for its turns
            nursery.start_soon(turns.take)
        await trio.sleep(10.0 - 0.001)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    low, high = 0.05 * (1 - pace.TICK_JITTER), 0.05 * (1 + pace.TICK_JITTER)
    assert all(low - 1e-9 <= gap <= high + 1e-9 for gap in gaps)
    assert max(gaps) - min(gaps) > 0.04  # spread over the range, not one period
    assert sum(gaps) / len(gaps) == pytest.approx(0.05, rel=0.05)
    assert len(lateness) == len(ticks)
    assert max(lateness) < 1e-6  # a longer wait asked for is not lag
    # The turns follow the time that passed, whatever each wait was: the one
    # kept turn, then 20 a second.
    assert turns.pace.admitted == pytest.approx(1 + 20 * (ticks[-1] - ticks[0] + gaps[0]), abs=1)


async def test_an_open_desk_lets_tickets_straight_in(
    autojump_clock: trio.testing.MockClock,
) -> None:
    turns = pace.Turns(make())
    start = trio.current_time()
    for _ in range(50):
        await turns.take()
    assert trio.current_time() == start
    assert turns.pace.demand == 0.0  # counted at the next tick
    turns.pace.observe(start + 1.0, 0.0, 1.0, watched=True)
    assert turns.pace.demand == pytest.approx(50)


async def test_a_turn_is_taken_at_once_only_while_nobody_is_held_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    turns = pace.Turns(make())
    assert turns.take_nowait()  # open, nobody in line
    assert turns.pace.admitted == 1
    turns.pace.rate = 4.0  # paced: the desk's one kept turn, then a wait
    assert turns.take_nowait()
    assert not turns.take_nowait()
    assert turns.pace.admitted == 2
    async with trio.open_nursery() as nursery:
        nursery.start_soon(turns.take)
        await trio.sleep(0.01)
        turns.pace.rate = None  # open, but someone is in line ahead
        assert not turns.take_nowait()
        turns.grant(0.05)  # the next tick lets the whole line in
    assert turns.waiting == 0
    assert turns.take_nowait()
    assert turns.pace.admitted == 4


async def test_the_metronome_hears_a_long_batch_as_lag(
    autojump_clock: trio.testing.MockClock,
) -> None:
    desk = make(backoff=0.5, min_rate=1.0)
    turns = pace.Turns(desk)
    watched = True
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(pace.metronome, [turns], tick_seconds=0.05, watched=lambda: watched)
        )
        for _ in range(20):  # 0.4 s of 50 admissions a second, the loop on time
            assert turns.take_nowait()
            await trio.sleep(0.02)
        assert desk.rate is None
        assert desk.lag < 0.005
        await trio.sleep(0.01)
        autojump_clock.jump(0.08)  # this task holds the loop for 80 ms: a long batch
        await trio.sleep(0.1)
        assert desk.late == 1  # the one tick that spanned the long batch
        assert desk.cuts == 1
        assert desk.rate is not None
        assert desk.rate < 50
        nursery.cancel_scope.cancel()


async def test_the_metronome_does_not_count_a_collectors_pause_as_lag(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The same long batch, but the collector says it held the loop for all of
    # it: no late tick, no cut. Half of it: the rest is still lag.
    for share, late in ((1.0, 0), (0.5, 1)):
        desk = make(backoff=0.5, min_rate=1.0)
        turns = pace.Turns(desk)
        spans: list[tuple[float, float]] = []

        def held(start: float, end: float, share: float = share, spans: list[Any] = spans) -> float:
            spans.append((start, end))
            return share * (end - start)

        metronome = functools.partial(
            pace.metronome, [turns], tick_seconds=0.05, watched=lambda: True, held=held
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(metronome)
            for _ in range(10):
                assert turns.take_nowait()
                await trio.sleep(0.02)
            await trio.sleep(0.01)
            autojump_clock.jump(0.08)
            await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
        assert desk.late == late
        assert desk.cuts == late
        assert all(end >= start for start, end in spans)
        assert 0.02 < max(end - start for start, end in spans) <= 0.08  # the late wake-up


def test_a_cut_starts_from_what_came_in_not_from_a_rate_nobody_reached() -> None:
    desk = make()
    desk.rate = 500.0  # far above what clients send
    admit_steadily(desk, 40, 3.0)
    desk.rate = 500.0
    desk.observe(10.0, 0.030, 0.05, watched=True)
    assert desk.rate == pytest.approx(desk.backoff * desk.demand)
    assert desk.rate < 40


def test_a_refused_ticket_is_told_how_long_the_line_ahead_takes() -> None:
    desk = make()
    assert desk.retry_after(50) == 1  # open: try again at once
    desk.rate = 2.0
    assert desk.retry_after(0) == 1
    assert desk.retry_after(7) == 4  # ceil(7 / 2)
    assert desk.retry_after(10_000) == pace.RETRY_AFTER_MAX_SECONDS


def test_admissions_are_counted_since_start() -> None:
    desk = make()
    for at in range(5):
        desk.admit(float(at))
    assert desk.admitted == 5
    assert desk.report()["admitted"] == 5
