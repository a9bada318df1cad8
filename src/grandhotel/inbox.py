"""A butler's inbox: reports from any member of staff, read by the butler on duty.

Theory of operation
-------------------
The direct line from the staff to a butler is an in-process memory channel:
a bounded FIFO with several writers (the job's attempt, the laundry, the
checkout) and one reader at a time (the butler on duty; a replacement reads the
same inbox after a crash). It behaves like a trio memory channel pair: a full
inbox makes ``send`` wait (``send_nowait`` raises ``trio.WouldBlock``); closing
the sending side lets the reader drain what is queued and then get
``trio.EndOfChannel``; closing both (a retired line) drops the queue, ends the
reader the same way and refuses every sender.

Why not ``trio.open_memory_channel``: with one reader, a report wakes it by
rescheduling it directly (``reader.py``), and a reader that finds the inbox empty parks without
first raising and catching ``WouldBlock`` or registering in a set and an
ordered dict. The butler's wait is the one every step of every ticket makes;
this one costs a third of the objects (each outlives young collections while
the butler waits) and about 2 % of the server's instructions per frame in the
fanout benchmark's hot path (bench/README.md).

Like a trio channel, ``receive`` is a checkpoint that yields even when a report
is already queued, so a butler handed reports faster than it handles them
still lets the rest of the hotel run.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import trio

from grandhotel import reader

T = TypeVar("T")


class Inbox(Generic[T]):
    """A bounded queue of reports with one reader.

    Args:
        capacity: reports that may wait; senders wait (or get ``WouldBlock``) beyond.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("an inbox holds at least one report")
        self.capacity = capacity
        self.sending_closed = False
        """No more reports are taken (the reader drains the rest, then stops)."""
        self.receiving_closed = False
        """Nobody reads any more: senders are refused, the queue is dropped."""
        self._items: deque[T] = deque()
        self._reader = reader.Reader()
        self._senders: trio.lowlevel.ParkingLot | None = None
        """Senders waiting for room (made when the first one waits: most inboxes
        never fill, and every live ticket has one)."""

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        """Both sides closed (a retired line)."""
        return self.sending_closed and self.receiving_closed

    def send_nowait(self, item: T) -> None:
        """Queue ``item`` now; wake the reader if it waits.

        Raises:
            trio.ClosedResourceError: the sending side is closed.
            trio.BrokenResourceError: the reading side is closed.
            trio.WouldBlock: the inbox is full.
        """
        if self.sending_closed:
            raise trio.ClosedResourceError("the inbox takes no more reports")
        if self.receiving_closed:
            raise trio.BrokenResourceError("nobody reads this inbox any more")
        if len(self._items) >= self.capacity:
            raise trio.WouldBlock
        self._items.append(item)
        if self._reader.task is not None:  # waiting, not busy handling the last report
            self._reader.wake()

    async def send(self, item: T) -> None:
        """Queue ``item``, waiting while the inbox is full. A checkpoint.

        Cancellation: safe; a cancelled ``send`` queued nothing.

        Raises:
            trio.ClosedResourceError, trio.BrokenResourceError: as ``send_nowait``.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            try:
                self.send_nowait(item)
                break
            except trio.WouldBlock:
                if self._senders is None:
                    self._senders = trio.lowlevel.ParkingLot()
                await self._senders.park()
                waited = True
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive(self) -> T:
        """The next report, waiting while there is none. A checkpoint.

        Cancellation: safe; no report is lost by a cancelled ``receive``.

        Raises:
            trio.EndOfChannel: the sending side is closed and every report was
                read, or the inbox was closed (what was queued is dropped).
            trio.BusyResourceError: another task is already waiting in ``receive``.
        """
        if self._items and not self.receiving_closed:
            # Ready at once: still a checkpoint, as a trio channel's is (see above).
            await trio.lowlevel.checkpoint_if_cancelled()
            await trio.lowlevel.cancel_shielded_checkpoint()
        elif self.sending_closed or self.receiving_closed:
            await trio.lowlevel.checkpoint_if_cancelled()
        # Otherwise the wait below is the checkpoint: trio delivers a pending
        # cancellation to a task that parks (the butler's usual way in).
        while not self._items or self.receiving_closed:
            if self.sending_closed:
                raise trio.EndOfChannel
            if self.receiving_closed:
                raise trio.ClosedResourceError("this inbox is closed")
            await self._reader.park("an inbox")
        item = self._items.popleft()
        if self._senders:  # room for one waiting sender
            self._senders.unpark()
        return item

    def close_sending(self) -> None:
        """Take no more reports; the reader drains the queue, then gets EndOfChannel."""
        self.sending_closed = True
        self._wake_all()

    def close(self) -> None:
        """Close both sides: the queue is dropped, the reader gets EndOfChannel and
        every sender is refused."""
        self.sending_closed = self.receiving_closed = True
        self._items.clear()
        self._wake_all()

    def _wake_all(self) -> None:
        self._reader.wake()
        if self._senders:  # unpark_all costs a generator and a list even for nobody
            self._senders.unpark_all()
