"""The safe misbehaves (killed connections, an outage, a dead LISTEN): nothing is lost."""

from __future__ import annotations

import json
from typing import Any

import httpx
import psycopg
import pytest
import trio

from grandhotel import schemas, services
from grandhotel.safe import notifier
from grandhotel.services import laundry
from helpers import Watch, assert_one_stream, bearer, create, watch
from proxy import CuttableProxy

UNFINISHED = "SELECT count(*) FROM tickets WHERE status IN ('queued', 'in_progress', 'retrying')"


async def until(predicate: Any, timeout: float = 30, every: float = 0.05) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(every)


async def watch_into(base: str, ticket: dict[str, Any], result: Watch) -> None:
    await watch(base, ticket["id"], ticket["token"], result=result)


async def test_dead_listen_connection_comes_back(start_hotel: Any, query: Any) -> None:
    the_hotel, base = await start_hotel(heartbeat_seconds=0.2, poll_interval_seconds=5)
    listener = the_hotel.laundry.notifier
    await until(lambda: listener.connected)
    old_pid, reconnects = listener.backend_pid, listener.reconnects
    query("SELECT pg_terminate_backend(%s)", old_pid)
    await until(lambda: listener.reconnects > reconnects and listener.connected, timeout=3)
    assert listener.backend_pid != old_pid
    # Polling is 5 s here: a pickup within 2 s proves the new LISTEN works.
    async with httpx.AsyncClient(base_url=base) as client:
        ticket = await create(client, args={"suits": 1})
    with trio.fail_after(2):
        seen = await watch(base, ticket["id"], ticket["token"])
    assert_one_stream(seen.events, "completed")


