"""The hotel safe's typed API (``safe/vault.py`` + ``queries.sql``) on a real database.

What it must do: write ticket + job + audit (+ guest) atomically and only once
per idempotency key; hand each ready job to one claimer (SKIP LOCKED), a new
attempt each time; fence every write that ends an attempt on that attempt, so a
stale attempt changes nothing; rescue only dead nodes' jobs; and report an
unreachable database as ``SafeUnavailable``.
"""

from __future__ import annotations

import datetime
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest
import trio

from grandhotel.safe import pool, vault

Query = Callable[..., list[tuple[Any, ...]]]
Listen = Callable[[str], Callable[[int], list[str]]]


def new_ticket(
    *, guest: str = "room-412", queue: str = "default", key: str | None = None, **changes: Any
) -> vault.NewTicket:
    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "guest": guest,
        "service": "laundry",
        "args": {"suits": 3},
        "butler": "Jenkins",
        "token_hash": hashlib.sha256(b"token").digest(),
        "total": 3,
        "queue": queue,
        "max_attempts": 3,
        "idempotency_key": key,
        "request_hash": hashlib.sha256(key.encode()).digest() if key else None,
    }
    fields.update(changes)
    return vault.NewTicket(**fields)


@pytest.fixture
async def safe(database_url: str) -> AsyncIterator[vault.Vault]:
    connections = pool.Pool(database_url, size=4, connect_timeout_seconds=5)
    yield vault.Vault(connections, query_timeout_seconds=5)
    await connections.aclose()


@pytest.fixture
def listen(database_url: str) -> Iterator[Listen]:
    """``listen(channel)`` subscribes now; the result collects ``n`` payloads (1 s max)."""
    conn = psycopg.connect(database_url, autocommit=True)

    def subscribe(channel: str) -> Callable[[int], list[str]]:
        conn.execute(f"LISTEN {channel}")  # type: ignore[arg-type]

        def collect(n: int) -> list[str]:
            return [note.payload for note in conn.notifies(timeout=1.0, stop_after=n)]

        return collect

    yield subscribe
    conn.close()


async def add_tickets(safe: vault.Vault, count: int, **fields: Any) -> list[vault.NewTicket]:
    tickets = [new_ticket(**fields) for _ in range(count)]
    for ticket in tickets:
        assert await safe.insert_ticket(ticket) is not None
    return tickets


async def claim_one(safe: vault.Vault, node: str = "node-a") -> dict[str, Any]:
    claimed = await safe.claim_jobs("default", node, 1)
    assert len(claimed) == 1
    return claimed[0]


def job_state(query: Query, job: int) -> tuple[Any, ...]:
    return query("SELECT state, attempt, node FROM jobs WHERE id = %s", job)[0]


def counts(query: Query) -> tuple[Any, ...]:
    return query(
        "SELECT (SELECT count(*) FROM tickets), (SELECT count(*) FROM jobs),"
        " (SELECT count(*) FROM ticket_events), (SELECT count(*) FROM guests),"
        " (SELECT count(*) FROM service_records)"
    )[0]


# --- tickets -------------------------------------------------------------------


async def test_insert_ticket_writes_ticket_job_audit_and_guest(
    safe: vault.Vault, query: Query, listen: Listen
) -> None:
    woken = listen("grandhotel_jobs")
    ticket = new_ticket(queue="express", key="key-1")
    assert await safe.insert_ticket(ticket) is True

    assert counts(query) == (1, 1, 1, 1, 0)
    assert query("SELECT guest_id, status, total FROM tickets") == [("room-412", "queued", 3)]
    assert query("SELECT ticket_id, queue, state, attempt, max_attempts FROM jobs") == [
        (ticket.id, "express", "available", 0, 3)
    ]
    assert query("SELECT ticket_id, status FROM ticket_events") == [(ticket.id, "queued")]
    assert query("SELECT id FROM guests") == [("room-412",)]
    assert woken(1) == ["express"]
    # Every field arrives as it was sent (the batch travels as one JSON document).
    assert query(
        "SELECT args, butler, token_hashes, request_hash, idempotency_key FROM tickets"
    ) == [({"suits": 3}, "Jenkins", [ticket.token_hash], ticket.request_hash, "key-1")]
    assert query("SELECT service, args FROM jobs") == [("laundry", {"suits": 3})]


