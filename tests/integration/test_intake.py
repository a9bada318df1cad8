"""Intake: concurrent new tickets share statements; each waiter gets its own outcome."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from typing import Any

import psycopg
import pytest
import trio

from grandhotel import intake
from grandhotel.safe import pool, vault


def new_ticket(key: str | None = None) -> vault.NewTicket:
    return vault.NewTicket(
        id=uuid.uuid4(), guest="room-1", service="laundry", args={"suits": 1},
        butler="Jenkins", token_hash=hashlib.sha256(b"t").digest(), total=1,
        queue="default", max_attempts=3, idempotency_key=key,
        request_hash=hashlib.sha256(b"r").digest() if key else None,
    )  # fmt: skip


async def test_concurrent_tickets_share_batches(
    nursery: trio.Nursery, database_url: str, query: Any
) -> None:
    connections = pool.Pool(database_url, size=4, connect_timeout_seconds=5)
    desk = intake.Intake(vault.Vault(connections), batch_max=30)
    await nursery.start(desk.run)
    outcomes: list[bool] = []

    async def one(key: str | None) -> None:
        outcomes.append(await desk.insert(new_ticket(key)))

    async with trio.open_nursery() as inner:
        for n in range(100):
            inner.start_soon(one, "dup" if n in (10, 20) else None)
    assert sorted(outcomes) == [False] + [True] * 99  # one of the two "dup" lost
    assert desk.written == 99
    assert 4 <= desk.batches < 100  # shared statements, none above batch_max
    assert query("SELECT count(*) FROM tickets") == [(99,)]
    assert query("SELECT count(*) FROM jobs") == [(99,)]  # a job and an audit event each,
    assert query("SELECT count(*) FROM ticket_events") == [(99,)]  # none for the lost one
    await connections.aclose()


async def test_an_unreachable_safe_fails_every_waiter(
    nursery: trio.Nursery, closed_port_url: str
) -> None:
    connections = pool.Pool(closed_port_url, size=1, connect_timeout_seconds=2)
    desk = intake.Intake(vault.Vault(connections), batch_max=10)
    await nursery.start(desk.run)
    failures: list[str] = []

    async def one() -> None:
        with pytest.raises(vault.SafeUnavailable) as raised:
            await desk.insert(new_ticket())
        failures.append(str(raised.value))

    async with trio.open_nursery() as inner:
        for _ in range(5):
            inner.start_soon(one)
    assert len(failures) == 5
    assert desk.written == 0


async def test_a_batch_wakes_the_laundry_once_per_queue(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN grandhotel_jobs")
        connections = pool.Pool(database_url, size=1, connect_timeout_seconds=5)
        batch = [new_ticket(), new_ticket(), dataclasses.replace(new_ticket(), queue="slow")]
        written = await vault.Vault(connections).insert_tickets(batch)
        await connections.aclose()
        assert written == {new.id for new in batch}
        heard = sorted(n.payload for n in listener.notifies(timeout=5, stop_after=2))
    assert heard == ["default", "slow"]
