"""The one reader of a single-reader queue (a butler's inbox, a watcher's mailbox).

A queue with one reader needs no parking lot: the reader parks itself here and
a writer reschedules it directly, one trip through the scheduler per wake-up,
and nothing is woken while the reader is busy with the last item.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import trio


class Reader:
    """The reader while it waits for an item (to reschedule), else nobody."""

    __slots__ = ("task",)

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None

    def park(self, queue: str) -> Coroutine[Any, Any, object]:
        """``await reader.park(queue)``: wait until ``wake``. Cancellation: safe
        (nothing to wake afterwards).

        A plain function handing back trio's wait, not a coroutine of its own:
        every waiting reader (each live ticket's butler, each watcher) would hold
        one more coroutine, and each wake-up would resume it.

        Raises:
            trio.BusyResourceError: another task is already waiting on ``queue``.
        """
        if self.task is not None:
            raise trio.BusyResourceError(f"{queue} has one reader")
        self.task = trio.lowlevel.current_task()
        return trio.lowlevel.wait_task_rescheduled(self._abort)  # noqa: ASYNC105 - the caller awaits

    def wake(self) -> None:
        """Reschedule the waiting reader, if there is one."""
        task, self.task = self.task, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    def _abort(self, _raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self.task = None  # cancelled while waiting: nothing to wake any more
        return trio.lowlevel.Abort.SUCCEEDED