async def test_insert_ticket_keeps_text_and_bytes_exactly(safe: vault.Vault, query: Query) -> None:
    odd = new_ticket(guest='zimmer-ü "7" \\', args={"note": "ü \\ \"", "n": [1, None]},
                     token_hash=bytes(range(32)), request_hash=None)  # fmt: skip
    assert await safe.insert_ticket(odd) is True
    assert query("SELECT guest_id, args, token_hashes, request_hash FROM tickets") == [
        (odd.guest, odd.args, [odd.token_hash], None)
    ]


async def test_insert_ticket_reused_idempotency_key_is_not_written(
    safe: vault.Vault, query: Query
) -> None:
    first = new_ticket(key="same-key")
    assert await safe.insert_ticket(first) is True
    assert await safe.insert_ticket(new_ticket(key="same-key", guest="room-7")) is False
    assert counts(query)[:3] == (1, 1, 1)
    found = await safe.ticket_by_idempotency_key("same-key")
    assert found == {"id": first.id, "request_hash": first.request_hash}
    # Tickets without a key never collide.
    assert await safe.insert_ticket(new_ticket()) is True
    assert await safe.insert_ticket(new_ticket()) is True
    assert counts(query)[:3] == (3, 3, 3)


async def test_insert_tickets_writes_a_batch_in_one_statement(
    safe: vault.Vault, query: Query, listen: Listen
) -> None:
    woken = listen("grandhotel_jobs")
    taken = new_ticket(key="taken")
    assert await safe.insert_ticket(taken) is True
    woken(1)
    batch = [new_ticket(guest=f"room-{n % 3}") for n in range(50)]
    batch += [new_ticket(key="taken"), new_ticket(key="twice"), new_ticket(key="twice")]
    written = await safe.insert_tickets(batch)
    assert written == {t.id for t in batch[:50]} | {batch[51].id}
    assert counts(query)[:3] == (52, 52, 52)
    assert woken(2) == ["default"]  # one NOTIFY for the whole batch


async def test_insert_ticket_is_all_or_nothing(safe: vault.Vault, query: Query) -> None:
    # The job violates a CHECK: ticket, audit and guest must not stay behind.
    with pytest.raises(psycopg.errors.CheckViolation):
        await safe.insert_ticket(new_ticket(guest="room-9", max_attempts=0))
    assert counts(query) == (0, 0, 0, 0, 0)


# --- claiming ------------------------------------------------------------------


async def test_claim_jobs_starts_an_attempt(safe: vault.Vault, query: Query) -> None:
    tickets = await add_tickets(safe, 3)
    claimed = await safe.claim_jobs("default", "node-a", 2)
    assert len(claimed) == 2
    # The oldest two, in no particular order.
    assert {row["ticket_id"] for row in claimed} == {t.id for t in tickets[:2]}
    for row in claimed:
        assert row["attempt"] == 1
        assert job_state(query, row["job_id"]) == ("executing", 1, "node-a")
    statuses = query("SELECT id, status FROM tickets")
    assert sorted(status for _, status in statuses) == ["in_progress", "in_progress", "queued"]
    assert query("SELECT count(*) FROM ticket_events WHERE status = 'in_progress'") == [(2,)]
    assert await safe.claim_jobs("other-queue", "node-a", 10) == []


async def test_claim_skips_jobs_locked_by_another_transaction(
    safe: vault.Vault, database_url: str
) -> None:
    tickets = await add_tickets(safe, 3)
    with psycopg.connect(database_url) as other:  # holds its lock until closed
        other.execute("SELECT id FROM jobs WHERE ticket_id = %s FOR UPDATE", (tickets[0].id,))
        with trio.fail_after(2):  # waiting for the lock would be a failure too
            claimed = await safe.claim_jobs("default", "node-a", 10)
        assert sorted(row["ticket_id"] for row in claimed) == sorted(t.id for t in tickets[1:])
    assert [row["ticket_id"] for row in await safe.claim_jobs("default", "node-b", 10)] == [
        tickets[0].id
    ]


async def test_concurrent_claims_never_return_the_same_job(safe: vault.Vault, query: Query) -> None:
    await add_tickets(safe, 60)
    claims: list[tuple[str, int]] = []

    async def claimer(node: str) -> None:
        while batch := await safe.claim_jobs("default", node, 3):
            claims.extend((node, row["job_id"]) for row in batch)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for n in range(4):
                nursery.start_soon(claimer, f"node-{n}")
    jobs = [job for _, job in claims]
    assert len(jobs) == len(set(jobs)) == 60
    # Each job is executing under the node that claimed it, at attempt 1.
    held = {job: node for node, job in claims}
    for job, attempt, node in query("SELECT id, attempt, node FROM jobs"):
        assert (attempt, node) == (1, held[job])


