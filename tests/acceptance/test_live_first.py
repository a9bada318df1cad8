"""Live first: the desk paces new tickets while watched frames are late (pace.py).

A real server, a real safe, real WebSockets. The loop is made late for real: a
service that blocks it (``time.sleep``) between its reports.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import trio

from grandhotel import schemas, services
from grandhotel.services import laundry
from helpers import Watch, assert_one_stream, bearer, create, watch

OPERATOR = bearer("operator-secret-for-tests")


def hog_catalogue(steps: int) -> services.Catalogue:
    """The laundry, plus ``hog``: each step holds the loop for 30 ms."""
    catalogue = services.Catalogue(laundry.make(0.01, 450))

    @catalogue.service("hog", args=schemas.Object({}), total=lambda args: steps)
    async def hog(ctx: services.Context) -> None:
        for step in range(1, steps + 1):
            time.sleep(0.03)  # on purpose: a long batch, as under load
            await ctx.progress(step, steps, "hogging")
            await trio.sleep(0.01)

    return catalogue


async def pace_after_a_hog(start_hotel: Any, query: Any, *, watched: bool) -> dict[str, Any]:
    the_hotel, base = await start_hotel(
        catalogue=hog_catalogue(60), live_lag_target_ms=5.0, pace_min_rate=5.0,
        pace_cooldown_seconds=0.2,
    )  # fmt: skip
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        hog = await create(client, service="hog", args={})
        seen = Watch()
        async with trio.open_nursery() as nursery:
            if watched:
                nursery.start_soon(
                    lambda: watch(base, hog["id"], hog["token"], result=seen)
                )  # fmt: skip
                await seen.opened.wait()
            await trio.sleep(1.0)  # the hog holds the loop, tick after tick
            during = (await client.get("/stats", headers=OPERATOR)).json()
            made = []

            async def one() -> None:
                made.append(await create(client, args={"suits": 1}))

            async with trio.open_nursery() as posts:
                for _ in range(10):
                    posts.start_soon(one)
    assert len(made) == 10  # paced, never refused within intake_wait_seconds
    assert query("SELECT count(*) FROM tickets") == [(11,)]
    if watched:
        assert_one_stream(seen.events, "completed")
    assert the_hotel.sessions == 0  # every session that ended was counted out
    assert during["watchers"] == (1 if watched else 0)
    assert during["door_pace"]["admitted"] >= 1  # connections went through the door's turns
    return during


async def test_a_late_loop_with_guests_watching_paces_the_desk(
    start_hotel: Any, query: Any
) -> None:
    stats = await pace_after_a_hog(start_hotel, query, watched=True)
    during = stats["intake_pace"]
    assert during["late_ticks"] > 0
    assert during["cuts"] >= 1
    assert stats["door_pace"]["cuts"] >= 1  # the door is paced the same way
    # (The rate itself may read open again: with nothing admitted, the first
    # on-time tick finds that the pace holds nobody back.)


async def test_a_late_loop_with_nobody_watching_leaves_the_desk_open(
    start_hotel: Any, query: Any
) -> None:
    stats = await pace_after_a_hog(start_hotel, query, watched=False)
    assert stats["intake_pace"]["cuts"] == 0
    assert stats["intake_pace"]["rate_per_second"] is None
    assert stats["door_pace"]["cuts"] == 0


async def test_a_ticket_that_waits_too_long_for_its_turn_gets_a_503_and_is_not_written(
    start_hotel: Any, query: Any
) -> None:
    # The policy off (target 0) and the pace set by hand: one ticket every 2 s.
    the_hotel, base = await start_hotel(live_lag_target_ms=0.0, intake_wait_seconds=0.3)
    the_hotel.turns.pace.rate = 0.5
    answers: list[httpx.Response] = []
    body = {"service": "laundry", "args": {"suits": 1}, "guest": "room-412"}
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def one() -> None:
            answers.append(await client.post("/tickets", json=body))

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one)
        stats = (await client.get("/stats", headers=OPERATOR)).json()
    created = [a for a in answers if a.status_code == 201]
    refused = [a for a in answers if a.status_code == 503]
    assert len(created) == 1  # the first went in; the next turn was 2 s away
    assert len(refused) == 3
    for answer in refused:
        assert 1 <= int(answer.headers["Retry-After"]) <= 30  # the line ahead at 0.5/s
        assert answer.headers["Content-Type"].startswith("application/problem+json")
        assert "wait their turn" in answer.json()["detail"]
    assert query("SELECT count(*) FROM tickets") == [(1,)]
    assert query("SELECT count(*) FROM jobs") == [(1,)]
    assert stats["intake_waiting"] == 0
    assert len(the_hotel.lines) <= 1
