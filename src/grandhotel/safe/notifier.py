"""LISTEN/NOTIFY: wakes the laundry when jobs become ready, and stays healthy.

One dedicated connection LISTENs on two channels: ``grandhotel_jobs`` (payload:
a queue with ready jobs) and ``grandhotel_stop`` (payload: a ticket that was
ended from outside its job, whose attempt must stop wherever it runs). Each
notification goes to the handler registered for its channel. The connection is
health-checked every ``health_seconds`` with a bounded round trip, because a
half-open connection would otherwise wait forever while notifications are lost;
when the check or the socket fails, the connection is replaced with backoff.
Polling in the laundry bounds job pickup while the listener is down.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from typing import Final

import psycopg
import trio

from grandhotel import backoff
from grandhotel.safe import bridge, pool, sql

logger = logging.getLogger(__name__)

JOBS: Final = "grandhotel_jobs"
STOP: Final = "grandhotel_stop"


class Notifier:
    """Keeps one LISTEN connection alive and forwards what it hears.

    Args:
        connections: where to open the listening connection.
        handlers: channel -> called with each notification's payload; the
            ``JOBS`` handler is also called with ``""`` after every (re)connect.
        health_seconds: how long the connection may be silent before a check.
        retry_max_seconds: the longest backoff between reconnects.
    """

    def __init__(
        self,
        connections: pool.Pool,
        handlers: Mapping[str, Callable[[str], None]],
        *,
        health_seconds: float,
        retry_max_seconds: float,
    ) -> None:
        self.pool = connections
        self.handlers = handlers
        self.health_seconds = health_seconds
        self.retry_max_seconds = retry_max_seconds
        self.connected = False
        self.reconnects = 0
        self.backend_pid: int | None = None
        self._rng = random.Random()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled, reconnecting as needed.

        Reports started at once: the laundry polls until the first LISTEN lands.
        """
        task_status.started()
        failures = 0
        while True:
            reconnects = self.reconnects
            try:
                await self._listen()
            except (psycopg.Error, OSError, trio.TooSlowError) as ex:
                # Back off from the first failure again after any good connection.
                failures = 1 if self.reconnects > reconnects else failures + 1
                self.connected = False
                logger.warning("LISTEN connection lost (%s); reconnecting", type(ex).__name__)
            delay = backoff.delay(
                failures, base_seconds=0.1, max_seconds=self.retry_max_seconds, rng=self._rng
            )
            await trio.sleep(delay)

    async def _listen(self) -> None:
        conn = await self.pool.open_connection()
        try:
            conn.add_notify_handler(lambda note: self._dispatch(note.channel, note.payload))
            await conn.execute(sql.QUERIES["listen"])
            self.connected = True
            self.reconnects += 1
            self.backend_pid = conn.info.backend_pid
            # Whatever became ready while nobody listened is found by this wake.
            self._dispatch(JOBS, "")
            while True:
                await self._wait_for_notifications(conn)
        finally:
            self.connected = False
            conn.abandon()

    def _dispatch(self, channel: str, payload: str) -> None:
        handler = self.handlers.get(channel)
        if handler is not None:
            handler(payload)

    async def _wait_for_notifications(self, conn: bridge.TrioConnection) -> None:
        with trio.move_on_after(self.health_seconds):
            await trio.lowlevel.wait_readable(conn.pgconn.socket)
            conn.pgconn.consume_input()
            while (note := conn.pgconn.notifies()) is not None:
                self._dispatch(note.relname.decode(), note.extra.decode())
            return
        # Silent for a while: prove the connection still answers, in bounded time.
        with trio.fail_after(self.health_seconds):
            await conn.execute(sql.QUERIES["ping"])
