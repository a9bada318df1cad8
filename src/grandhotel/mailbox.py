"""A watcher's mailbox: a bounded buffer that coalesces progress and never blocks.

Theory of operation
-------------------
The butler pushes every event to every watcher's mailbox with ``push``, which
never waits: a slow guest must not slow the butler or the other guests. Each
mailbox holds at most ``capacity`` coalescable items (progress). When it is full,
the queued progress frames are dropped and the new one is kept: progress events
carry the whole state (done, total, percent, message), so the guest reads the
latest state, never a stale one. Status changes and the terminal event are never
dropped; there are only a handful per ticket, so memory stays bounded.

Seqs stay strictly increasing for the reader: items are only ever removed, and
appended in the order the butler numbered them.

A mailbox has one reader (its concierge), woken directly by a push
(``reader.py``).
"""

from __future__ import annotations

from collections import deque

import trio

from grandhotel import reader

Item = tuple[int, str, bool]
"""One frame waiting to be written to a guest: its seq, its text, and whether a
newer progress frame may replace it. A plain tuple, not a named one: one is
made per frame per watcher, and a named tuple's constructor is a Python call."""


class Mailbox:
    """The bounded, coalescing buffer between a butler and one watcher.

    Args:
        capacity: how many progress frames may wait before they are coalesced.
        after: frames with ``seq <= after`` are not delivered (resume).
    """

    def __init__(self, capacity: int, after: int = 0) -> None:
        self.capacity = capacity
        self.after = after
        self.coalesced = 0
        """How many progress frames were dropped in favour of a newer one."""
        self.closed = False
        self._items: deque[Item] = deque()
        self._progress = 0
        self._reader = reader.Reader()

    def __len__(self) -> int:
        return len(self._items)

    def push(self, seq: int, frame: str, *, coalescable: bool) -> None:
        """Queue a frame without ever waiting (coalescing progress when full)."""
        if self.closed or seq <= self.after:
            return
        if coalescable:
            if self._progress >= self.capacity:
                self._drop_progress()
            self._progress += 1
        self._items.append((seq, frame, coalescable))
        if self._reader.task is not None:  # waiting, not busy writing the last frame
            self._reader.wake()

    def push_control(self, frame: str) -> None:
        """Queue an unnumbered frame (a ``pong``) in order with the rest."""
        if not self.closed:
            self._items.append((0, frame, False))
            self._reader.wake()

    def close(self) -> None:
        """No more frames will come; the reader drains what is queued, then stops."""
        self.closed = True
        self._reader.wake()

    async def get(self) -> str | None:
        """The next frame, waiting if there is none; None once closed and drained.

        A checkpoint for cancellation, but it yields to the scheduler only when
        it has to wait: a frame already queued is returned at once, since the
        reader's next step (a socket write) yields anyway. One trip through
        the scheduler less per frame (see the fanout benchmark). The wait is
        itself the checkpoint when there is nothing queued (trio delivers a
        pending cancellation to a task that parks), so the separate check runs
        only when ``get`` returns without waiting.

        Cancellation: safe; no frame is lost by a cancelled ``get``.

        Raises:
            trio.BusyResourceError: another task is already waiting in ``get``.
        """
        if self._items or self.closed:
            await trio.lowlevel.checkpoint_if_cancelled()
        while not self._items:
            if self.closed:
                return None
            await self._reader.park("a mailbox")
        _, frame, coalescable = self._items.popleft()
        if coalescable:
            self._progress -= 1
        return frame

    def _drop_progress(self) -> None:
        kept = deque(item for item in self._items if not item[2])
        self.coalesced += len(self._items) - len(kept)
        self._items = kept
        self._progress = 0