async def test_each_claim_is_a_new_attempt(safe: vault.Vault, query: Query) -> None:
    await add_tickets(safe, 1)
    for expected in (1, 2, 3):
        claimed = await claim_one(safe)
        assert claimed["attempt"] == expected
        retried = await safe.retry_job(
            claimed["job_id"], expected, delay_seconds=0, reason="again", error={"n": expected}
        )
        assert retried is not None
    assert query("SELECT attempt, jsonb_array_length(errors) FROM jobs") == [(3, 3)]


# --- fencing -------------------------------------------------------------------


async def complete(safe: vault.Vault, job: int, attempt: int) -> dict[str, Any] | None:
    return await safe.complete_job(
        job, attempt, done=3, total=3, message="all pressed",
        amount_cents=1250, currency="EUR", result={"suits": 3},
    )  # fmt: skip


async def test_complete_job_is_fenced_and_happens_once(safe: vault.Vault, query: Query) -> None:
    (ticket,) = await add_tickets(safe, 1)
    claimed = await claim_one(safe)
    before = counts(query)

    for stale in (0, 2):
        assert await complete(safe, claimed["job_id"], stale) is None
    assert counts(query) == before
    assert job_state(query, claimed["job_id"]) == ("executing", 1, "node-a")
    assert query("SELECT status FROM tickets") == [("in_progress",)]

    record = await complete(safe, claimed["job_id"], 1)
    assert record is not None
    assert record["ticket_id"] == str(ticket.id)
    assert (record["outcome"], record["attempts"], record["amount_cents"]) == ("completed", 1, 1250)
    assert record["result"] == {"suits": 3}
    assert record["finished_at"].endswith("Z")
    assert await complete(safe, claimed["job_id"], 1) is None

    assert query("SELECT count(*) FROM service_records") == [(1,)]
    assert query("SELECT status, done, message FROM tickets") == [("completed", 3, "all pressed")]
    assert job_state(query, claimed["job_id"])[0] == "completed"
    assert query("SELECT count(*) FROM ticket_events WHERE status = 'completed'") == [(1,)]


async def test_stale_attempt_after_a_rescue_changes_nothing(
    safe: vault.Vault, query: Query
) -> None:
    await add_tickets(safe, 1)
    first = await claim_one(safe, "dead-node")  # never heartbeats
    assert await safe.rescue_orphans(stale_seconds=30, restarting_node=None) == 1
    second = await claim_one(safe, "live-node")
    assert (first["attempt"], second["attempt"]) == (1, 2)

    assert await complete(safe, first["job_id"], 1) is None
    assert await safe.retry_job(first["job_id"], 1, delay_seconds=0, reason="x", error={}) is None
    assert job_state(query, second["job_id"]) == ("executing", 2, "live-node")
    assert await complete(safe, second["job_id"], 2) is not None
    assert query("SELECT attempts FROM service_records") == [(2,)]


async def test_save_progress_is_fenced_per_row_and_keeps_an_older_checkpoint(
    safe: vault.Vault, query: Query
) -> None:
    await add_tickets(safe, 3)
    first, second, third = (await safe.claim_jobs("default", "node-a", 3))[:3]
    message = 'Suit 1/3 "pressed" \\ ü'
    rows = [
        vault.Progress(first["job_id"], 1, 1, 3, message, {"suits_done": 1, "note": "ü"}),
        vault.Progress(second["job_id"], 1, 2, 3, None, None),
        vault.Progress(third["job_id"], 2, 3, 3, "stale", {"suits_done": 3}),  # not its attempt
    ]
    assert await safe.save_progress(rows) == 2
    by_job = {
        job: (done, total, msg, checkpoint)
        for job, done, total, msg, checkpoint in query(
            "SELECT j.id, t.done, t.total, t.message, j.checkpoint FROM jobs j"
            " JOIN tickets t ON t.id = j.ticket_id"
        )
    }
    assert by_job[first["job_id"]] == (1, 3, message, {"suits_done": 1, "note": "ü"})
    assert by_job[second["job_id"]] == (2, 3, None, None)
    assert by_job[third["job_id"]] == (0, 3, None, None)  # the stale row changed nothing

    # A row without a checkpoint keeps the one saved before; an empty batch is fine.
    assert await safe.save_progress([vault.Progress(first["job_id"], 1, 2, 3, "two", None)]) == 1
    assert query("SELECT checkpoint FROM jobs WHERE id = %s", first["job_id"]) == [
        ({"suits_done": 1, "note": "ü"},)
    ]
    assert await safe.save_progress([]) == 0


