"""The seed's workflow end to end: a real hotel, real HTTP and WebSocket clients."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from grandhotel import schemas, services, tickets
from grandhotel.services import laundry
from helpers import Watch, assert_gap_free, assert_one_stream, bearer, create, watch, ws_url


async def test_one_ticket_from_request_to_record(start_hotel: Any, query: Any) -> None:
    """Steps 1-10 of the seed for one ticket, then the safe is checked."""
    the_hotel, base = await start_hotel(laundry_step_seconds=0.05)
    async with httpx.AsyncClient(base_url=base) as client:
        ticket = await create(client, args={"suits": 5})
        assert ticket["status"] == "queued"
        assert ticket["progress"] == {"done": 0, "total": 5, "percent": 0}
        assert ticket["butler"] in tickets.BUTLER_NAMES
        assert ticket["seq"] == 1
        assert len(ticket["token"]) >= 43  # 256 bits, URL-safe base64
        seen = await watch(base, ticket["id"], ticket["token"])
        final = await client.get(f"/tickets/{ticket['id']}", headers=bearer(ticket["token"]))

    assert_one_stream(seen.events, "completed")
    assert seen.close_code == 1000
    dones = [e["done"] for e in seen.events if e["type"] == "progress"]
    assert dones == [d for d in range(1, 6) if d > seen.events[0]["done"]]
    assert seen.events[-1]["percent"] == 100
    assert seen.events[-1]["record"]["amount_cents"] == 5 * 450
    body = final.json()
    assert body["status"] == "completed"
    assert body["record"]["outcome"] == "completed"
    assert body["record"]["attempts"] == 1
    assert body["record"]["duration_ms"] >= 0

    tid = ticket["id"]
    assert query("SELECT status, done, total FROM tickets WHERE id = %s", tid) == [
        ("completed", 5, 5)
    ]
    assert query("SELECT state, attempt FROM jobs WHERE ticket_id = %s", tid) == [("completed", 1)]
    statuses = query("SELECT status FROM ticket_events WHERE ticket_id = %s ORDER BY id", tid)
    assert [s for (s,) in statuses] == ["queued", "in_progress", "completed"]
    assert query("SELECT count(*), sum(amount_cents) FROM service_records") == [(1, 2250)]
    [(hashes,)] = query("SELECT token_hashes FROM tickets")
    assert len(hashes) == 1
    assert ticket["token"].encode() not in bytes(hashes[0])  # only a hash is stored
    assert len(the_hotel.lines) == 0  # the butler clocked out


async def test_200_concurrent_tickets_each_watched(start_hotel: Any, query: Any) -> None:
    """Every watcher: snapshot, done 1..N in order, exactly one completed, last."""
    _, base = await start_hotel(laundry_step_seconds=0.02, pool_size=10)
    suits = 4
    watches: list[Watch] = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        created = []
        async with trio.open_nursery() as nursery:
            for _ in range(200):
                created.append(await create(client, args={"suits": suits}))
                result = Watch()
                watches.append(result)
                nursery.start_soon(_watch_into, base, created[-1], result)
    for result in watches:
        assert_one_stream(result.events, "completed")
        assert_gap_free(result.events)
        first_done = result.events[0]["done"]
        dones = [e["done"] for e in result.events if e["type"] == "progress"]
        assert dones == list(range(first_done + 1, suits + 1))
        assert result.close_code == 1000
    assert query("SELECT count(*) FROM service_records") == [(200,)]
    assert query("SELECT count(*) FROM tickets WHERE status = 'completed'") == [(200,)]


async def _watch_into(base: str, ticket: dict[str, Any], result: Watch) -> None:
    await watch(base, ticket["id"], ticket["token"], result=result)


async def test_butler_crash_mid_run_keeps_one_gap_free_stream(
    start_hotel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A butler that raises on the 2nd progress report is replaced; the guest sees no gap."""
    real_advance = tickets.advance
    crashes: list[int] = []

    def flaky_advance(notebook: Any, report: Any, at: str) -> Any:
        if isinstance(report, tickets.Progress) and report.done == 2 and len(crashes) < 1:
            crashes.append(report.done)
            raise RuntimeError("butler tripped on the carpet")
        return real_advance(notebook, report, at)

    monkeypatch.setattr(tickets, "advance", flaky_advance)
    the_hotel, base = await start_hotel(laundry_step_seconds=0.05)
    async with httpx.AsyncClient(base_url=base) as client:
        ticket = await create(client, args={"suits": 4})
        seen = await watch(base, ticket["id"], ticket["token"])
    assert crashes == [2]
    assert the_hotel.supervisor.restarts == 1
    assert_one_stream(seen.events, "completed")
    assert_gap_free(seen.events)
    assert [e["done"] for e in seen.events if e["type"] == "progress"] == [1, 2, 3, 4][
        seen.events[0]["done"] :
    ]


