"""The desk's pace: cut while watched frames are late, regained while on time."""

from __future__ import annotations

import functools
import itertools
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
    now = admit_steadily(desk, 100, 3.0)
    assert desk.rate is None
    assert desk.wait(now) == 0.0
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
    assert desk.wait(now) == 0.0


def test_a_paced_desk_spaces_tickets_by_its_rate() -> None:
    desk = make()
    desk.rate = 10.0
    desk.admit(3.0)
    assert desk.wait(3.0) == pytest.approx(0.1)
    assert desk.wait(3.04) == pytest.approx(0.06)
    assert desk.wait(3.1) == 0.0


async def test_tickets_take_their_turns_in_order_at_the_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    desk = make()
    desk.rate = 4.0
    turns = pace.Turns(desk, 0.05)
    entered: list[tuple[int, float]] = []

    async def guest(number: int) -> None:
        await turns.take()
        entered.append((number, trio.current_time()))

    async with trio.open_nursery() as nursery:
        for number in range(5):
            nursery.start_soon(guest, number)
            await trio.sleep(0)  # arrive in this order
        await trio.sleep(0.01)
        assert turns.waiting == 4  # the first went straight in
    assert [number for number, _ in entered] == [0, 1, 2, 3, 4]
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(entered)]
    assert gaps == pytest.approx([0.25] * 4, abs=0.051)
    assert turns.waiting == 0


async def test_an_open_desk_lets_tickets_straight_in(
    autojump_clock: trio.testing.MockClock,
) -> None:
    turns = pace.Turns(make(), 0.05)
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
    turns = pace.Turns(make(), 0.05)
    assert turns.take_nowait()  # open, nobody in line
    assert turns.pace.admitted == 1
    turns.pace.rate = 4.0  # paced: the turn must be waited for
    assert not turns.take_nowait()
    assert turns.pace.admitted == 1
    turns.pace.rate = None
    async with turns._line:  # someone is in line ahead
        assert not turns.take_nowait()
    assert turns.take_nowait()


async def test_the_metronome_hears_a_long_batch_as_lag(
    autojump_clock: trio.testing.MockClock,
) -> None:
    desk = make(backoff=0.5, min_rate=1.0)
    watched = True
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(pace.metronome, [desk], tick_seconds=0.05, watched=lambda: watched)
        )
        for _ in range(20):  # 0.4 s of 50 admissions a second, the loop on time
            desk.admit(trio.current_time())
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
        spans: list[tuple[float, float]] = []

        def held(start: float, end: float, share: float = share, spans: list[Any] = spans) -> float:
            spans.append((start, end))
            return share * (end - start)

        metronome = functools.partial(
            pace.metronome, [desk], tick_seconds=0.05, watched=lambda: True, held=held
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(metronome)
            for _ in range(10):
                desk.admit(trio.current_time())
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
