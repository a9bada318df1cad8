"""The trio bridge (``safe/bridge.py``) against a real PostgreSQL.

What it must do: run psycopg's protocol under ``trio.run`` with correct results,
transactions that commit and roll back, many tasks at once, large messages that
need several writes, and, when a trio cancel lands mid-statement, close the
connection rather than leave it in an unknown (ACTIVE) state.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest
import trio
from psycopg import pq

from grandhotel.safe import bridge
from integration import support

Query = Callable[..., list[tuple[Any, ...]]]
Connect = Callable[..., Awaitable[bridge.TrioConnection]]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """``await connect(url, **kwargs)``: a TrioConnection, closed after the test.

    Closed here even when a test fails half-way, so that no open connection is
    left to the garbage collector (a ResourceWarning, an error in another test).
    """
    opened: list[bridge.TrioConnection] = []

    async def open_one(url: str, **kwargs: Any) -> bridge.TrioConnection:
        with trio.fail_after(5):
            opened.append(await bridge.TrioConnection.connect(url, **kwargs))
        return opened[-1]

    yield open_one
    for conn in opened:
        conn.abandon()


async def test_execute_with_params_and_fetch(connect: Connect, database_url: str) -> None:
    ident = uuid.uuid4()
    conn = await connect(database_url, autocommit=True)
    try:
        cursor = await conn.execute(
            "SELECT %s::int + %s::int, %s::text, %s::uuid", (2, 40, "é", ident)
        )
        assert await cursor.fetchone() == (42, "é", ident)

        cursor = await conn.execute(
            "SELECT n, n * %(factor)s FROM generate_series(1, %(count)s) AS n",
            {"factor": 3, "count": 5},
        )
        assert await cursor.fetchall() == [(n, 3 * n) for n in range(1, 6)]
        assert cursor.rowcount == 5

        cursor = await conn.execute("SELECT current_database()")
        assert await cursor.fetchone() == (conn.info.dbname,)
        assert conn.info.dbname in database_url
    finally:
        await conn.close()
    assert conn.closed


async def test_server_error_is_raised_and_connection_stays_usable(
    connect: Connect, database_url: str
) -> None:
    conn = await connect(database_url, autocommit=True)
    with pytest.raises(psycopg.errors.DivisionByZero):
        await conn.execute("SELECT 1 / %s", (0,))
    cursor = await conn.execute("SELECT 'still here'")
    assert await cursor.fetchone() == ("still here",)
    await conn.close()


async def test_transaction_block_commits(connect: Connect, database_url: str, query: Query) -> None:
    conn = await connect(database_url, autocommit=True)
    await conn.execute("CREATE TABLE notes (body text)")
    async with conn.transaction():
        await conn.execute("INSERT INTO notes VALUES (%s)", ("one",))
        await conn.execute("INSERT INTO notes VALUES (%s)", ("two",))
        # Not visible to others before the commit.
        assert query("SELECT count(*) FROM notes") == [(0,)]
    assert query("SELECT body FROM notes ORDER BY body") == [("one",), ("two",)]
    assert conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
    await conn.close()


async def test_transaction_block_rolls_back_on_error(
    connect: Connect, database_url: str, query: Query
) -> None:
    conn = await connect(database_url, autocommit=True)
    await conn.execute("CREATE TABLE notes (body text)")

    async def write_then_fail() -> None:
        async with conn.transaction():
            await conn.execute("INSERT INTO notes VALUES ('never')")
            raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError, match="changed my mind"):
        await write_then_fail()
    assert query("SELECT count(*) FROM notes") == [(0,)]
    assert conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
    await conn.close()


async def test_explicit_commit_and_rollback(
    connect: Connect, database_url: str, query: Query
) -> None:
    conn = await connect(database_url)  # not autocommit: statements open a transaction
    await conn.execute("CREATE TABLE notes (body text)")
    await conn.commit()
    await conn.execute("INSERT INTO notes VALUES ('kept')")
    await conn.commit()
    await conn.execute("INSERT INTO notes VALUES ('dropped')")
    assert conn.pgconn.transaction_status == pq.TransactionStatus.INTRANS
    await conn.rollback()
    assert query("SELECT body FROM notes") == [("kept",)]
    await conn.close()


async def test_cancel_mid_statement_closes_the_connection(
    connect: Connect, database_url: str
) -> None:
    conn = await connect(database_url, autocommit=True)
    started = trio.current_time()
    with trio.move_on_after(0.1) as scope:
        await conn.execute("SELECT pg_sleep(5)")
    assert scope.cancelled_caught
    assert trio.current_time() - started < 1.0
    assert conn.closed
    assert conn.pgconn.transaction_status != pq.TransactionStatus.ACTIVE
    with pytest.raises(psycopg.OperationalError):
        await conn.execute("SELECT 1")


async def test_cancel_mid_statement_stops_the_server_side_query(
    connect: Connect, database_url: str, query: Query
) -> None:
    conn = await connect(database_url, autocommit=True)
    pid = conn.info.backend_pid
    with trio.move_on_after(0.1):
        await conn.execute("SELECT pg_sleep(5)")
    assert conn.closed

    def backend_gone_or_idle() -> bool:
        rows = query("SELECT state FROM pg_stat_activity WHERE pid = %s", pid)
        return not rows or rows[0][0] == "idle"

    # PostgreSQL only notices a vanished client when it next talks to it, so
    # without a cancel request the backend sleeps on for the full 5 s.
    await support.wait_until(backend_gone_or_idle, seconds=1.5, poll=0.05)


async def test_cancel_between_statements_leaves_a_transaction_to_roll_back(
    connect: Connect, database_url: str, query: Query
) -> None:
    conn = await connect(database_url)
    await conn.execute("CREATE TABLE notes (body text)")
    await conn.commit()
    with trio.move_on_after(0.05):
        await conn.execute("INSERT INTO notes VALUES ('half done')")
        await trio.sleep(1)
    # Not mid-statement: the connection stays open, inside its transaction.
    assert not conn.closed
    assert conn.pgconn.transaction_status == pq.TransactionStatus.INTRANS
    await conn.rollback()
    assert conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
    assert query("SELECT count(*) FROM notes") == [(0,)]
    await conn.close()


async def test_ten_tasks_on_ten_connections_get_their_own_answers(
    connect: Connect, database_url: str
) -> None:
    results: dict[int, list[tuple[int, str]]] = {}
    pids: set[int] = set()

    async def worker(task: int) -> None:
        conn = await connect(database_url, autocommit=True)
        pids.add(conn.info.backend_pid)
        answers = results[task] = []
        for i in range(200):
            cursor = await conn.execute(
                "SELECT %s::int * 1000 + %s::int, %s::text", (task, i, f"t{task}")
            )
            row = await cursor.fetchone()
            assert row is not None
            answers.append(row)
        await conn.close()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for task in range(10):
                nursery.start_soon(worker, task)
    assert len(pids) == 10
    for task in range(10):
        assert results[task] == [(task * 1000 + i, f"t{task}") for i in range(200)]


async def test_tasks_sharing_one_connection_are_serialised(
    connect: Connect, database_url: str
) -> None:
    conn = await connect(database_url, autocommit=True)
    seen: list[tuple[int, int]] = []

    async def worker(task: int) -> None:
        for i in range(50):
            cursor = await conn.execute("SELECT %s::int, %s::int", (task, i))
            row = await cursor.fetchone()
            assert row == (task, i)
            seen.append(row)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for task in range(5):
                nursery.start_soon(worker, task)
    assert sorted(seen) == [(task, i) for task in range(5) for i in range(50)]
    await conn.close()


async def test_connect_to_a_closed_port_raises_operational_error(closed_port_url: str) -> None:
    with trio.fail_after(5), pytest.raises(psycopg.OperationalError):
        await bridge.TrioConnection.connect(closed_port_url)


async def test_large_parameter_round_trips(connect: Connect, database_url: str) -> None:
    # 5 MB is far beyond the socket buffers: sending it takes many writes, each
    # waiting for the socket to drain (the read-write wait path).
    text = os.urandom(2_500_000).hex()
    conn = await connect(database_url, autocommit=True)
    with trio.fail_after(10):
        cursor = await conn.execute("SELECT length(%s), md5(%s), %s::text", (text, text, text))
        row = await cursor.fetchone()
    assert row is not None
    assert row[0] == 5_000_000
    assert row[1] == hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - a checksum
    assert row[2] == text
    cursor = await conn.execute("SELECT 'next'")
    assert await cursor.fetchone() == ("next",)
    await conn.close()


async def test_cancel_while_sending_a_large_message_closes_the_connection(
    connect: Connect, database_url: str, relay: support.Relay
) -> None:
    conn = await connect(relay.url(database_url), autocommit=True)
    cursor = await conn.execute("SELECT 1")
    assert await cursor.fetchone() == (1,)
    # The server stops reading: libpq's flush fills the socket buffers, then waits
    # for "readable or writable", which is where this cancel lands.
    relay.freeze()
    with trio.move_on_after(0.3) as scope:
        await conn.execute("SELECT length(%s)", ("x" * 32_000_000,))
    assert scope.cancelled_caught
    assert conn.pgconn.transaction_status != pq.TransactionStatus.ACTIVE
    assert conn.closed
