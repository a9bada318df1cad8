"""The hotel safe's typed API: every read and write the hotel makes, one method each.

Each write is one SQL statement (data-modifying CTEs), so it is atomic without
an explicit transaction and costs one round trip. Writes that end a job attempt
are fenced on ``(job, attempt, executing)``: a stale attempt's write changes
nothing and returns None. Values come back as plain JSON-ready dicts (ids and
times as strings). A lost or refused connection surfaces as ``SafeUnavailable``.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, LiteralString, TypeVar

import psycopg
import trio
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from grandhotel import backoff
from grandhotel.safe import migrations, pool, sql

logger = logging.getLogger(__name__)

Row = dict[str, Any]
T = TypeVar("T")


class SafeUnavailable(Exception):
    """The safe cannot be reached right now; nothing was written."""


@dataclasses.dataclass(frozen=True, slots=True)
class NewTicket:
    """What the front desk writes for a new ticket (ticket + job + audit)."""

    id: uuid.UUID
    guest: str
    service: str
    args: Mapping[str, Any]
    butler: str
    token_hash: bytes
    total: int
    queue: str
    max_attempts: int
    idempotency_key: str | None = None
    request_hash: bytes | None = None


@dataclasses.dataclass(slots=True)
class Progress:
    """A running attempt's latest progress, and its checkpoint if it saved one."""

    job: int
    attempt: int
    done: int
    total: int
    message: str | None
    checkpoint: Any = None


