"""``peer``: grandhotel beside Celery + Redis with polling, same tickets and steps.

grandhotel side: the ``watch`` run (N tickets, S steps at I seconds, a WebSocket
watcher each) against a server started here.

Celery side (``bench/celery_peer.py``): a worker started here
(``celery worker --pool threads --concurrency N``, so that all N tasks run at
once as grandhotel's do) on the Redis at ``--redis-url``; the client submits N
tasks and polls each result every ``--poll-interval`` seconds (100 ms), as a
web page or a mobile app behind a REST endpoint would. The task reports each
step with ``update_state``; its ``meta["at"]`` is the report's wall clock.

Measured on each side: progress latency (report to receipt), pickup latency,
and server-side CPU per reported step: grandhotel server + its PostgreSQL
backends (and PostgreSQL's background processes), against Celery worker (with
its children) + redis-server, from just before the first ticket to the last
ending. Targets: Celery's p50 latency >= 10x grandhotel's, at no more CPU per
event. Redis is shared with whatever else uses it (a database index of its
own, ``/15``, keeps the keys apart); its CPU is the whole redis-server's.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from bench import driver, report, server, watch

EVENT_KEYS = (
    "finished", "lost_gaps", "duplicated", "out_of_order", "missing_terminal", "steps_unseen",
    "progress_received",
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The peer scenario's options."""
    parser.add_argument("--tickets", type=int, default=200, help="tickets on each side")
    parser.add_argument("--steps", type=int, default=10, help="steps per ticket")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between steps")
    parser.add_argument(
        "--poll-interval", type=float, default=0.1, help="Celery client's polling interval"
    )
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/15", help="Celery broker and backend"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="HTTP connections")
    parser.add_argument(
        "--pool-size", type=int, default=20, help="the server's GRANDHOTEL_POOL_SIZE"
    )
    parser.add_argument("--skip-grandhotel", action="store_true", help="run the Celery side only")
    parser.add_argument("--skip-celery", action="store_true", help="run grandhotel only")
    driver.add_target_arguments(parser)


@dataclasses.dataclass
class PeerRun:
    """What the Celery side measured."""

    latencies: list[float] = dataclasses.field(default_factory=list)
    pickup_ms: list[float] = dataclasses.field(default_factory=list)
    succeeded: int = 0
    failed: int = 0
    unfinished: int = 0
    steps_seen: int = 0
    steps_skipped: int = 0
    """Steps a poll never showed (two reports between polls)."""
    polls: int = 0
    seconds: float = 0.0
    worker_cpu: float = 0.0
    redis_cpu: float = 0.0
    driver_cpu: float = 0.0
    machine_busy: float = 0.0
    submit_seconds: float = 0.0


