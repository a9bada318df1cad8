"""Unit tests for ``grandhotel.mailbox``: bounded, coalescing, never blocking the butler."""

from __future__ import annotations

import inspect
import random

import pytest
import trio
import trio.testing

from grandhotel import mailbox


async def drain(box: mailbox.Mailbox) -> list[str]:
    """Every frame until the closed mailbox is empty."""
    box.close()
    frames = []
    while (frame := await box.get()) is not None:
        frames.append(frame)
    return frames


def push_progress(box: mailbox.Mailbox, seqs: range) -> None:
    for seq in seqs:
        box.push(seq, f"p{seq}", coalescable=True)


def test_push_is_synchronous_so_it_cannot_wait() -> None:
    assert not inspect.iscoroutinefunction(mailbox.Mailbox.push)
    assert not inspect.iscoroutinefunction(mailbox.Mailbox.push_control)


async def test_frames_come_out_in_order() -> None:
    box = mailbox.Mailbox(capacity=8)
    box.push(1, "status", coalescable=False)
    push_progress(box, range(2, 5))
    assert await drain(box) == ["status", "p2", "p3", "p4"]
    assert box.coalesced == 0


async def test_a_full_mailbox_keeps_the_latest_progress() -> None:
    box = mailbox.Mailbox(capacity=3)
    push_progress(box, range(1, 11))
    frames = await drain(box)
    assert frames[-1] == "p10"
    assert len(frames) <= 3
    assert box.coalesced == 10 - len(frames)


async def test_status_and_terminal_frames_are_never_dropped() -> None:
    box = mailbox.Mailbox(capacity=2)
    box.push(1, "started", coalescable=False)
    push_progress(box, range(2, 50))
    box.push(50, "completed", coalescable=False)
    frames = await drain(box)
    assert frames[0] == "started"
    assert frames[-2:] == ["p49", "completed"]


async def test_random_traffic_keeps_control_frames_and_seq_order() -> None:
    rng = random.Random(20240501)
    box = mailbox.Mailbox(capacity=4)
    kept: list[int] = []
    for seq in range(1, 2001):
        coalescable = rng.random() < 0.9
        box.push(seq, str(seq), coalescable=coalescable)
        if not coalescable:
            kept.append(seq)
    last_progress = max(set(range(1, 2001)) - set(kept))
    delivered = [int(frame) for frame in await drain(box)]
    assert delivered == sorted(set(delivered))
    assert set(kept) <= set(delivered)
    assert last_progress in delivered


async def test_frames_at_or_below_after_are_skipped() -> None:
    box = mailbox.Mailbox(capacity=8, after=5)
    push_progress(box, range(1, 9))
    box.push(5, "old status", coalescable=False)
    assert await drain(box) == ["p6", "p7", "p8"]


async def test_control_frames_keep_their_place() -> None:
    box = mailbox.Mailbox(capacity=8, after=10)
    box.push(11, "status", coalescable=False)
    box.push_control("pong")
    box.push(12, "p12", coalescable=True)
    assert await drain(box) == ["status", "pong", "p12"]


async def test_coalescing_never_drops_a_control_frame() -> None:
    box = mailbox.Mailbox(capacity=1)
    box.push(1, "p1", coalescable=True)
    box.push_control("pong")
    box.push(2, "p2", coalescable=True)
    assert await drain(box) == ["pong", "p2"]


async def test_close_then_drain_ends_with_none() -> None:
    box = mailbox.Mailbox(capacity=8)
    box.push(1, "a", coalescable=False)
    box.close()
    box.push(2, "late", coalescable=False)
    box.push_control("late pong")
    assert await box.get() == "a"
    assert await box.get() is None
    assert await box.get() is None


async def test_a_waiting_reader_gets_the_next_push() -> None:
    box = mailbox.Mailbox(capacity=8)
    got: list[str | None] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _append(got, box))
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        box.push(1, "a", coalescable=True)
    assert got == ["a"]


async def test_close_wakes_a_waiting_reader_with_none() -> None:
    box = mailbox.Mailbox(capacity=8)
    got: list[str | None] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _append(got, box))
        await trio.testing.wait_all_tasks_blocked()
        box.close()
    assert got == [None]


async def _append(got: list[str | None], box: mailbox.Mailbox) -> None:
    got.append(await box.get())


async def test_a_get_cancelled_while_waiting_loses_no_frame() -> None:
    box = mailbox.Mailbox(capacity=8)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.get)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    box.push(1, "a", coalescable=True)
    assert len(box) == 1
    assert await box.get() == "a"


async def test_a_get_cancelled_before_it_starts_leaves_the_frame() -> None:
    box = mailbox.Mailbox(capacity=8)
    box.push(1, "a", coalescable=True)
    with trio.CancelScope() as scope:
        scope.cancel()
        await box.get()
    assert scope.cancelled_caught
    assert await box.get() == "a"


async def test_a_reader_woken_and_cancelled_at_once_keeps_its_frame() -> None:
    box = mailbox.Mailbox(capacity=8)
    got: list[str | None] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _append(got, box))
        await trio.testing.wait_all_tasks_blocked()
        box.push(1, "a", coalescable=True)
        nursery.cancel_scope.cancel()
    assert (got, len(box)) in ((["a"], 0), ([], 1))


def test_memory_stays_bounded_under_a_flood_of_progress() -> None:
    box = mailbox.Mailbox(capacity=8)
    control = 0
    for seq in range(1, 100_001):
        if seq % 10_000 == 0:
            box.push(seq, "status", coalescable=False)
            control += 1
        else:
            box.push(seq, "progress", coalescable=True)
        assert len(box) <= 8 + control
    assert box.coalesced >= 100_000 - control - 8


async def test_a_second_reader_is_refused_while_the_first_waits() -> None:
    box = mailbox.Mailbox(capacity=8)
    got: list[str | None] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _append(got, box))
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await box.get()
        box.push(1, "a", coalescable=True)
    assert got == ["a"]


async def test_a_reader_cancelled_while_waiting_can_wait_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box = mailbox.Mailbox(capacity=8)
    with trio.move_on_after(1):
        await box.get()
    got: list[str | None] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _append(got, box))
        await trio.testing.wait_all_tasks_blocked()
        box.push(1, "a", coalescable=True)
    assert got == ["a"]


async def test_a_get_on_an_empty_mailbox_under_a_cancelled_scope_is_cancelled() -> None:
    # Nothing queued: the wait itself is the checkpoint (no separate check first).
    box = mailbox.Mailbox(capacity=8)
    with trio.CancelScope() as scope:
        scope.cancel()
        await box.get()
    assert scope.cancelled_caught
    box.push(1, "a", coalescable=True)  # the reader is not left registered
    assert await box.get() == "a"


async def test_a_get_on_a_closed_mailbox_under_a_cancelled_scope_is_cancelled() -> None:
    box = mailbox.Mailbox(capacity=8)
    box.close()
    with trio.CancelScope() as scope:
        scope.cancel()
        await box.get()
    assert scope.cancelled_caught
    assert await box.get() is None
