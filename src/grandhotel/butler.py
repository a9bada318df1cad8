"""The butler: one task per ticket that keeps the notebook and tells the guests.

Theory of operation
-------------------
A ticket's state lives in its ``Line`` (the direct line the directory hands
out), not in the butler's stack frame. The line holds what must outlive any one
butler: the last good notebook, the inbox of reports, the report in hand when a
butler fell over, and the watchers' mailboxes. ``serve`` is one butler's shift:
it takes one report at a time, computes the next notebook with the pure
``tickets.advance`` and then, in one step with no checkpoint in between, commits
the notebook and pushes the events to every mailbox. A butler that raises
therefore leaves the line exactly as it was before the report, and its
replacement picks the same report up again (at most ``butler_redeliveries``
times: a report that keeps crashing butlers is dropped, not redelivered forever).

Pushing never waits (see ``mailbox.py``), so no guest can slow a butler down.
Reading a live ticket (``Line.notebook``) costs no database query.

Cancellation: ``serve`` is cancellable at its one checkpoint, the inbox receive;
the report in hand, if any, stays on the line.
"""

from __future__ import annotations

import json
import logging
import random
import time
from typing import Any, Final

import trio

from grandhotel import chaos, inbox, mailbox, tickets

logger = logging.getLogger(__name__)


_second: list[Any] = [None, ""]
"""The last whole second formatted, and its text: one format per second, not per event."""


def utc_now() -> str:
    """The wall clock as ISO 8601 with milliseconds and a ``Z``, as events carry it."""
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second[0], _second[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second[1]}.{int((now - second) * 1000):03d}Z"


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
"""Made once: ``json.dumps`` with these options builds a new encoder per call."""


def encode(body: Any) -> str:
    """One compact JSON text frame (encoded once, sent to every watcher)."""
    return _ENCODER.encode(body)


class Line:
    """The butler's direct line, and what survives a butler's crash.

    Args:
        notebook: the notebook the first butler starts from.
        token_hashes: SHA-256 of each of the ticket's tokens (checked by the front desk).
        inbox_size: reports that may wait; staff wait when it is full.
        watcher_buffer: capacity of each watcher's mailbox.
    """

    def __init__(
        self,
        notebook: tickets.Notebook,
        token_hashes: list[bytes],
        *,
        inbox_size: int,
        watcher_buffer: int,
    ) -> None:
        self.notebook = notebook
        self.token_hashes = token_hashes
        self.watcher_buffer = watcher_buffer
        self.watchers: set[mailbox.Mailbox] = set()
        self.in_hand: tickets.Report | None = None
        self.in_hand_tries = 0
        self.attempt_scope: trio.CancelScope | None = None
        """The running job attempt's scope, set by the laundry (cancelled on end)."""
        # Bounded: a worker reporting faster than the butler handles waits here.
        self.inbox = inbox.Inbox[tickets.Report](inbox_size)
        self._retired: trio.Event | None = None

    @property
    def is_retired(self) -> bool:
        """The last butler left: ``retire`` closed both sides of the inbox."""
        return self.inbox.closed

    @property
    def retired(self) -> trio.Event:
        """Set once the last butler left. Made on first use: the hotel itself
        only reads ``is_retired``, and every live ticket has a line."""
        if self._retired is None:
            self._retired = trio.Event()
            if self.is_retired:
                self._retired.set()
        return self._retired

    @property
    def ticket_id(self) -> str:
        """The ticket this line is for."""
        return self.notebook.ticket_id

    async def report(self, report: tickets.Report) -> bool:
        """Hand a report to the butler; False if the butler has already left.

        A checkpoint for cancellation; it waits (and yields) only while the
        inbox is full. Cancellation: the report is not sent.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            # Handed over without a trip through the scheduler when there is
            # room (the common case); the reporter's own awaits are its yields,
            # and a reporter that never awaits anything else still yields here
            # once the inbox is full.
            try:
                self.inbox.send_nowait(report)
            except trio.WouldBlock:
                await self.inbox.send(report)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def subscribe(self, after: int = 0) -> tuple[str, mailbox.Mailbox]:
        """A snapshot frame and a mailbox that gets every later event, atomically."""
        box = mailbox.Mailbox(self.watcher_buffer, after=max(after, self.notebook.seq))
        if self.notebook.status.terminal or self.is_retired:
            box.close()
        else:
            self.watchers.add(box)
        return encode(tickets.snapshot(self.notebook)), box

    def unsubscribe(self, box: mailbox.Mailbox) -> None:
        """Forget a watcher (it went away)."""
        self.watchers.discard(box)

    def publish(self, notebook: tickets.Notebook, events: list[tickets.Event]) -> None:
        """Commit ``notebook`` and push its events to every watcher. Never waits."""
        self.notebook = notebook
        for event in events:
            frame = encode(event.body)
            coalescable = event.kind == "progress"
            for box in self.watchers:
                box.push(event.seq, frame, coalescable=coalescable)
        if notebook.status.terminal:
            self.stop_attempt()
            for box in self.watchers:
                box.close()
            self.watchers.clear()

    def stop_attempt(self) -> None:
        """Cancel the running job attempt, if there is one."""
        if self.attempt_scope is not None:
            self.attempt_scope.cancel()

    def dismiss(self) -> None:
        """No more reports: the butler's shift ends once its inbox is empty."""
        self.inbox.close_sending()

    def retire(self) -> None:
        """The last butler left: close the inbox and every mailbox."""
        self.inbox.close()
        for box in self.watchers:
            box.close()
        self.watchers.clear()
        if self._retired is not None:
            self._retired.set()


async def serve(line: Line, *, crash_rate: float = 0.0, rng: random.Random | None = None) -> None:
    """One butler's shift: handle reports until the ticket ends, then return.

    Raises whatever handling a report raised (the supervisor replaces the
    butler); the report stays in hand on the line for the replacement.
    """
    while not line.notebook.status.terminal:
        if line.in_hand is None:
            try:
                line.in_hand = await line.inbox.receive()
            except trio.EndOfChannel:
                return
        if crash_rate and rng is not None and rng.random() < crash_rate:
            raise chaos.ChaosCrash(f"chaos: butler of {line.ticket_id} fell over on purpose")
        line.publish(*tickets.advance(line.notebook, line.in_hand, utc_now()))
        line.in_hand = None
        line.in_hand_tries = 0
