"""A butler's inbox: bounded, in order, one reader, closed like a trio channel."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from grandhotel.inbox import Inbox


async def test_reports_come_out_in_order_and_a_send_wakes_the_reader(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box: Inbox[int] = Inbox(8)
    got: list[int] = []

    async def read(n: int) -> None:
        for _ in range(n):
            got.append(await box.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read, 5)
        await trio.sleep(1)  # the reader waits on an empty inbox
        assert got == []
        for n in range(5):
            box.send_nowait(n)
            await trio.sleep(0.1)
    assert got == [0, 1, 2, 3, 4]
    assert len(box) == 0


async def test_receive_yields_even_when_a_report_is_ready() -> None:
    box: Inbox[str] = Inbox(2)
    box.send_nowait("ready")
    with trio.testing.assert_checkpoints():
        assert await box.receive() == "ready"


async def test_a_full_inbox_makes_staff_wait_until_the_butler_reads(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box: Inbox[int] = Inbox(2)
    box.send_nowait(1)
    box.send_nowait(2)
    with pytest.raises(trio.WouldBlock):
        box.send_nowait(3)
    sent = trio.Event()

    async def send_third() -> None:
        await box.send(3)
        sent.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_third)
        await trio.sleep(1)
        assert not sent.is_set()  # still waiting for room
        assert await box.receive() == 1
        await sent.wait()
    assert [await box.receive(), await box.receive()] == [2, 3]


async def test_a_cancelled_send_queues_nothing(autojump_clock: trio.testing.MockClock) -> None:
    box: Inbox[int] = Inbox(1)
    box.send_nowait(1)
    with trio.move_on_after(1) as scope:
        await box.send(2)
    assert scope.cancelled_caught
    assert len(box) == 1
    assert await box.receive() == 1
    box.send_nowait(3)  # the room is free again
    assert await box.receive() == 3


async def test_closing_the_sending_side_lets_the_reader_drain_then_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box: Inbox[int] = Inbox(4)
    box.send_nowait(1)
    box.send_nowait(2)
    box.close_sending()
    with pytest.raises(trio.ClosedResourceError):
        box.send_nowait(3)
    assert [await box.receive(), await box.receive()] == [1, 2]
    with pytest.raises(trio.EndOfChannel):
        await box.receive()


async def test_a_waiting_reader_is_told_the_sending_side_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box: Inbox[int] = Inbox(4)
    ended = trio.Event()

    async def read() -> None:
        with pytest.raises(trio.EndOfChannel):
            await box.receive()
        ended.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.sleep(1)
        box.close_sending()
    assert ended.is_set()


async def test_closing_ends_the_reader_and_refuses_waiting_senders(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box: Inbox[int] = Inbox(1)
    box.send_nowait(1)
    refused: list[type[BaseException]] = []

    async def send() -> None:
        try:
            await box.send(2)
        except (trio.ClosedResourceError, trio.BrokenResourceError) as ex:
            refused.append(type(ex))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        await trio.sleep(1)
        box.close()
    assert refused == [trio.ClosedResourceError]
    assert box.closed
    assert len(box) == 0  # what was queued is dropped
    with pytest.raises(trio.EndOfChannel):  # the reader's shift ends
        await box.receive()


async def test_a_reader_gone_breaks_the_senders() -> None:
    box: Inbox[int] = Inbox(1)
    box.receiving_closed = True  # the reading side alone closed
    with pytest.raises(trio.BrokenResourceError):
        box.send_nowait(1)
    with pytest.raises(trio.ClosedResourceError):
        await box.receive()


async def test_an_inbox_has_one_reader(autojump_clock: trio.testing.MockClock) -> None:
    box: Inbox[int] = Inbox(2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.receive)
        await trio.sleep(1)
        with pytest.raises(trio.BusyResourceError):
            await box.receive()
        box.send_nowait(1)


async def test_a_cancelled_reader_can_wait_again(autojump_clock: trio.testing.MockClock) -> None:
    box: Inbox[int] = Inbox(2)
    with trio.move_on_after(1):
        await box.receive()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.receive)  # not refused as a second reader
        await trio.sleep(1)
        box.send_nowait(7)
    assert len(box) == 0


def test_an_inbox_holds_at_least_one_report() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Inbox(0)


@pytest.mark.parametrize("closing", ["none", "sending", "both"])
async def test_receive_under_a_cancelled_scope_is_cancelled_whatever_the_inbox_holds(
    closing: str,
) -> None:
    # Empty: the wait is the checkpoint; ready or closed: the check before it.
    for ready in (False, True):
        box: Inbox[int] = Inbox(2)
        if ready:
            box.send_nowait(1)
        if closing == "sending":
            box.close_sending()
        elif closing == "both":
            box.close()
        with trio.CancelScope() as scope:
            scope.cancel()
            await box.receive()
        assert scope.cancelled_caught, (closing, ready)
        assert len(box) == (1 if ready and closing != "both" else 0)
