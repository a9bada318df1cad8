"""The collector's pauses are counted and timed per generation."""

from __future__ import annotations

import functools
import gc

import pytest
import trio
import trio.testing

from grandhotel import housekeeping


def test_every_collection_is_counted_in_its_generation() -> None:
    pauses = housekeeping.Pauses()
    gc.callbacks.append(pauses)
    try:
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
    finally:
        gc.callbacks.remove(pauses)
    report = pauses.report()
    assert report["gen0"]["collections"] >= 1
    assert report["gen2"]["collections"] >= 2
    assert report["gen2"]["total_ms"] >= report["gen2"]["longest_ms"] > 0
    assert report["thresholds"] == list(gc.get_threshold())


def test_a_collection_outside_the_watch_is_not_counted() -> None:
    pauses = housekeeping.Pauses()
    gc.collect()
    assert all(pauses.report()[f"gen{n}"]["collections"] == 0 for n in range(3))


@pytest.mark.parametrize(
    ("quiet", "hired", "since_last", "due"),
    [
        (True, 1, 0.0, True),  # turned quiet after butlers worked
        (True, 0, 5.0, False),  # quiet, and still quiet: nothing new to look at
        (False, 50, 599.0, False),  # busy: wait for the longest interval
        (False, 50, 600.0, True),  # ... which bounds cyclic garbage
        (False, 0, 600.0, True),
    ],
)
def test_a_full_collection_is_due_when_quiet_or_after_the_longest_interval(
    quiet: bool, hired: int, since_last: float, due: bool
) -> None:
    assert (
        housekeeping.full_collection_due(
            quiet=quiet, hired=hired, since_last=since_last, interval=600.0
        )
        is due
    )


async def test_full_collections_follow_the_hotel_not_the_allocator(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    collected: list[float] = []
    busy = True
    hires = 3
    monkeypatch.setattr(gc, "collect", lambda *args: collected.append(trio.current_time()))
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(
                housekeeping.full_collections,
                check_seconds=1.0, interval_seconds=30.0, quiet=lambda: not busy,
                hires=lambda: hires,
            )
        )  # fmt: skip
        hires = 10  # butlers at work
        await trio.sleep(29.5)
        assert collected == []  # busy: none before the longest interval
        await trio.sleep(1.0)
        assert len(collected) == 1  # the interval passed
        busy = False
        await trio.sleep(1.0)
        assert len(collected) == 2  # turned quiet after butlers worked (the busy
        # interval's collection does not count as the quiet one)
        await trio.sleep(10.0)
        assert len(collected) == 2  # still quiet, nobody hired: once per quiet spell
        nursery.cancel_scope.cancel()


def test_tune_leaves_full_collections_to_the_hotel() -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    try:
        housekeeping.tune(5_000, 7)
        assert gc.get_threshold() == (5_000, 7, housekeeping.NEVER)
        housekeeping.tune(5_000, 0)  # no middle collections either
        assert gc.get_threshold() == (5_000, housekeeping.NEVER, housekeeping.NEVER)
        assert housekeeping.pauses in gc.callbacks
    finally:
        gc.set_threshold(*before)
        gc.callbacks.remove(housekeeping.pauses)
        if gc.get_freeze_count() > frozen:
            gc.unfreeze()


async def test_young_collections_run_on_the_clock(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    collected: list[tuple[float, tuple[int, ...]]] = []
    monkeypatch.setattr(gc, "collect", lambda *args: collected.append((trio.current_time(), args)))
    young = functools.partial(
        housekeeping.young_collections, shortest_seconds=0.1, longest_seconds=0.1,
        pause_target_seconds=0.01,
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(young)
        await trio.sleep(1.05)
        nursery.cancel_scope.cancel()
    assert [args for _, args in collected] == [(0,)] * 10  # the young generation only
    expected = [round(0.1 * n, 6) for n in range(1, 11)]
    assert [round(at - start, 6) for at, _ in collected] == expected


def interval_after(interval: float, pause: float) -> float:
    return housekeeping.next_young_interval(
        interval, pause, shortest=0.1, longest=1.0, target=0.010
    )


def test_the_young_interval_grows_while_pauses_stay_short() -> None:
    assert interval_after(0.1, 0.002) == pytest.approx(0.15)
    assert interval_after(0.8, 0.002) == 1.0  # never past the longest
    assert interval_after(1.0, 0.0) == 1.0


def test_the_young_interval_holds_near_the_target_and_halves_past_it() -> None:
    assert interval_after(0.4, 0.008) == 0.4  # 1.5 x longer would be over the target
    assert interval_after(0.4, 0.011) == 0.2
    assert interval_after(0.15, 0.050) == 0.1  # never below the shortest


async def test_young_collections_follow_their_pauses(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fake collector whose pause grows with the time since the last collection
    # (2 ms per 0.1 s, as when every young object outlives the wait), measured by
    # a fake clock: the waits grow to where a pause is near the 10 ms target.
    elapsed = [0.0]
    waits: list[float] = []
    last = [0.0]

    def collect(*_args: int) -> None:
        now = trio.current_time()
        waits.append(round(now - last[0], 6))
        elapsed[0] += 0.02 * (now - last[0])
        last[0] = now

    monkeypatch.setattr(gc, "collect", collect)
    young = functools.partial(
        housekeeping.young_collections, shortest_seconds=0.1, longest_seconds=1.0,
        pause_target_seconds=0.010, clock=lambda: elapsed[0],
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        last[0] = trio.current_time()
        await nursery.start(young)
        await trio.sleep(5)
        assert housekeeping.pauses.young_interval == pytest.approx(0.3375)
        nursery.cancel_scope.cancel()
    assert waits[:4] == [0.1, 0.15, 0.225, 0.3375]  # 2, 3, 4.5, 6.75 ms: then it holds
    assert set(waits[4:]) == {0.3375}


def test_held_is_the_overlap_with_the_last_collection() -> None:
    pauses = housekeeping.Pauses()
    gc.callbacks.append(pauses)
    try:
        gc.collect(0)
    finally:
        gc.callbacks.remove(pauses)
    began, ended = pauses.last
    assert 0 < began <= ended
    assert pauses.held(began - 1, ended + 1) == pytest.approx(ended - began)
    assert pauses.held(ended, ended + 1) == 0  # after it
    assert pauses.held(began - 1, began) == 0  # before it
    middle = (began + ended) / 2
    assert pauses.held(middle, ended + 1) == pytest.approx(ended - middle)