def _worker_env(redis_url: str, queue: str) -> dict[str, str]:
    env = dict(os.environ)
    env["BENCH_PEER_REDIS_URL"] = redis_url
    env["BENCH_PEER_QUEUE"] = queue
    env["PYTHONPATH"] = os.pathsep.join(
        [str(server.REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    return env


async def _start_worker(options: argparse.Namespace, queue: str, log: Path) -> trio.Process:
    command = [
        sys.executable, "-m", "celery", "-A", "bench.celery_peer", "worker",
        "--pool", "threads", "--concurrency", str(max(1, options.tickets)),
        "--queues", queue, "--loglevel", "INFO",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "--hostname", f"bench-{queue}@%h",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = await trio.lowlevel.open_process(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_worker_env(options.redis_url, queue),
            cwd=server.REPO_ROOT,
        )
    with trio.fail_after(60):
        while "ready." not in _text(log):
            if process.poll() is not None:
                raise RuntimeError(f"the Celery worker exited:\n{_text(log)[-3000:]}")
            await trio.sleep(0.1)
    return process


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


async def _stop_worker(process: trio.Process) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(15):
            await process.wait()
            return
        process.kill()
        await process.wait()


def _redis_pid(redis_url: str) -> int | None:
    import redis

    try:
        info = redis.Redis.from_url(redis_url, socket_timeout=5).info("server")
    except redis.RedisError:
        return None
    pid = info.get("process_id")
    return int(pid) if pid else None


def _client(options: argparse.Namespace, queue: str, tally: driver.Tally) -> PeerRun:
    """Submit the tasks, then poll every result until each has ended (in a thread)."""
    os.environ["BENCH_PEER_REDIS_URL"] = options.redis_url
    os.environ["BENCH_PEER_QUEUE"] = queue
    from bench import celery_peer

    result = PeerRun()
    backend = celery_peer.app.backend
    submitted: dict[str, float] = {}
    # Each client polls on its own clock, every poll_interval from a random phase
    # (a browser's first poll follows its own round trips, not the worker's steps).
    phase = random.Random(0)
    schedule: list[tuple[float, str]] = []
    started = time.monotonic()
    for _ in range(options.tickets):
        sent, sent_clock = time.time(), time.monotonic()
        async_result = celery_peer.laundry.apply_async(
            args=(options.steps, options.interval), queue=queue
        )
        submitted[async_result.id] = sent
        first = sent_clock + phase.uniform(0.0, options.poll_interval)
        schedule.append((first, async_result.id))
        tally.created += 1
    result.submit_seconds = time.monotonic() - started
    last_done = dict.fromkeys(submitted, 0)
    pending = set(submitted)
    heapq.heapify(schedule)
    deadline = time.monotonic() + 60 + 3 * options.steps * options.interval
    while schedule and time.monotonic() < deadline:
        due, task_id = heapq.heappop(schedule)
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        meta = backend.get_task_meta(task_id)
        received = time.time()
        result.polls += 1
        status, info = meta.get("status"), meta.get("result")
        if status == "PROGRESS" and isinstance(info, dict):
            _seen(result, tally, task_id, int(info["done"]), info, received, last_done, submitted)
        elif status == "SUCCESS":
            # The last step's PROGRESS is overwritten by SUCCESS a moment later:
            # the ending is how a poller learns of the last step.
            if isinstance(info, dict):
                _seen(result, tally, task_id, options.steps, info, received, last_done, submitted)
            result.succeeded += 1
            tally.finished += 1
            pending.discard(task_id)
            continue
        elif status in ("FAILURE", "REVOKED"):
            result.failed += 1
            tally.finished += 1
            pending.discard(task_id)
            continue
        next_due = due + options.poll_interval
        while next_due < time.monotonic():
            next_due += options.poll_interval  # a poll that could not happen in time
        heapq.heappush(schedule, (next_due, task_id))
    result.unfinished = len(pending)
    result.seconds = time.monotonic() - started
    return result


def _seen(
    result: PeerRun,
    tally: driver.Tally,
    task_id: str,
    done: int,
    info: dict[str, Any],
    received: float,
    last_done: dict[str, int],
    submitted: dict[str, float],
) -> None:
    """A poll showed step ``done`` of a task: record what is new."""
    if done <= last_done[task_id]:
        return
    if last_done[task_id] == 0:
        result.pickup_ms.append((float(info["started_at"]) - submitted[task_id]) * 1000.0)
    result.steps_skipped += done - last_done[task_id] - 1
    result.steps_seen += 1
    result.latencies.append((received - float(info["at"])) * 1000.0)
    tally.frames += 1
    tally.progress += 1
    last_done[task_id] = done


async def celery_side(options: argparse.Namespace) -> PeerRun:
    """Start a worker, run the tasks, measure."""
    queue = f"bench-peer-{secrets.token_hex(4)}"
    log = options.out / f"peer-celery-{queue}.log"
    options.out.mkdir(parents=True, exist_ok=True)
    redis_pid = _redis_pid(options.redis_url)
    if redis_pid is None:
        raise RuntimeError(f"Redis does not answer at {options.redis_url}")
    worker = await _start_worker(options, queue, log)
    tally = driver.Tally(wanted=options.tickets)
    try:
        await trio.sleep(0.5)
        worker0 = server.tree_cpu_seconds(worker.pid)
        redis0 = server.proc_cpu_seconds(redis_pid)
        driver0 = driver.driver_cpu_seconds()
        machine0 = server.machine_busy_seconds()
        box: dict[str, PeerRun] = {}

        async def body() -> None:
            box["run"] = await trio.to_thread.run_sync(_client, options, queue, tally)

        await driver.with_status(body, tally, None, "peer celery ")
        run = box["run"]
        run.worker_cpu = server.tree_cpu_seconds(worker.pid) - worker0
        run.redis_cpu = server.proc_cpu_seconds(redis_pid) - redis0
        run.driver_cpu = driver.driver_cpu_seconds() - driver0
        run.machine_busy = server.machine_busy_seconds() - machine0
    finally:
        with trio.CancelScope(shield=True):
            await _stop_worker(worker)
    return run


def _per_1000(cpu: float | None, events: int) -> float | None:
    if cpu is None or not events:
        return None
    return round(1000 * cpu / events, 4)


async def run(options: argparse.Namespace) -> report.Result:
    """The peer scenario."""
    reports = options.tickets * options.steps
    metrics: dict[str, Any] = {"reported_steps_per_side": reports}
    failures: list[str] = []
    latencies: dict[str, list[float]] = {}
    g_cpu: float | None = None
    g_p50: float | None = None
    series: dict[str, list[float]] = {}
    if not options.skip_grandhotel:
        options.probe = 0
        token = secrets.token_urlsafe(16)
        async with server.target_for(options, watch.server_env(options, token)) as target:
            the_run = await watch.drive(
                target,
                tickets=options.tickets,
                steps=options.steps,
                concurrency=options.concurrency,
                http_client=options.http_client,
                limit_seconds=watch.default_timeout(
                    options.tickets, options.steps, options.interval
                ),
                label="peer grandhotel ",
            )
        g = watch.summarise(
            the_run, tickets=options.tickets, steps=options.steps, interval=options.interval
        )
        failures += watch.failures(the_run, g, tickets=options.tickets)
        if the_run.server_cpu_seconds is not None:
            g_cpu = the_run.server_cpu_seconds + (the_run.postgres_cpu_seconds or 0.0)
        g_p50 = g["progress_latency_ms"]["p50"]
        metrics["grandhotel"] = {
            "progress_latency_ms": g["progress_latency_ms"],
            "progress_latency_at_read_ms": g["progress_latency_at_read_ms"],
            "pickup_latency_ms": g["pickup_latency_ms"],
            "server_cpu_seconds": g["server"]["cpu_seconds"],
            "postgres_cpu_seconds": g["postgres_cpu_seconds"],
            "server_side_cpu_ms_per_reported_step": _per_1000(g_cpu, reports),
            "events": {k: g["events"][k] for k in EVENT_KEYS},
            "driver_cpu_seconds": g["driver_cpu_seconds"],
            "machine": g["machine"],
            "seconds": g["seconds"],
        }
        latencies["grandhotel (WebSocket push)"] = the_run.latencies
        series = the_run.sampler.series()
    c_cpu: float | None = None
    c_p50: float | None = None
    if not options.skip_celery:
        peer = await celery_side(options)
        c_cpu = peer.worker_cpu + peer.redis_cpu
        c_summary = report.summary(peer.latencies)
        c_p50 = c_summary["p50"]
        seconds = max(peer.seconds, 1e-9)
        metrics["celery"] = {
            "progress_latency_ms": c_summary,
            "pickup_latency_ms": report.summary(peer.pickup_ms),
            "worker_cpu_seconds": round(peer.worker_cpu, 2),
            "redis_cpu_seconds": round(peer.redis_cpu, 2),
            "server_side_cpu_ms_per_reported_step": _per_1000(c_cpu, reports),
            "succeeded": peer.succeeded,
            "failed": peer.failed,
            "unfinished": peer.unfinished,
            "steps_seen_by_polling": peer.steps_seen,
            "steps_never_seen_by_polling": peer.steps_skipped,
            "polls": peer.polls,
            "submit_seconds": round(peer.submit_seconds, 2),
            "driver_cpu_seconds": round(peer.driver_cpu, 2),
            "machine_busy_cores": round(peer.machine_busy / seconds, 2),
            "seconds": round(peer.seconds, 2),
        }
        latencies[f"Celery + polling every {options.poll_interval * 1000:g} ms"] = peer.latencies
        if peer.unfinished or peer.failed:
            failures.append(f"Celery: {peer.unfinished} unfinished, {peer.failed} failed")
    latency_ratio = report.ratio(c_p50, g_p50)
    cpu_ratio = report.ratio(g_cpu, c_cpu)
    metrics["p50_latency_ratio_celery_over_grandhotel"] = latency_ratio
    metrics["cpu_per_event_ratio_grandhotel_over_celery"] = cpu_ratio
    return report.Result(
        scenario="peer",
        parameters={
            "tickets": options.tickets,
            "steps": options.steps,
            "interval_seconds": options.interval,
            "poll_interval_seconds": options.poll_interval,
            "celery_pool": f"threads x {options.tickets}",
            "redis_url": options.redis_url,
            "url": options.url or "(started here)",
        },
        metrics=metrics,
        targets=[
            report.Target(
                "p50 progress latency Celery / grandhotel",
                latency_ratio,
                10.0,
                "x",
                higher_is_better=True,
            ),
            report.Target("server-side CPU per event grandhotel / Celery", cpu_ratio, 1.0, "x"),
        ],
        failures=failures,
        series=series,
        latencies_ms=latencies,
        postgres_url=options.admin_url,
    )