async def test_retry_job_schedules_a_later_attempt(safe: vault.Vault, query: Query) -> None:
    await add_tickets(safe, 1)
    claimed = await claim_one(safe)
    row = await safe.retry_job(
        claimed["job_id"], 1, delay_seconds=60, reason="iron too cold", error={"message": "cold"}
    )
    assert row is not None
    now = query("SELECT now()")[0][0]
    assert row["scheduled_at"] > now + datetime.timedelta(seconds=50)
    assert query("SELECT state, node, errors FROM jobs") == [
        ("retryable", None, [{"message": "cold"}])
    ]
    assert query("SELECT status, reason FROM tickets") == [("retrying", "iron too cold")]
    assert await safe.claim_jobs("default", "node-a", 10) == [], "not due for a minute"
    # Fenced: the attempt is no longer executing.
    assert await safe.retry_job(claimed["job_id"], 1, delay_seconds=0, reason="x", error={}) is None

    query("UPDATE jobs SET scheduled_at = now()")
    again = await claim_one(safe)
    assert again["attempt"] == 2
    await safe.retry_job(
        again["job_id"], 2, delay_seconds=0, reason="still cold", error={"message": "colder"}
    )
    assert query("SELECT errors FROM jobs") == [([{"message": "cold"}, {"message": "colder"}],)]


async def end(safe: vault.Vault, ticket: vault.NewTicket, outcome: str, **fields: Any) -> Any:
    return await safe.end_ticket(
        ticket.id, outcome, reason=fields.pop("reason", outcome), done=fields.pop("done", 1),
        amount_cents=0, currency="EUR", **fields,
    )  # fmt: skip


async def test_end_ticket_cancelled_writes_the_record_once(
    safe: vault.Vault, query: Query, listen: Listen
) -> None:
    stops = listen("grandhotel_stop")
    (ticket,) = await add_tickets(safe, 1)
    record = await end(safe, ticket, "cancelled", reason="guest changed plans")
    assert record is not None
    assert (record["outcome"], record["reason"], record["attempts"]) == (
        "cancelled",
        "guest changed plans",
        0,
    )
    assert "stopped" not in record
    assert query("SELECT state, cancelled_at IS NOT NULL FROM jobs") == [("cancelled", True)]
    assert query("SELECT status, finished_at IS NOT NULL FROM tickets") == [("cancelled", True)]
    assert stops(1) == [str(ticket.id)]

    assert await end(safe, ticket, "cancelled") is None
    assert await end(safe, ticket, "failed") is None
    assert query("SELECT outcome FROM service_records") == [("cancelled",)]
    assert await safe.claim_jobs("default", "node-a", 10) == []


async def test_end_ticket_is_fenced_by_a_completed_job(safe: vault.Vault, query: Query) -> None:
    (ticket,) = await add_tickets(safe, 1)
    claimed = await claim_one(safe)
    assert await complete(safe, claimed["job_id"], 1) is not None
    for outcome in ("cancelled", "failed"):
        assert await end(safe, ticket, outcome) is None
    assert query("SELECT outcome FROM service_records") == [("completed",)]
    assert query("SELECT status FROM tickets") == [("completed",)]
    assert job_state(query, claimed["job_id"])[0] == "completed"


async def test_end_ticket_failed_is_fenced_on_the_attempt(safe: vault.Vault, query: Query) -> None:
    (ticket,) = await add_tickets(safe, 1)
    claimed = await claim_one(safe)
    error = {"message": "scorched"}
    assert await end(safe, ticket, "failed", attempt=2, error=error) is None
    assert job_state(query, claimed["job_id"]) == ("executing", 1, "node-a")
    assert query("SELECT count(*) FROM service_records") == [(0,)]

    record = await end(safe, ticket, "failed", attempt=1, error=error)
    assert record is not None
    assert (record["outcome"], record["attempts"]) == ("failed", 1)
    assert query("SELECT state, errors, discarded_at IS NOT NULL FROM jobs") == [
        ("discarded", [error], True)
    ]
    assert query("SELECT status FROM tickets") == [("failed",)]
    assert await complete(safe, claimed["job_id"], 1) is None
    assert query("SELECT count(*) FROM service_records") == [(1,)]


