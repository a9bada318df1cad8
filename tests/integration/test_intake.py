"""Intake: concurrent new tickets share statements; each waiter gets its own outcome."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

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
