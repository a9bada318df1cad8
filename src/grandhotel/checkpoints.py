"""Checkpoints: running attempts' progress, saved to the safe in batches, off the hot path.

Live progress never waits for the safe: ``note`` only overwrites the attempt's
entry in a dict (O(1), no I/O). Every ``checkpoint_interval_seconds`` one task
writes all entries noted since the last flush in one fenced statement
(``save_progress``): the ticket's done/total/message, and the job's checkpoint
when the service saved one. A stale attempt's entry changes nothing. If the
safe is away, the batch is kept (newer notes win) and tried again next time.

What this buys: a retried or rescued attempt resumes from the last saved
checkpoint, and a butler hired after a restart shows the last saved progress.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from grandhotel.safe import vault

logger = logging.getLogger(__name__)


class Checkpoints:
    """The latest progress of every running attempt, flushed periodically.

    Args:
        safe: where to save.
        interval_seconds: the time between flushes.
    """

    def __init__(self, safe: vault.Vault, interval_seconds: float) -> None:
        self.safe = safe
        self.interval_seconds = interval_seconds
        self.flushes = 0
        self._pending: dict[int, vault.Progress] = {}

    # Entries are updated in place, not replaced: a step notes and saves, many
    # times a second per attempt, and each new entry would outlive a young
    # collection. Both run for every step of every ticket, hence no helper call.

    def note(self, job: int, attempt: int, done: int, total: int, message: str | None) -> None:
        """Remember an attempt's latest progress (keeping its unsaved checkpoint)."""
        entry = self._pending.get(job)
        if entry is None or entry.attempt != attempt:
            self._pending[job] = vault.Progress(job, attempt, done, total, message)
        else:
            entry.done, entry.total, entry.message = done, total, message

    def save(self, job: int, attempt: int, done: int, total: int, message: str | None,
             checkpoint: Any) -> None:  # fmt: skip
        """Remember an attempt's checkpoint together with its progress."""
        entry = self._pending.get(job)
        if entry is None or entry.attempt != attempt:
            self._pending[job] = vault.Progress(job, attempt, done, total, message, checkpoint)
        else:
            entry.done, entry.total, entry.message = done, total, message
            entry.checkpoint = checkpoint

    def forget(self, job: int) -> None:
        """The attempt ended (its final write holds the state): drop its entry."""
        self._pending.pop(job, None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Flush every interval until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self.interval_seconds)
            await self.flush()

    async def flush(self) -> None:
        """Write what was noted since the last flush; keep it if the safe is away."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            await self.safe.save_progress(list(batch.values()))
            self.flushes += 1
        except vault.SafeUnavailable as ex:
            logger.warning("could not save %d checkpoint(s): %s", len(batch), ex)
            self._keep(batch)

    def _keep(self, batch: dict[int, vault.Progress]) -> None:
        """Take an unsaved batch back; what was noted since wins, but a newer entry
        without a checkpoint keeps the same attempt's older one."""
        for job, newer in self._pending.items():
            older = batch.get(job)
            if newer.checkpoint is None and older is not None and older.attempt == newer.attempt:
                newer.checkpoint = older.checkpoint
        batch.update(self._pending)
        self._pending = batch
