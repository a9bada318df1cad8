"""Sick butlers, restart storms and slow guests, through the real server."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest
import trio

from grandhotel import schemas, services, tickets
from grandhotel.services import laundry
from helpers import (
    Watch,
    assert_gap_free,
    assert_one_stream,
    bearer,
    create,
    raw_websocket,
    watch,
)


async def watch_into(base: str, ticket: dict[str, Any], result: Watch) -> None:
    await watch(base, ticket["id"], ticket["token"], result=result)


async def create_many(client: httpx.AsyncClient, count: int, **kwargs: Any) -> list[Any]:
    created: list[Any] = []
    limiter = trio.CapacityLimiter(20)

    async def one() -> None:
        async with limiter:
            created.append(await create(client, **kwargs))

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return created


@pytest.mark.slow
async def test_sick_butlers_500_tickets_3_watchers_each(start_hotel: Any, query: Any) -> None:
    """Crash rate 0.1: every stream is still gap-free and ends completed."""
    the_hotel, base = await start_hotel(
        chaos_butler_crash_rate=0.1, butler_restart_limit=1000, butler_redeliveries=10,
        laundry_step_seconds=0.2,
        pool_size=10,
        # 1,500 watchers connect at once, all from 127.0.0.1.
        max_connections_per_client=2_000,
    )  # fmt: skip
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        created = await create_many(client, 500, args={"suits": 4})
    results = [Watch() for _ in range(3 * len(created))]
    async with trio.open_nursery() as nursery:
        for index, result in enumerate(results):
            nursery.start_soon(watch_into, base, created[index // 3], result)
    for result in results:
        assert_one_stream(result.events, "completed")
        assert_gap_free(result.events)
        assert result.events[-1]["done"] == 4
    assert the_hotel.supervisor.restarts > 50  # ~10% of ~3,000 reports
    assert the_hotel.supervisor.given_up == 0
    assert query("SELECT count(*) FROM service_records WHERE outcome = 'completed'") == [(500,)]
    assert len(the_hotel.lines) == 0


async def test_restart_storm_fails_only_the_sick_ticket(
    start_hotel: Any, query: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sick: set[str] = set()
    real_advance = tickets.advance

    def advance(notebook: Any, report: Any, at: str) -> Any:
        if notebook.ticket_id in sick:
            raise RuntimeError("this butler cannot stand up")
        return real_advance(notebook, report, at)

    monkeypatch.setattr(tickets, "advance", advance)
    the_hotel, base = await start_hotel(laundry_step_seconds=0.05)
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        victim = await create(client, args={"suits": 20})
        sick.add(victim["id"])
        others = await create_many(client, 200, args={"suits": 3})
        seen = await watch(base, victim["id"], victim["token"])
        results = [Watch() for _ in others]
        async with trio.open_nursery() as nursery:
            for ticket, result in zip(others, results, strict=True):
                nursery.start_soon(watch_into, base, ticket, result)
        stats = await client.get("/stats", headers=bearer("operator-secret-for-tests"))
    assert seen.events[-1]["type"] == "failed"
    assert "butler crashed" in seen.events[-1]["reason"]
    for result in results:
        assert_one_stream(result.events, "completed")
    assert the_hotel.supervisor.given_up == 1
    assert stats.json()["butler_restarts"] >= the_hotel.settings.butler_restart_limit
    assert stats.json()["butlers_given_up"] == 1
    assert query("SELECT state FROM jobs WHERE ticket_id = %s", victim["id"]) == [("discarded",)]
    assert query("SELECT outcome, count(*) FROM service_records GROUP BY 1 ORDER BY 1") == [
        ("completed", 200), ("failed", 1),
    ]  # fmt: skip


async def test_lookups_and_reports_during_restarts_lose_nothing(
    start_hotel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every third report crashes the butler once; GETs and progress keep flowing."""
    real_advance = tickets.advance
    crashed: set[tuple[str, int]] = set()

    def advance(notebook: Any, report: Any, at: str) -> Any:
        if isinstance(report, tickets.Progress) and report.done % 3 == 0:
            key = (notebook.ticket_id, report.done)
            if key not in crashed:
                crashed.add(key)
                raise RuntimeError("tripped on every third suit")
        return real_advance(notebook, report, at)

    monkeypatch.setattr(tickets, "advance", advance)
    catalogue = services.Catalogue()

    @catalogue.service("rapid", args=schemas.Object({}), total=lambda args: 60)
    async def rapid(ctx: services.Context) -> None:
        for step in range(1, 61):
            await ctx.progress(step, 60)
            await trio.sleep(0.01)

    the_hotel, base = await start_hotel(
        catalogue=catalogue, butler_restart_limit=100, butler_restart_window_seconds=1
    )
    async with httpx.AsyncClient(base_url=base) as client:
        ticket = await create(client, service="rapid", args={})
        seen = Watch()
        reads: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_into, base, ticket, seen)
            while seen.close_code is None:
                read = await client.get(f"/tickets/{ticket['id']}", headers=bearer(ticket["token"]))
                reads.append(read.status_code)
                await trio.sleep(0.005)
    assert set(reads) == {200}
    assert len(crashed) == 20
    assert the_hotel.supervisor.restarts == 20
    assert_one_stream(seen.events, "completed")
    assert_gap_free(seen.events)
    dones = [e["done"] for e in seen.events if e["type"] == "progress"]
    assert dones == list(range(seen.events[0]["done"] + 1, 61))  # not one report lost


def stuck_guest(port: int, ticket: dict[str, Any]) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads."""
    sock = raw_websocket(port, ticket, receive_buffer=4096)
    assert sock.recv(12) == b"HTTP/1.1 101"
    return sock


def dropped(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (reading what it had sent first)."""
    sock.settimeout(5)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    finally:
        sock.close()
    return True


async def test_a_guest_who_never_reads_among_500(start_hotel: Any) -> None:
    catalogue = services.Catalogue(laundry.make(0.01, 450))

    @catalogue.service("chatty", args=schemas.Object({}), total=lambda args: 3000)
    async def chatty(ctx: services.Context) -> None:
        for step in range(1, 3001):
            await ctx.progress(step, 3000, "x" * 200)
            await trio.sleep(0.001)

    the_hotel, base = await start_hotel(
        catalogue=catalogue, watcher_buffer_events=8, write_deadline_seconds=0.5,
        ws_ping_interval_seconds=0.2, idle_timeout_seconds=3.0,
    )  # fmt: skip
    port = int(base.rsplit(":", 1)[1])
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        loud = await create(client, service="chatty", args={})
        quiet = await create_many(client, 499, args={"suits": 3})
    line = the_hotel.lines.lookup(loud["id"])
    assert line is not None
    stuck = await trio.to_thread.run_sync(stuck_guest, port, loud)
    results = [Watch() for _ in range(500)]
    most_queued = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_into, base, loud, results[0])
        for ticket, result in zip(quiet, results[1:], strict=True):
            nursery.start_soon(watch_into, base, ticket, result)
        while any(result.close_code is None for result in results):
            most_queued = max([most_queued, *(len(box) for box in line.watchers)])
            await trio.sleep(0.01)
    # The stuck guest was dropped; its mailbox never held more than its bound.
    assert most_queued <= 8 + 4
    assert await trio.to_thread.run_sync(dropped, stuck)
    for result in results:
        assert_one_stream(result.events, "completed")
    assert [e["done"] for e in results[0].events][-1] == 3000
