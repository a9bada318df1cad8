"""The LISTEN/NOTIFY listener (``safe/notifier.py``) on a real database.

What it must do: hand each notification's payload to its channel's handler;
after its connection dies (terminated backend, or a half-open link that stops
answering) reconnect within bounded time, wake the laundry once more, and keep
delivering. Real time and real sockets here; each test stays under ~3 s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio

from grandhotel.safe import notifier, pool
from integration import support

Query = Callable[..., list[tuple[Any, ...]]]


class Heard:
    """Records what the notifier hands to each channel's handler."""

    def __init__(self) -> None:
        self.jobs: list[str] = []
        self.stops: list[str] = []

    def handlers(self) -> dict[str, Callable[[str], None]]:
        return {notifier.JOBS: self.jobs.append, notifier.STOP: self.stops.append}


@pytest.fixture
async def start_notifier(
    nursery: trio.Nursery,
) -> AsyncIterator[Callable[[str], Any]]:
    """``await start_notifier(url)`` runs a Notifier (fast health checks) until connected."""
    pools: list[pool.Pool] = []

    async def start(url: str) -> tuple[notifier.Notifier, Heard]:
        pools.append(pool.Pool(url, size=1, connect_timeout_seconds=2))
        heard = Heard()
        listener = notifier.Notifier(
            pools[-1], heard.handlers(), health_seconds=0.2, retry_max_seconds=0.2
        )
        await nursery.start(listener.run)
        await support.wait_until(lambda: listener.connected, seconds=2)
        return listener, heard

    yield start
    nursery.cancel_scope.cancel()
    for each in pools:
        await each.aclose()


async def test_a_notification_reaches_its_channels_handler(
    start_notifier: Callable[[str], Any], database_url: str, query: Query
) -> None:
    with trio.fail_after(3):
        listener, heard = await start_notifier(database_url)
        assert listener.reconnects == 1
        assert listener.backend_pid is not None
        assert heard.jobs == [""], "a wake-up on connect, for jobs readied meanwhile"

        query("NOTIFY grandhotel_jobs, 'default'")
        await support.wait_until(lambda: heard.jobs == ["", "default"], seconds=1)
        query("SELECT pg_notify('grandhotel_stop', 'ticket-1')")
        await support.wait_until(lambda: heard.stops == ["ticket-1"], seconds=1)
        assert heard.jobs == ["", "default"]


async def test_a_burst_arrives_complete_and_in_order(
    start_notifier: Callable[[str], Any], database_url: str, query: Query
) -> None:
    with trio.fail_after(3):
        _, heard = await start_notifier(database_url)
        queues = [f"queue-{i}" for i in range(50)]
        query("SELECT pg_notify('grandhotel_jobs', q) FROM unnest(%s::text[]) AS q", queues)
        await support.wait_until(lambda: len(heard.jobs) >= 51, seconds=1)
        await trio.sleep(0.05)
        assert heard.jobs == ["", *queues]


async def test_a_notification_that_arrives_during_a_health_check_is_delivered_once(
    start_notifier: Callable[[str], Any],
    database_url: str,
    query: Query,
    relay: support.Relay,
) -> None:
    # The notification is held back until the health check's ping has left, so
    # it reaches the client inside the ping's reply: it goes through psycopg's
    # notify handler, not the idle wait's own reading. Delivered once, no reconnect.
    with trio.fail_after(3):
        listener, heard = await start_notifier(relay.url(database_url))
        (link,) = relay.links
        link.hold_downstream()
        query("NOTIFY grandhotel_jobs, 'during-ping'")
        sent_before = link.upstream_bytes
        await support.wait_until(lambda: link.upstream_bytes > sent_before, seconds=1)
        link.release()
        await support.wait_until(lambda: "during-ping" in heard.jobs, seconds=1)
        await trio.sleep(0.3)  # time for another health check, and any duplicate
        assert heard.jobs == ["", "during-ping"]
        assert listener.reconnects == 1


async def test_reconnects_after_its_backend_is_terminated(
    start_notifier: Callable[[str], Any], database_url: str, query: Query
) -> None:
    with trio.fail_after(3):
        listener, heard = await start_notifier(database_url)
        first_pid = listener.backend_pid
        assert query("SELECT pg_terminate_backend(%s)", first_pid) == [(True,)]

        await support.wait_until(lambda: listener.reconnects == 2 and listener.connected, seconds=2)
        assert listener.backend_pid != first_pid
        assert heard.jobs == ["", ""], "woken again after the reconnect"
        query("NOTIFY grandhotel_jobs, 'after'")
        await support.wait_until(lambda: heard.jobs[-1:] == ["after"], seconds=1)
        assert heard.jobs == ["", "", "after"]


async def test_replaces_a_half_open_connection(
    start_notifier: Callable[[str], Any],
    database_url: str,
    query: Query,
    relay: support.Relay,
) -> None:
    # The link stops carrying bytes but never closes: only the health check
    # (a ping bounded by health_seconds) can tell.
    with trio.fail_after(3):
        listener, heard = await start_notifier(relay.url(database_url))
        first_pid = listener.backend_pid
        relay.freeze()
        await support.wait_until(lambda: listener.reconnects == 2 and listener.connected, seconds=2)
        assert listener.backend_pid != first_pid
        query("NOTIFY grandhotel_jobs, 'after'")
        await support.wait_until(lambda: heard.jobs[-1:] == ["after"], seconds=1)
        assert heard.jobs == ["", "", "after"]
