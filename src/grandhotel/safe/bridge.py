"""The trio bridge to psycopg 3: a connection class that runs under ``trio.run``.

Theory of operation
-------------------
psycopg's async classes are asyncio-only (psycopg issue #29), but all they do on
the wire is delegated to *generators* (``psycopg.generators``) that yield what
they wait for (readable, writable) and receive what became ready. An
``AsyncConnection`` needs only two things from its event loop: a ``wait`` that
drives such a generator, and a lock. ``TrioConnection`` supplies both with trio
primitives (``trio.lowlevel.wait_readable``/``wait_writable`` on the libpq
socket, ``trio.Lock``) and replaces ``connect``, whose helpers call asyncio.

Measured on the project's 2-core machine (architecture.md): ~20,000 ``SELECT 1``
round trips/s with this approach, against ~3,000 through a sync pool in threads.

Because it leans on psycopg internals (``_connect_gen``, ``wait``, ``lock``),
this is the only module that does, and pyproject pins psycopg's minor version.

Cancellation
------------
A trio cancel that lands while a statement is on the wire leaves libpq in the
ACTIVE state with the rest of the result unread: ``wait`` sends the server a
cancel request (closing the socket alone would leave the statement running,
locks held) and closes the connection, so nobody reuses it in an unknown state. A
cancel between statements leaves an open transaction (INTRANS or INERROR): the
pool rolls it back before reuse (see ``pool.py``).
"""

from __future__ import annotations

import logging
import select
from typing import Any, Self, TypeVar

import psycopg
import trio
from psycopg import pq
from psycopg._conninfo_attempts import conninfo_attempts
from psycopg.abc import PQGen, PQGenConn
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from psycopg.waiting import Ready, Wait

logger = logging.getLogger(__name__)

RV = TypeVar("RV")

_WAIT_R = Wait.R
_WAIT_W = Wait.W
_READY_R = Ready.R
_READY_W = Ready.W
_ACTIVE = pq.TransactionStatus.ACTIVE
CANCEL_REQUEST_SECONDS = 1.0  # bound on asking the server to stop a cancelled statement


def _writable_now(fileno: int) -> bool:
    """Zero-timeout poll: a socket asked for writing is nearly always writable."""
    poller = select.poll()
    poller.register(fileno, select.POLLOUT)
    return bool(poller.poll(0))


async def _wait_ready(fileno: int, wait: int) -> int:
    """Block until ``fileno`` is ready as ``wait`` asks; return the Ready flags."""
    if wait == _WAIT_R:
        await trio.lowlevel.wait_readable(fileno)
        return _READY_R
    if wait == _WAIT_W:
        if _writable_now(fileno):
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.wait_writable(fileno)
        return _READY_W
    # Read-write: libpq is flushing a large message and wants to read meanwhile
    # (the server may be blocked writing to us). Whichever comes first wins.
    if _writable_now(fileno):
        await trio.lowlevel.checkpoint()
        return _READY_W
    ready = 0

    async def wait_for(waiter: Any, flag: int, scope: trio.CancelScope) -> None:
        nonlocal ready
        await waiter(fileno)
        ready |= flag
        scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for, trio.lowlevel.wait_readable, _READY_R, nursery.cancel_scope)
        nursery.start_soon(wait_for, trio.lowlevel.wait_writable, _READY_W, nursery.cancel_scope)
    return ready


async def drive(gen: PQGen[RV], fileno: int) -> RV:
    """Run a psycopg protocol generator on ``fileno`` to completion.

    Cancellation: raises ``trio.Cancelled`` at the next wait; the generator is
    abandoned, so the caller owns the connection's now unknown state.
    """
    try:
        wait = next(gen)
        while True:
            ready = await _wait_ready(fileno, wait)
            wait = gen.send(ready)
    except StopIteration as done:
        result: RV = done.value
        return result
    except OSError as ex:
        raise psycopg.OperationalError("connection socket closed") from ex


async def drive_connect(gen: PQGenConn[RV]) -> RV:
    """Like ``drive`` for a connection generator, whose socket may change."""
    try:
        fileno, wait = next(gen)
        while True:
            ready = await _wait_ready(fileno, wait)
            fileno, wait = gen.send(ready)
    except StopIteration as done:
        result: RV = done.value
        return result
    except OSError as ex:
        raise psycopg.OperationalError("connection socket closed") from ex


class TrioConnection(psycopg.AsyncConnection[TupleRow]):
    """A psycopg ``AsyncConnection`` whose waiting and locking are trio's.

    Use it as any ``AsyncConnection`` (cursors, ``transaction()``, ``execute``)
    from trio code. Create it with ``await TrioConnection.connect(conninfo)``;
    callers bound the time it may take with ``trio.fail_after``.
    """

    def __init__(self, pgconn: pq.abc.PGconn, **kwargs: Any) -> None:
        super().__init__(pgconn, **kwargs)
        # psycopg only uses the lock with ``async with``: a trio.Lock fits.
        self.lock = trio.Lock()  # type: ignore[assignment]

    @classmethod
    async def connect(
        cls,
        conninfo: str = "",
        *,
        autocommit: bool = False,
        prepare_threshold: int | None = 5,
        **kwargs: Any,
    ) -> Self:
        """Open a connection; raise ``psycopg.OperationalError`` if none works.

        Host names are resolved in a worker thread (``getaddrinfo`` blocks), then
        each address is tried in turn as libpq would.
        """
        params = conninfo_to_dict(conninfo, **kwargs)
        attempts = await trio.to_thread.run_sync(conninfo_attempts, params)
        errors: list[psycopg.Error] = []
        for attempt in attempts:
            try:
                conn = await drive_connect(cls._connect_gen(make_conninfo("", **attempt)))
            except psycopg.Error as ex:
                errors.append(ex)
                continue
            conn._autocommit = autocommit
            conn.prepare_threshold = prepare_threshold
            return conn
        raise errors[-1].with_traceback(None)

    async def wait(
        self,
        gen: PQGen[RV],
        interval: float = 0.0,
        timeout: float | None = None,  # noqa: ASYNC109 - psycopg's signature
    ) -> RV:
        """Drive ``gen`` on this connection's socket (psycopg's wait hook).

        ``interval`` and ``timeout`` are psycopg's asyncio knobs and are ignored:
        under trio, callers bound time with cancel scopes. Cancelled mid-statement,
        the connection is closed rather than left in an unknown state.
        """
        try:
            return await drive(gen, self.pgconn.socket)
        except BaseException:  # Cancelled, alone or in a group (the read-write wait)
            if self.pgconn.transaction_status == _ACTIVE:
                await self._cancel_on_server()
                self.abandon()
            raise

    async def _cancel_on_server(self) -> None:
        """Ask the server to stop the statement (closing the socket would not stop it).

        Shielded and bounded: a cancel must not wait on a server that is away.
        """
        with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_REQUEST_SECONDS):
            try:
                await drive_connect(self._cancel_gen())
            except (psycopg.Error, OSError) as ex:
                logger.debug("cancel request failed: %s", ex)

    def abandon(self) -> None:
        """Close the connection at once, without a round trip (it may be stuck)."""
        if not self.closed:
            logger.debug("closing a connection left mid-statement")
            self._closed = True
            self.pgconn.finish()