async def test_polling_picks_up_jobs_while_listen_is_deaf(
    start_hotel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No notification reaches the laundry: the poll interval bounds pickup."""
    real_dispatch = notifier.Notifier._dispatch

    def deaf(self: notifier.Notifier, channel: str, payload: str) -> None:
        if channel != notifier.JOBS:
            real_dispatch(self, channel, payload)

    monkeypatch.setattr(notifier.Notifier, "_dispatch", deaf)
    _, base = await start_hotel(poll_interval_seconds=0.3)
    async with httpx.AsyncClient(base_url=base) as client:
        tickets = [await create(client, args={"suits": 1}) for _ in range(5)]
    for ticket in tickets:
        with trio.fail_after(3):
            seen = await watch(base, ticket["id"], ticket["token"])
        assert_one_stream(seen.events, "completed")


async def test_all_connections_killed_mid_run(start_hotel: Any, query: Any) -> None:
    _, base = await start_hotel(laundry_step_seconds=0.05, heartbeat_seconds=0.2)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        tickets = [await create(client, args={"suits": 20}) for _ in range(30)]
    results = [Watch() for _ in tickets]
    async with trio.open_nursery() as nursery:
        for ticket, result in zip(tickets, results, strict=True):
            nursery.start_soon(watch_into, base, ticket, result)
        await trio.sleep(0.3)
        killed = query(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert killed[0][0] >= 2  # the pool's connections and the LISTEN one
    for result in results:
        assert_one_stream(result.events, "completed")
    assert query("SELECT count(*) FROM service_records WHERE outcome = 'completed'") == [(30,)]
    assert query("SELECT count(*) FROM jobs WHERE state = 'executing'") == [(0,)]


async def test_long_job_on_a_live_node_is_never_rescued(start_hotel: Any, query: Any) -> None:
    """A job runs ten times the stale threshold while its node heartbeats."""
    _, base = await start_hotel(
        node_stale_seconds=0.3, heartbeat_seconds=0.05, laundry_step_seconds=0.3
    )
    async with httpx.AsyncClient(base_url=base) as client:
        ticket = await create(client, args={"suits": 10})
        seen = await watch(base, ticket["id"], ticket["token"])
    assert_one_stream(seen.events, "completed")
    assert query("SELECT attempt FROM jobs") == [(1,)]
    assert query("SELECT attempts FROM service_records") == [(1,)]


async def test_safe_outage(nursery: trio.Nursery, start_hotel: Any, database_url: str) -> None:
    """Cut the safe off mid-run: 503 on intake, live progress goes on, endings land later."""
    proxy = CuttableProxy("127.0.0.1", 5432)
    port = await nursery.start(proxy.run)
    via_proxy = psycopg.conninfo.make_conninfo(database_url, host="127.0.0.1", port=port)
    the_hotel, base = await start_hotel(
        database_url=via_proxy, laundry_step_seconds=0.1, query_timeout_seconds=1,
        connect_timeout_seconds=1, heartbeat_seconds=0.2, safe_retry_max_seconds=0.2,
    )  # fmt: skip

    def count(sql: str) -> int:
        with psycopg.connect(database_url, autocommit=True) as conn:
            return int(conn.execute(sql).fetchone()[0])  # type: ignore[arg-type,index]

    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        ticket = await create(client, args={"suits": 20})
        seen = Watch()
        async with trio.open_nursery() as inner:
            inner.start_soon(watch_into, base, ticket, seen)
            await until(lambda: any(e.get("done", 0) >= 2 for e in seen.events))
            proxy.cut()
            during = len(seen.events)
            refused = await client.post(
                "/tickets", json={"service": "laundry", "args": {"suits": 1}, "guest": "g"}
            )
            assert refused.status_code == 503
            assert refused.headers["content-type"] == "application/problem+json"
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            await trio.sleep(0.5)
            assert len(seen.events) > during  # progress kept streaming from memory
            assert seen.close_code is None
            await trio.sleep(1.5)  # the job finishes while the safe is away
            proxy.restore()
        assert_one_stream(seen.events, "completed")
    assert count("SELECT count(*) FROM tickets") == 1  # the refused POST left nothing
    assert count("SELECT count(*) FROM jobs WHERE state = 'executing'") == 0
    assert count("SELECT count(*) FROM service_records") == 1
    assert the_hotel.lines.ticket_ids() == []


async def test_idempotency_key_50_concurrent_posts(start_hotel: Any, query: Any) -> None:
    _, base = await start_hotel(laundry_step_seconds=0.2)
    body = {"service": "laundry", "args": {"suits": 2}, "guest": "room-9"}
    headers = {"Idempotency-Key": "order-7f3a9c"}
    answers: list[httpx.Response] = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def post() -> None:
            answers.append(await client.post("/tickets", json=body, headers=headers))

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(post)
        other = await client.post("/tickets", json=dict(body, args={"suits": 3}), headers=headers)
        statuses = sorted(answer.status_code for answer in answers)
        ids = {answer.json()["id"] for answer in answers}
        tokens = [answer.json().get("token") for answer in answers]
        # Every token handed out works (up to replay_tokens_max of them).
        for token in filter(None, tokens):
            read = await client.get(f"/tickets/{ids.pop() if len(ids) > 1 else next(iter(ids))}",
                                    headers=bearer(token))  # fmt: skip
            assert read.status_code == 200
    assert statuses == [200] * 49 + [201]
    assert len(ids) == 1
    assert len([t for t in tokens if t]) == 16  # the first, and 15 replays
    assert other.status_code == 422
    assert query("SELECT count(*) FROM tickets") == [(1,)]
    assert query("SELECT count(*) FROM jobs") == [(1,)]


async def test_poison_job_is_discarded_and_others_complete(start_hotel: Any, query: Any) -> None:
    catalogue = services.Catalogue(laundry.make(0.01, 450))

    @catalogue.service("poison", args=schemas.Object({}), max_attempts=3)
    async def poison(ctx: services.Context) -> None:
        raise RuntimeError(f"bad batch, attempt {ctx.attempt}")

    _, base = await start_hotel(catalogue=catalogue)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        bad = await create(client, service="poison", args={})
        good = [await create(client, args={"suits": 2}) for _ in range(100)]
    await until(lambda: query(UNFINISHED) == [(0,)])
    [(state, errors)] = query("SELECT state, errors FROM jobs WHERE ticket_id = %s", bad["id"])
    assert state == "discarded"
    assert [e["error"] for e in errors] == [
        f"RuntimeError: bad batch, attempt {n}" for n in (1, 2, 3)
    ]
    assert query("SELECT outcome, count(*) FROM service_records GROUP BY 1 ORDER BY 1") == [
        ("completed", 100), ("failed", 1),
    ]  # fmt: skip
    assert len(good) == 100


async def test_cancel_reaches_an_attempt_on_another_node(start_hotel: Any, query: Any) -> None:
    """DELETE on node B stops the attempt running on node A within the deadline."""
    stopped = trio.Event()
    catalogue = services.Catalogue()

    @catalogue.service("busy", args=schemas.Object({}), total=lambda args: 1000)
    async def busy(ctx: services.Context) -> None:
        try:
            for step in range(1000):
                sum(range(2000))  # a tight loop that yields often enough
                await trio.lowlevel.checkpoint()
                if step % 50 == 0:
                    await ctx.progress(step, 1000)
            await trio.sleep_forever()
        finally:
            stopped.set()

    node_a, base_a = await start_hotel(catalogue=catalogue, node_name="node-a")
    async with httpx.AsyncClient(base_url=base_a) as client:
        ticket = await create(client, service="busy", args={})
    seen = Watch()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_into, base_a, ticket, seen)
        await until(lambda: query("SELECT state FROM jobs") == [("executing",)])
        # Node B starts only now, so the job is surely A's.
        _, base_b = await start_hotel(catalogue=catalogue, node_name="node-b")
        async with httpx.AsyncClient(base_url=base_b) as client:
            answer = await client.delete(
                f"/tickets/{ticket['id']}", headers=bearer(ticket["token"])
            )
            again = await client.delete(f"/tickets/{ticket['id']}", headers=bearer(ticket["token"]))
        with trio.fail_after(node_a.settings.cancel_deadline_seconds):
            await stopped.wait()
    assert (answer.status_code, again.status_code) == (202, 409)
    assert_one_stream(seen.events, "cancelled")
    assert query("SELECT state FROM jobs") == [("cancelled",)]
    [(outcome, done)] = query("SELECT outcome, done FROM service_records")
    assert outcome == "cancelled"
    assert json.dumps(done)