# --- nodes ---------------------------------------------------------------------


async def test_rescue_orphans_only_takes_dead_nodes_jobs(
    safe: vault.Vault, query: Query, listen: Listen
) -> None:
    await add_tickets(safe, 3)
    await safe.heartbeat("fresh")
    await safe.heartbeat("stale")
    query("UPDATE nodes SET heartbeat_at = now() - interval '1 hour' WHERE name = 'stale'")
    jobs = {node: (await claim_one(safe, node))["job_id"] for node in ("fresh", "stale", "gone")}
    woken = listen("grandhotel_jobs")

    assert await safe.rescue_orphans(stale_seconds=30, restarting_node=None) == 2
    assert job_state(query, jobs["fresh"]) == ("executing", 1, "fresh")
    assert job_state(query, jobs["stale"]) == ("available", 1, None)
    assert job_state(query, jobs["gone"]) == ("available", 1, None)
    assert woken(1) == ["default"]
    assert await safe.rescue_orphans(stale_seconds=30, restarting_node=None) == 0

    # A node restarting under its old name gives up its own jobs, fresh or not.
    assert await safe.rescue_orphans(stale_seconds=30, restarting_node="fresh") == 1
    assert job_state(query, jobs["fresh"]) == ("available", 1, None)


async def test_release_jobs_releases_only_this_nodes_executing_jobs(
    safe: vault.Vault, query: Query
) -> None:
    await add_tickets(safe, 3)
    mine = await claim_one(safe, "node-a")
    theirs = await claim_one(safe, "node-b")

    assert await safe.release_jobs("node-a") == 1
    assert query(
        "SELECT state, node, max_attempts, attempt FROM jobs WHERE id = %s", mine["job_id"]
    ) == [("available", None, 4, 1)]
    assert query(
        "SELECT t.status FROM tickets t JOIN jobs j ON j.ticket_id = t.id WHERE j.id = %s",
        mine["job_id"],
    ) == [("queued",)]
    assert query("SELECT state, node, max_attempts FROM jobs WHERE id = %s", theirs["job_id"]) == [
        ("executing", "node-b", 3)
    ]
    assert query("SELECT count(*) FROM jobs WHERE state = 'available'") == [(2,)]
    assert await safe.release_jobs("node-a") == 0


# --- reads ---------------------------------------------------------------------


async def test_guest_history_is_newest_first(safe: vault.Vault) -> None:
    mine = await add_tickets(safe, 3, guest="room-101")
    await add_tickets(safe, 1, guest="room-202")
    for _ in range(4):
        claimed = await claim_one(safe)
        assert await complete(safe, claimed["job_id"], claimed["attempt"]) is not None

    history = await safe.guest_history("room-101", limit=10)
    assert [row["ticket_id"] for row in history] == [str(t.id) for t in reversed(mine)]
    finished = [row["finished_at"] for row in history]
    assert finished == sorted(finished, reverse=True)
    assert all(row["guest_id"] == "room-101" for row in history)

    assert [row["ticket_id"] for row in await safe.guest_history("room-101", limit=2)] == [
        str(mine[2].id),
        str(mine[1].id),
    ]
    assert await safe.guest_history("nobody", limit=10) == []


# --- the safe away -------------------------------------------------------------


async def test_unreachable_database_raises_safe_unavailable(closed_port_url: str) -> None:
    connections = pool.Pool(closed_port_url, size=1, connect_timeout_seconds=2)
    away = vault.Vault(connections, query_timeout_seconds=5)
    with trio.fail_after(10):
        with pytest.raises(vault.SafeUnavailable) as raised:
            await away.ping()
        assert isinstance(raised.value.__cause__, psycopg.OperationalError)
        with pytest.raises(vault.SafeUnavailable):
            await away.insert_ticket(new_ticket())
        with pytest.raises(vault.SafeUnavailable):
            await away.claim_jobs("default", "node-a", 1)
        with pytest.raises(vault.SafeUnavailable):
            await away.migrate()