def _failing_catalogue(settings_step: float, failures: list[int]) -> services.Catalogue:
    catalogue = services.Catalogue(laundry.make(settings_step, 450))

    @catalogue.service(
        "ironing", args=schemas.Object({"shirts": schemas.Integer(1, 10)}), max_attempts=3,
        total=lambda args: args["shirts"],
    )  # fmt: skip
    async def ironing(ctx: services.Context) -> None:
        failures.append(ctx.attempt)
        await ctx.progress(1, ctx.args["shirts"], "first shirt")
        raise ValueError(f"the iron overheated on attempt {ctx.attempt}")

    return catalogue


async def test_failing_job_is_retried_with_backoff_then_fails(start_hotel: Any, query: Any) -> None:
    attempts: list[int] = []
    _, base = await start_hotel(catalogue=_failing_catalogue(0.01, attempts))
    async with httpx.AsyncClient(base_url=base) as client:
        ticket = await create(client, service="ironing", args={"shirts": 2})
        seen = await watch(base, ticket["id"], ticket["token"])
    assert attempts == [1, 2, 3]
    assert_one_stream(seen.events, "failed")
    assert "the iron overheated on attempt 3" in seen.events[-1]["reason"]
    retrying = [
        e["attempt"] for e in seen.events if e["type"] == "status" and e["status"] == "retrying"
    ]
    snapshot = seen.events[0]
    # Attempts 1 and 2 failed and were retried; the guest sees those after its snapshot.
    assert retrying == [
        attempt for attempt in (1, 2)
        if attempt > snapshot["attempt"]
        or (attempt == snapshot["attempt"] and snapshot["status"] != "retrying")
    ]  # fmt: skip
    tid = ticket["id"]
    [(state, attempt, errors, scheduled)] = query(
        "SELECT state, attempt, errors, scheduled_at FROM jobs WHERE ticket_id=%s",
        tid,
    )
    assert (state, attempt, len(errors)) == ("discarded", 3, 3)
    assert [e["attempt"] for e in errors] == [1, 2, 3]
    assert scheduled > query("SELECT inserted_at FROM jobs")[0][0]  # backoff moved it on
    assert query("SELECT outcome, attempts FROM service_records") == [("failed", 3)]
    assert query("SELECT status FROM tickets") == [("failed",)]


async def test_late_watcher_gets_snapshot_and_after_resumes_without_repeats(
    start_hotel: Any,
) -> None:
    _, base = await start_hotel(laundry_step_seconds=0.1)
    async with httpx.AsyncClient(base_url=base) as client:
        ticket = await create(client, args={"suits": 6})
        first = Watch()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_until_done, base, ticket, first, 3)
        # The first guest left after done=3; a late one joins from scratch.
        late = await watch(base, ticket["id"], ticket["token"])
        assert late.events[0]["type"] == "snapshot"
        assert late.events[0]["done"] >= 3
        # Resume where the first guest left: only newer events.
        last_seen = first.events[-1]["seq"]
        resumed = await watch(base, ticket["id"], ticket["token"], after=last_seen)
    assert resumed.events[0]["type"] == "snapshot"
    assert all(e["seq"] > last_seen for e in resumed.events[1:])
    assert_one_stream(resumed.events, "completed")


async def _watch_until_done(base: str, ticket: dict[str, Any], result: Watch, done: int) -> None:
    headers = [("Authorization", f"Bearer {ticket['token']}")]
    async with trio_websocket.open_websocket_url(
        ws_url(base, ticket["id"]), extra_headers=headers
    ) as ws:
        while True:
            event = json.loads(await ws.get_message())
            result.events.append(event)
            if event.get("done", 0) >= done:
                return


