"""Intake: the front desk's group commit. Concurrent requests share one INSERT.

Theory of operation: ``insert`` queues a new ticket and waits. One writer task
takes everything queued (up to ``intake_batch_max``) and writes it with one
statement (``vault.insert_tickets``): one round trip, one commit, one NOTIFY per
queue, whatever the batch size. While a batch is on the wire the next one
gathers, so batches grow with load and a lone request waits for nobody: there is
no timer. Each waiter gets its own outcome: written, key taken (an idempotent
replay), or the safe's error (nothing of the batch was written).

Cancellation: a waiter that is cancelled leaves its ticket in the queue; it is
written all the same (the guest may have lost the answer, not the ticket).
"""

from __future__ import annotations

import logging

import trio

from grandhotel.safe import vault

logger = logging.getLogger(__name__)


class _Pending:
    __slots__ = ("done", "error", "new", "written")

    def __init__(self, new: vault.NewTicket) -> None:
        self.new = new
        self.done = trio.Event()
        self.written = False
        self.error: str | None = None


class Intake:
    """Writes new tickets to the safe in batches.

    Args:
        safe: the safe.
        batch_max: the most tickets one statement writes.
    """

    def __init__(self, safe: vault.Vault, batch_max: int) -> None:
        self.safe = safe
        self.batch_max = batch_max
        self.batches = 0
        self.written = 0
        self._queue: list[_Pending] = []
        self._wanted = trio.Event()

    async def insert(self, new: vault.NewTicket) -> bool:
        """Write ``new``; False if its idempotency key was taken.

        Raises ``vault.SafeUnavailable`` when the safe did not take the batch.
        """
        pending = _Pending(new)
        self._queue.append(pending)
        self._wanted.set()
        await pending.done.wait()
        if pending.error is not None:
            raise vault.SafeUnavailable(pending.error)
        return pending.written

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write batches until cancelled."""
        task_status.started()
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()
            while self._queue:
                batch = self._queue[: self.batch_max]
                del self._queue[: self.batch_max]
                await self._write(batch)

    async def _write(self, batch: list[_Pending]) -> None:
        try:
            written = await self.safe.insert_tickets([pending.new for pending in batch])
        except vault.SafeUnavailable as ex:
            for pending in batch:
                pending.error = str(ex)
        else:
            self.batches += 1
            self.written += len(written)
            for pending in batch:
                pending.written = pending.new.id in written
        finally:
            for pending in batch:
                pending.done.set()
