"""The desk handles at most ``intake_concurrency`` new tickets at once; the rest wait."""

from __future__ import annotations

import gc
from typing import Any

import httpx
import trio

from helpers import bearer, create


async def test_a_crowd_of_posts_is_handled_a_few_at_a_time_and_all_are_written(
    start_hotel: Any,
) -> None:
    the_hotel, base = await start_hotel(intake_concurrency=2)
    real_insert = the_hotel.intake.insert
    inside = 0
    most_inside = 0
    waiting_seen = 0

    async def insert(new: Any) -> bool:
        nonlocal inside, most_inside, waiting_seen
        inside += 1
        most_inside = max(most_inside, inside)
        waiting_seen = max(waiting_seen, the_hotel.intake_gate.statistics().tasks_waiting)
        try:
            await trio.sleep(0.05)  # a slow safe: the crowd piles up at the desk
            return bool(await real_insert(new))
        finally:
            inside -= 1

    the_hotel.intake.insert = insert
    created: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=40)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def one() -> None:
            created.append(await create(client, args={"suits": 1}))

        async with trio.open_nursery() as nursery:
            for _ in range(30):
                nursery.start_soon(one)
        stats = (await client.get("/stats", headers=bearer("operator-secret-for-tests"))).json()

    assert len({ticket["id"] for ticket in created}) == 30
    assert most_inside == 2  # never more than the gate lets in, and the gate was full
    assert waiting_seen > 0  # the others waited their turn
    assert stats["intake_waiting"] == 0
    assert stats["gc"]["thresholds"] == list(gc.get_threshold())