async def test_wrong_or_missing_token_is_404_on_http_and_websocket(start_hotel: Any) -> None:
    _, base = await start_hotel(laundry_step_seconds=0.2)
    async with httpx.AsyncClient(base_url=base) as client:
        a = await create(client)
        b = await create(client)
        for headers in ({}, bearer(b["token"]), bearer("x" * 43), {"Authorization": "Basic x"}):
            response = await client.get(f"/tickets/{a['id']}", headers=headers)
            assert response.status_code == 404
            assert response.headers["content-type"] == "application/problem+json"
            delete = await client.delete(f"/tickets/{a['id']}", headers=headers)
            assert delete.status_code == 404
        unknown = await client.get(
            "/tickets/00000000-0000-4000-8000-000000000000", headers=bearer(a["token"])
        )
        assert unknown.status_code == 404
        assert unknown.json() == response.json()  # no existence leak in the body
    for token in ("", b["token"], "nope"):
        with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
            await watch(base, a["id"], token)
        assert rejected.value.status_code == 404


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"service": "spa", "args": {}, "guest": "room-1"}, "service must be one of"),
        ({"service": "laundry", "args": {"suits": 0}, "guest": "room-1"}, "at least 1"),
        ({"service": "laundry", "args": {"suits": 101}, "guest": "room-1"}, "at most 100"),
        ({"service": "laundry", "args": {"suits": "5"}, "guest": "room-1"}, "integer"),
        ({"service": "laundry", "args": {"suits": 1, "x": 1}, "guest": "r"}, "unknown field"),
        ({"service": "laundry", "args": {}, "guest": "room-1"}, "required"),
        ({"service": "laundry", "args": {"suits": 1}, "guest": "no spaces"}, "guest"),
        ({"service": "laundry", "args": {"suits": 1}}, "guest"),
    ],
)
async def test_bad_requests_get_422_problem_json(
    start_hotel: Any, query: Any, body: dict[str, Any], detail: str
) -> None:
    _, base = await start_hotel()
    async with httpx.AsyncClient(base_url=base) as client:
        response = await client.post("/tickets", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert detail in problem["detail"]
    assert query("SELECT count(*) FROM tickets") == [(0,)]


async def test_malformed_and_wrong_type_bodies(start_hotel: Any) -> None:
    _, base = await start_hotel(max_body_bytes=1024)
    async with httpx.AsyncClient(base_url=base) as client:
        bad_json = await client.post(
            "/tickets", content=b"{nope", headers={"Content-Type": "application/json"}
        )
        not_json = await client.post("/tickets", content=b"suits=5")
        too_big = await client.post(
            "/tickets", content=b"[" + b"1," * 2000 + b"1]",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
    assert (bad_json.status_code, not_json.status_code, too_big.status_code) == (400, 415, 413)
    for response in (bad_json, not_json, too_big):
        assert response.headers["content-type"] == "application/problem+json"


async def test_live_status_read_costs_zero_queries(start_hotel: Any) -> None:
    # The counter is the pool's: keep the hotel's own timed writes (checkpoints,
    # heartbeats, polling) out of the window, so only the reads could move it.
    the_hotel, base = await start_hotel(
        laundry_step_seconds=0.5, checkpoint_interval_seconds=3600, heartbeat_seconds=3600,
        poll_interval_seconds=3600, node_stale_seconds=7200,
    )  # fmt: skip
    async with httpx.AsyncClient(base_url=base) as client:
        ticket = await create(client, args={"suits": 10})
        await trio.sleep(0.1)
        before = the_hotel.pool.borrowed
        for _ in range(20):
            response = await client.get(f"/tickets/{ticket['id']}", headers=bearer(ticket["token"]))
            assert response.status_code == 200
            assert response.json()["status"] in ("queued", "in_progress")
        after = the_hotel.pool.borrowed
        # ... while a finished ticket's read does query the safe (the counter works).
        assert after == before
        await client.delete(f"/tickets/{ticket['id']}", headers=bearer(ticket["token"]))
        await client.get(f"/tickets/{ticket['id']}", headers=bearer(ticket["token"]))
        assert the_hotel.pool.borrowed > after


async def test_delete_cancels_a_running_ticket(start_hotel: Any, query: Any) -> None:
    stopped = trio.Event()
    catalogue = services.Catalogue()

    @catalogue.service("vigil", args=schemas.Object({}), total=lambda args: 100)
    async def vigil(ctx: services.Context) -> None:
        try:
            for step in range(1, 101):
                await ctx.progress(step, 100, "still watching")
                await trio.sleep(0.05)
        finally:
            stopped.set()

    the_hotel, base = await start_hotel(catalogue=catalogue)
    async with httpx.AsyncClient(base_url=base) as client:
        ticket = await create(client, service="vigil", args={})
        result = Watch()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_into, base, ticket, result)
            while not any(e.get("done", 0) >= 3 for e in result.events):
                await trio.sleep(0.01)
            response = await client.delete(
                f"/tickets/{ticket['id']}", headers=bearer(ticket["token"])
            )
            assert response.status_code == 202
            assert response.json()["status"] == "cancelled"
        again = await client.delete(f"/tickets/{ticket['id']}", headers=bearer(ticket["token"]))
    with trio.fail_after(2):
        await stopped.wait()
    assert again.status_code == 409
    assert_one_stream(result.events, "cancelled")
    assert result.close_code == 1000
    done = result.events[-1]["done"]
    assert 3 <= done < 100
    tid = ticket["id"]
    assert query("SELECT status FROM tickets WHERE id = %s", tid) == [("cancelled",)]
    assert query("SELECT state FROM jobs WHERE ticket_id = %s", tid) == [("cancelled",)]
    assert query("SELECT outcome, done FROM service_records") == [("cancelled", done)]
    assert len(the_hotel.lines) == 0


async def test_guest_cancel_and_ping_over_the_websocket(start_hotel: Any, query: Any) -> None:
    _, base = await start_hotel(laundry_step_seconds=0.2)
    async with httpx.AsyncClient(base_url=base) as client:
        ticket = await create(client, args={"suits": 50})
    seen = await watch(
        base, ticket["id"], ticket["token"], send=[{"type": "ping"}, {"type": "cancel"}]
    )
    assert {"type": "pong"} in seen.events
    assert_one_stream(seen.events, "cancelled")
    assert query("SELECT outcome FROM service_records") == [("cancelled",)]


async def test_history_needs_the_operator_token(start_hotel: Any) -> None:
    _, base = await start_hotel()
    async with httpx.AsyncClient(base_url=base) as client:
        ticket = await create(client, args={"suits": 1}, guest="room-7")
        await watch(base, ticket["id"], ticket["token"])
        refused = await client.get("/guests/room-7/history", headers=bearer(ticket["token"]))
        history = await client.get(
            "/guests/room-7/history", headers=bearer("operator-secret-for-tests")
        )
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert refused.status_code == 401
    assert history.status_code == 200
    [record] = history.json()["records"]
    assert (record["ticket_id"], record["outcome"]) == (ticket["id"], "completed")
    assert (health.status_code, ready.status_code) == (200, 200)


async def test_bench_routes_are_off_by_default_and_answer_like_the_real_ones(
    start_hotel: Any, query: Any
) -> None:
    _, plain = await start_hotel()
    _, bench = await start_hotel(bench_routes=True)
    body = {"service": "laundry", "args": {"suits": 3}, "guest": "room-1"}
    async with httpx.AsyncClient() as client:
        off = await client.post(f"{plain}/_bench/tickets", json=body)
        bare = await client.post(f"{bench}/_bench/tickets", json=body)
        real = await client.post(f"{bench}/tickets", json=body)
    assert off.status_code == 404
    assert bare.status_code == real.status_code == 201
    assert set(bare.json()) == set(real.json())
    assert query("SELECT count(*) FROM tickets") == [(1,)]  # the bare route wrote nothing
    async with trio_websocket.open_websocket_url(
        bench.replace("http", "ws") + "/_bench/live?frames=3"
    ) as ws:
        frames = [json.loads(await ws.get_message()) for _ in range(5)]
    assert [f["type"] for f in frames] == [
        "snapshot",
        "progress",
        "progress",
        "progress",
        "completed",
    ]
