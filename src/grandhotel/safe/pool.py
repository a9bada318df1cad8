"""A small trio-native connection pool for ``TrioConnection``.

Theory of operation: at most ``size`` connections exist; a borrower takes an idle
one or opens a new one while under the limit, otherwise waits (fairly, FIFO) on a
``trio.Semaphore``. A connection comes back in one of three states, decided by
libpq's transaction status: IDLE (reused), INTRANS/INERROR (left by a cancel
between statements: rolled back, shielded and bounded in time, then reused; if
psycopg refuses the rollback, closed) or anything else (closed and forgotten).
Before an idle connection is handed out it is checked without blocking: an idle
connection has something to read only when the server is closing it (a restart,
``pg_terminate_backend``), and such a connection is dropped, not handed out.
A database that went away costs each borrower one failed connect, which the
caller sees as ``psycopg.OperationalError``.

psycopg_pool's AsyncConnectionPool is not used: it is asyncio-only.
"""

from __future__ import annotations

import logging
import select
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
import trio
from psycopg import pq

from grandhotel.safe import bridge

logger = logging.getLogger(__name__)

_IDLE = pq.TransactionStatus.IDLE
_IN_TRANSACTION = (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR)


class Pool:
    """Hands out ``TrioConnection``s (autocommit on) to one borrower at a time.

    Args:
        conninfo: libpq connection string or URL (``PG*`` variables fill gaps).
        size: the most connections open at once.
        connect_timeout_seconds: bound on opening one connection.
        rollback_timeout_seconds: bound on cleaning up a returned connection.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        size: int,
        connect_timeout_seconds: float,
        rollback_timeout_seconds: float = 5.0,
    ) -> None:
        self.conninfo = conninfo
        self.size = size
        self.connect_timeout_seconds = connect_timeout_seconds
        self.rollback_timeout_seconds = rollback_timeout_seconds
        self._idle: deque[bridge.TrioConnection] = deque()
        self._slots = trio.Semaphore(size)
        self._closed = False
        self.borrowed = 0
        """How many times a connection was handed out (tests count queries with it)."""
        self.opened = 0

    async def open_connection(self) -> bridge.TrioConnection:
        """A new autocommit connection outside the pool (for LISTEN, say)."""
        with trio.fail_after(self.connect_timeout_seconds):
            try:
                conn = await bridge.TrioConnection.connect(self.conninfo, autocommit=True)
            except trio.TooSlowError as ex:
                raise psycopg.OperationalError("connection timeout expired") from ex
        self.opened += 1
        return conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[bridge.TrioConnection]:
        """Borrow a connection for the body of the ``async with``.

        Cancellation: waiting for a slot or connecting is cancellable; a
        connection cancelled mid-statement is closed, not reused.
        """
        async with self._slots:
            conn = await self._take()
            self.borrowed += 1
            try:
                yield conn
            finally:
                await self._give_back(conn)

    async def _take(self) -> bridge.TrioConnection:
        if self._closed:
            raise psycopg.OperationalError("the pool is closed")
        while self._idle:
            conn = self._idle.pop()
            if _alive(conn):
                return conn
            conn.abandon()
        return await self.open_connection()

    async def _give_back(self, conn: bridge.TrioConnection) -> None:
        status = conn.pgconn.transaction_status
        if not conn.closed and status in _IN_TRANSACTION:
            with trio.CancelScope(shield=True), trio.move_on_after(self.rollback_timeout_seconds):
                try:
                    await conn.rollback()
                except psycopg.Error:
                    conn.abandon()
            status = conn.pgconn.transaction_status
        if conn.closed or status != _IDLE or self._closed:
            conn.abandon()
            return
        self._idle.append(conn)

    async def aclose(self) -> None:
        """Close every idle connection (borrowed ones close when returned late)."""
        self._closed = True
        while self._idle:
            self._idle.pop().abandon()


def _readable_now(fileno: int) -> bool:
    poller = select.poll()
    poller.register(fileno, select.POLLIN)
    return bool(poller.poll(0))


def _alive(conn: bridge.TrioConnection) -> bool:
    """Whether an idle connection may be handed out (checked without blocking).

    An idle connection has input only when the server sends a notice or is
    closing it; consuming that input tells which. A few rounds at most.
    """
    for _ in range(8):
        if conn.closed or conn.pgconn.status != pq.ConnStatus.OK:
            return False
        if not _readable_now(conn.pgconn.socket):
            return True
        try:
            conn.pgconn.consume_input()
        except psycopg.OperationalError:
            return False
    return False
