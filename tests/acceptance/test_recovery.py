"""Nothing is lost: real server processes killed, frozen and stopped mid-run."""

from __future__ import annotations

import random
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from grandhotel import chaos
from helpers import Watch, bearer, create, watch
from servers import ServerProcess

FAST = {
    "GRANDHOTEL_LAUNDRY_STEP_SECONDS": 0.03,
    "GRANDHOTEL_CHECKPOINT_INTERVAL_SECONDS": 0.1,
    "GRANDHOTEL_POLL_INTERVAL_SECONDS": 0.2,
    "GRANDHOTEL_HEARTBEAT_SECONDS": 0.2,
    "GRANDHOTEL_RETRY_BASE_SECONDS": 0.01,
    "GRANDHOTEL_SHUTDOWN_GRACE_SECONDS": 1,
}
UNFINISHED = "SELECT count(*) FROM tickets WHERE status IN ('queued', 'in_progress', 'retrying')"


async def until(predicate: Any, timeout: float = 60, every: float = 0.1) -> None:
    """Poll ``predicate`` (a blocking check against the safe) until it holds."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(every)


async def create_many(base: str, count: int, suits: int) -> list[dict[str, Any]]:
    """POST ``count`` tickets, 20 at a time."""
    created: list[dict[str, Any]] = []
    limiter = trio.CapacityLimiter(20)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def one() -> None:
            async with limiter:
                created.append(await create(client, args={"suits": suits}))

        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
    return created


def assert_every_ticket_completed_once(query: Any, count: int) -> None:
    assert query("SELECT count(*) FROM tickets WHERE status = 'completed'") == [(count,)]
    assert query("SELECT count(*), count(DISTINCT ticket_id) FROM service_records") == [
        (count, count)
    ]
    assert query("SELECT count(*) FROM jobs WHERE state <> 'completed'") == [(0,)]


@pytest.mark.slow
async def test_sigkill_loop_loses_nothing(database_url: str, query: Any, tmp_path: Path) -> None:
    """300 tickets in flight; SIGKILL the server at random moments, three times."""
    server = ServerProcess(database_url, "kill-loop", tmp_path, env=FAST)
    rng = random.Random(20261203)
    kills = 0
    try:
        base = await server.start()
        await create_many(base, 300, suits=20)
        for _ in range(3):
            await trio.sleep(rng.uniform(0.05, 0.5))
            await server.kill()
            kills += 1
            await server.start()
        await until(lambda: query(UNFINISHED) == [(0,)])
    finally:
        await server.close()
    assert_every_ticket_completed_once(query, 300)
    [(most_attempts,)] = query("SELECT max(attempt) FROM jobs")
    assert most_attempts <= 1 + kills
    # Killed attempts resumed from their checkpoints rather than starting over.
    [(resumed,)] = query(
        "SELECT count(*) FROM service_records WHERE (result->>'resumed_after')::int > 0"
    )
    assert resumed > 0


@pytest.mark.parametrize(
    ("point", "attempts"),
    [("after_claim", 2), ("before_complete", 2), ("after_complete", 1)],
)
async def test_crash_points_end_with_exactly_one_record(
    database_url: str, query: Any, tmp_path: Path, point: str, attempts: int
) -> None:
    server = ServerProcess(database_url, f"crash-{point}", tmp_path, env=FAST)
    try:
        base = await server.start(GRANDHOTEL_CHAOS_EXIT_AT=point)
        [ticket] = await create_many(base, 1, suits=3)
        assert await server.wait() == chaos.EXIT_CODE
        base = await server.start()
        await until(lambda: query(UNFINISHED) == [(0,)], timeout=30)
        async with httpx.AsyncClient(base_url=base) as client:
            final = await client.get(f"/tickets/{ticket['id']}", headers=bearer(ticket["token"]))
    finally:
        await server.close()
    assert final.json()["status"] == "completed"
    assert_every_ticket_completed_once(query, 1)
    assert query("SELECT attempt FROM jobs") == [(attempts,)]
    assert query("SELECT attempts FROM service_records") == [(attempts,)]


async def test_frozen_node_is_rescued_once_and_its_late_write_changes_nothing(
    database_url: str, query: Any, tmp_path: Path
) -> None:
    env = dict(FAST, GRANDHOTEL_NODE_STALE_SECONDS=1, GRANDHOTEL_LAUNDRY_STEP_SECONDS=0.1)
    frozen = ServerProcess(database_url, "frozen", tmp_path, env=env)
    rescuer = ServerProcess(database_url, "rescuer", tmp_path, env=env)
    try:
        await frozen.start()
        [ticket] = await create_many(frozen.base_url, 1, suits=30)
        await until(lambda: query("SELECT node, state FROM jobs") == [("frozen", "executing")])
        await trio.sleep(0.5)  # a few suits done and checkpointed
        await rescuer.start()
        frozen.send(signal.SIGSTOP)
        await until(lambda: query("SELECT node, attempt FROM jobs") == [("rescuer", 2)], 20)
        frozen.send(signal.SIGCONT)
        await until(lambda: query(UNFINISHED) == [(0,)], timeout=30)
        # The frozen node's attempt runs to its end, and its completion is fenced off.
        await until(lambda: "is stale: its completion changed nothing" in frozen.log_text(), 30)
    finally:
        await frozen.close()
        await rescuer.close()
    assert_every_ticket_completed_once(query, 1)
    assert query("SELECT attempts FROM service_records") == [(2,)]
    [(result,)] = query("SELECT result FROM service_records")
    assert result["resumed_after"] > 0
    assert ticket["id"]


async def test_sigterm_drains_releases_and_restart_completes(
    database_url: str, query: Any, tmp_path: Path
) -> None:
    # The grace bounds both the release and the watchers' close frames; 2 s is
    # short of the jobs' 5 s, and leaves a loaded 2-core machine room for both.
    env = dict(FAST, GRANDHOTEL_LAUNDRY_STEP_SECONDS=0.1, GRANDHOTEL_SHUTDOWN_GRACE_SECONDS=2.0)
    server = ServerProcess(database_url, "drainer", tmp_path, env=env)
    try:
        base = await server.start()
        tickets = await create_many(base, 20, suits=50)
        await until(lambda: query("SELECT count(*) FROM jobs WHERE state = 'executing'") == [(20,)])
        seen = Watch()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch, base, tickets[0], seen)
            await seen.opened.wait()
            server.send(signal.SIGTERM)
            assert await server.wait() == 0
        assert seen.close_code == 1001
        assert query("SELECT count(*) FROM jobs WHERE state = 'executing'") == [(0,)]
        assert query("SELECT count(*) FROM nodes WHERE name = 'drainer'") == [(0,)]
        [(attempts,)] = query("SELECT max(attempt) FROM jobs")
        assert "released 20 running job(s)" in server.log_text()  # none finished in the grace
        await server.start()
        await until(lambda: query(UNFINISHED) == [(0,)], timeout=30)
    finally:
        await server.close()
    assert_every_ticket_completed_once(query, 20)
    # A release is not held against the job: it still had all its attempts.
    assert query("SELECT count(*) FROM jobs WHERE max_attempts = 6") == [(20,)]
    assert attempts == 1


async def _watch(base: str, ticket: dict[str, Any], result: Watch) -> None:
    await watch(base, ticket["id"], ticket["token"], result=result)
