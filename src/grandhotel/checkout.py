"""Checkout: ends a ticket from outside its job (a guest's cancel, a butler given up).

The terminal write goes to the safe first, fenced on the job not having ended:
ticket, job, audit event and the record in one statement. Only then is the job
attempt stopped and the butler told, so guests never hear of an ending the safe
does not hold. If the fence says the ticket already ended (its job completed a
moment earlier, say), the existing record is what the guests are told about.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Mapping
from typing import Any

from grandhotel import butler, config, services, tickets
from grandhotel.safe import vault

logger = logging.getLogger(__name__)


class AlreadyEnded(Exception):
    """The ticket had ended before this checkout; ``record`` is how it ended."""

    def __init__(self, record: Mapping[str, Any] | None) -> None:
        super().__init__("the ticket has already ended")
        self.record = record


class Checkout:
    """Writes a ticket's ending and tells its butler.

    Args:
        settings: the hotel's config.
        safe: the safe.
        catalogue: the services (for the bill).
    """

    def __init__(
        self, settings: config.HotelConfig, safe: vault.Vault, catalogue: services.Catalogue
    ) -> None:
        self.settings = settings
        self.safe = safe
        self.catalogue = catalogue
        self.rng = random.Random()

    async def end(
        self,
        notebook: tickets.Notebook,
        line: butler.Line | None,
        outcome: tickets.Status,
        reason: str | None,
        *,
        butler_on_duty: bool = True,
    ) -> Mapping[str, Any]:
        """End a ticket as ``outcome``, then tell its butler here (if any); return the record.

        ``notebook`` is what this node knows of the ticket (the butler's, or the
        safe's when the butler is on another node: that node hears of the
        ending through the safe's ``grandhotel_stop`` notification).
        Raises ``AlreadyEnded`` when the ticket had ended before, and
        ``vault.SafeUnavailable`` (having changed nothing) when the safe is away.
        """
        record = await self._write(notebook, outcome, reason)
        if record is None:
            existing = await self.safe.record(notebook.ticket_id)
            if existing is not None and line is not None:
                ended = tickets.Status(existing["outcome"])
                await self._tell(line, ended, existing, None, butler_on_duty=butler_on_duty)
            raise AlreadyEnded(existing)
        if line is not None:
            await self._tell(line, outcome, record, reason, butler_on_duty=butler_on_duty)
        return record

    async def relay(self, line: butler.Line) -> None:
        """Tell a butler here how its ticket ended on another node (from the record)."""
        record = await self.safe.record(line.ticket_id)
        if record is not None:
            outcome = tickets.Status(record["outcome"])
            await self._tell(line, outcome, record, None, butler_on_duty=True)

    async def give_up(self, line: butler.Line, reason: str) -> None:
        """Fail a ticket whose butlers keep crashing (the supervisor's last resort).

        No butler is left to tell, so the ending is published on the line directly.
        """
        with contextlib.suppress(AlreadyEnded):
            await vault.land(
                lambda: self.end(
                    line.notebook, line, tickets.Status.FAILED, reason, butler_on_duty=False
                ),
                max_delay_seconds=self.settings.safe_retry_max_seconds,
                rng=self.rng,
            )

    async def _write(
        self, notebook: tickets.Notebook, outcome: tickets.Status, reason: str | None
    ) -> Mapping[str, Any] | None:
        service = self.catalogue.get(notebook.service)
        bill = service.bill(notebook.args, notebook.done) if service else 0
        return await self.safe.end_ticket(
            notebook.ticket_id, outcome.value, reason=reason, done=notebook.done,
            amount_cents=bill, currency=self.settings.currency,
        )  # fmt: skip

    async def _tell(
        self,
        line: butler.Line,
        outcome: tickets.Status,
        record: Mapping[str, Any],
        reason: str | None,
        *,
        butler_on_duty: bool,
    ) -> None:
        line.stop_attempt()
        ended = tickets.Ended(outcome, record, reason or record.get("reason"))
        if butler_on_duty:
            await line.report(ended)
        else:
            line.publish(*tickets.advance(line.notebook, ended, butler.utc_now()))