def plain(value: Any) -> Any:
    """A JSON-ready copy: UUIDs as strings, times as ISO 8601 with ``Z``."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime.datetime):
        utc = value.astimezone(datetime.UTC)
        return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value


class Vault:
    """The safe, as the hotel uses it.

    Args:
        connections: the trio connection pool.
        query_timeout_seconds: the longest a statement (with the wait for a
            connection) may take before the safe counts as unreachable.
    """

    def __init__(self, connections: pool.Pool, query_timeout_seconds: float = 10.0) -> None:
        self.pool = connections
        self.query_timeout_seconds = query_timeout_seconds

    async def _rows(self, name: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        query: LiteralString = sql.QUERIES[name]
        try:
            with trio.fail_after(self.query_timeout_seconds):
                async with self.pool.connection() as conn:
                    cursor = conn.cursor(row_factory=dict_row)
                    await cursor.execute(query, params)
                    return await cursor.fetchall() if cursor.description else []
        except psycopg.OperationalError as ex:
            raise SafeUnavailable(str(ex).strip() or type(ex).__name__) from ex
        except trio.TooSlowError as ex:
            raise SafeUnavailable(f"no answer within {self.query_timeout_seconds:g}s") from ex

    async def _one(self, name: str, params: Mapping[str, Any] | None = None) -> Row | None:
        rows = await self._rows(name, params)
        return rows[0] if rows else None

    async def migrate(self) -> list[int]:
        """Apply missing migrations (advisory-locked); return the versions applied."""
        try:
            return await migrations.migrate(self.pool)
        except psycopg.OperationalError as ex:
            raise SafeUnavailable(str(ex).strip()) from ex

    async def ping(self) -> None:
        """Raise ``SafeUnavailable`` unless the safe answers."""
        await self._rows("ping")

    # --- tickets ---------------------------------------------------------------

    async def insert_tickets(self, batch: list[NewTicket]) -> set[uuid.UUID]:
        """Write tickets, jobs and audit events in one statement; return the ids written.

        A ticket whose idempotency key is already taken is not written (its id is
        missing from the result). All or nothing: on an error none is written.
        """
        # One JSON document, encoded in one call (as in save_progress): eleven
        # arrays cost psycopg a Python call per element, 6 % of the server's
        # CPU per POST in the intake benchmark.
        document = [
            [str(new.id), new.guest, new.service, new.args, new.butler, new.token_hash.hex(),
             new.total, new.queue, new.max_attempts, new.idempotency_key,
             None if new.request_hash is None else new.request_hash.hex()]
            for new in batch
        ]  # fmt: skip
        row = await self._one("insert_tickets", {"rows": Jsonb(document)})
        refused = set(row["refused"]) if row else set()
        return {new.id for new in batch if new.id not in refused}

    async def insert_ticket(self, new: NewTicket) -> bool:
        """Write one ticket (see ``insert_tickets``); False if its key is taken."""
        return new.id in await self.insert_tickets([new])

    async def ticket_by_idempotency_key(self, key: str) -> Row | None:
        """The ticket created under ``key``: ``{"id", "request_hash"}``."""
        return await self._one("ticket_by_idempotency_key", {"idempotency_key": key})

    async def add_token(self, ticket_id: uuid.UUID | str, token_hash: bytes, most: int) -> bool:
        """Give a ticket one more token (below ``most`` tokens); False if it has enough."""
        row = await self._one(
            "add_token", {"id": ticket_id, "token_hash": token_hash, "most": most}
        )
        return row is not None

    async def ticket(self, ticket_id: uuid.UUID | str) -> Row | None:
        """A ticket with its job's attempt and state, or None."""
        return await self._one("ticket", {"id": ticket_id})

    async def record(self, ticket_id: uuid.UUID | str) -> Row | None:
        """A finished ticket's service record, JSON-ready, or None."""
        row = await self._one("record", {"id": ticket_id})
        return plain(row) if row else None

    async def hire_unfinished(self) -> list[Row]:
        """Every unfinished ticket, each moved to a new epoch."""
        return await self._rows("hire_unfinished")

    async def guest_history(self, guest: str, limit: int) -> list[Row]:
        """A guest's records, newest first, JSON-ready."""
        rows = await self._rows("guest_history", {"guest": guest, "limit": limit})
        return [plain(row) for row in rows]

    # --- jobs ------------------------------------------------------------------

    async def claim_jobs(self, queue: str, node: str, limit: int) -> list[Row]:
        """Claim up to ``limit`` ready jobs of ``queue`` (a new attempt each)."""
        return await self._rows("claim_jobs", {"queue": queue, "node": node, "limit": limit})

    async def complete_job(
        self,
        job: int,
        attempt: int,
        *,
        done: int,
        total: int,
        message: str | None,
        amount_cents: int,
        currency: str,
        result: Mapping[str, Any] | None,
    ) -> Row | None:
        """Complete a job and its ticket with the record; None if the attempt is stale."""
        row = await self._one(
            "complete_job",
            {
                "job": job, "attempt": attempt, "done": done, "total": total,
                "message": message, "amount_cents": amount_cents, "currency": currency,
                "result": None if result is None else Jsonb(result),
            },
        )  # fmt: skip
        return plain(row) if row else None

    async def save_progress(self, rows: list[Progress]) -> int:
        """Persist running attempts' progress and checkpoints (fenced); return tickets saved.

        The batch goes as one JSON document, encoded in one call: six arrays
        of a row each cost psycopg a Python call per element (3 % of the
        server's CPU in the fanout benchmark, with 500 attempts noted a second).
        """
        batch = [[r.job, r.attempt, r.done, r.total, r.message, r.checkpoint] for r in rows]
        counted = await self._one("save_progress", {"rows": Jsonb(batch)})
        return int(counted["saved"]) if counted else 0

    async def retry_job(
        self, job: int, attempt: int, *, delay_seconds: float, reason: str, error: Mapping[str, Any]
    ) -> Row | None:
        """Schedule another attempt; None if the attempt is stale."""
        params = {
            "job": job, "attempt": attempt, "delay_seconds": delay_seconds,
            "reason": reason, "error": Jsonb(error),
        }  # fmt: skip
        return await self._one("retry_job", params)

    async def end_ticket(
        self,
        ticket_id: uuid.UUID | str,
        outcome: str,
        *,
        reason: str | None,
        done: int,
        amount_cents: int,
        currency: str,
        attempt: int | None = None,
        error: Mapping[str, Any] | None = None,
    ) -> Row | None:
        """End a ticket as ``failed`` or ``cancelled`` with its record.

        Returns the record, or None if the ticket had already ended (or, with
        ``attempt``, if that attempt is no longer the one executing).
        """
        row = await self._one(
            "end_ticket",
            {
                "id": ticket_id, "outcome": outcome, "reason": reason, "done": done,
                "amount_cents": amount_cents, "currency": currency, "attempt": attempt,
                "error": None if error is None else Jsonb(error),
            },
        )  # fmt: skip
        if row is None:
            return None
        row.pop("stopped", None)
        record: Row = plain(row)
        return record

    # --- nodes -----------------------------------------------------------------

    async def heartbeat(self, node: str) -> None:
        """Record that ``node`` is alive."""
        await self._rows("heartbeat", {"node": node})

    async def deregister_node(self, node: str) -> None:
        """Remove ``node`` (it stopped cleanly)."""
        await self._rows("deregister_node", {"node": node})

    async def release_jobs(self, node: str) -> int:
        """Hand this node's executing jobs back (graceful stop); return how many."""
        row = await self._one("release_jobs", {"node": node})
        return int(row["released"]) if row else 0

    async def rescue_orphans(self, stale_seconds: float, restarting_node: str | None) -> int:
        """Make jobs of dead nodes available again; return how many."""
        row = await self._one(
            "rescue_orphans", {"stale_seconds": stale_seconds, "restarting_node": restarting_node}
        )
        return int(row["rescued"]) if row else 0


async def land(
    write: Callable[[], Awaitable[T]], *, max_delay_seconds: float, rng: random.Random
) -> T:
    """Run ``write`` until the safe takes it, backing off while the safe is away.

    For writes that must not be lost (a job's completion or failure). Cancellation:
    gives up; whatever the safe last held stays the truth.
    """
    failures = 0
    while True:
        try:
            return await write()
        except SafeUnavailable as ex:
            failures += 1
            logger.warning("the safe is away (%s); retrying a write", ex)
            await trio.sleep(
                backoff.delay(failures, base_seconds=0.05, max_seconds=max_delay_seconds, rng=rng)
            )
