"""``fanout``: server CPU per delivered event, beside a bare hypercorn WebSocket route.

Two sides, each on a server of its own started alike, at the same time:

- bare: ``--connections`` WebSockets to ``/_bench/live?frames=S&interval=I``; the
  route itself sends a snapshot, S progress frames shaped like a butler's, I
  seconds apart, a ``completed`` frame and 1000 (quart-trio + hypercorn only);
- real: ``--connections / --watchers-per-ticket`` laundry tickets of S steps at I
  seconds (``GRANDHOTEL_LAUNDRY_STEP_SECONDS=I``), each watched by
  ``--watchers-per-ticket`` WebSockets: laundry -> butler -> mailbox -> concierge.

Each side's measured window opens once every connection is open and closes at
the first terminal frame, so neither intake nor handshakes are in it: the
server's CPU seconds in the window over the frames the watchers received in it
is the CPU per delivered event. The ratio real/bare says what the butler and
the concierge cost (target <= 1.25). Progress latency (``at`` to receipt) is
reported for both sides.

``--rounds`` (5) pairs of sides; the target is the median of the pairs' ratios.
By default (``--together``) a pair's two sides run at the same time, each on
its own server process (both started with the same settings and bench routes),
and the two servers swap sides every round. Each server's CPU is read from its
own process over its own window, and the two windows overlap for most of their
length (``windows_overlap_share``), so a change in the machine's speed reaches
both alike. One after the other on one server (``--no-together``, and always
with ``--url``), the first pair bare first, the next real first: on this
shared machine a neighbour's load changes the whole machine's speed by up to
20 % over a run, and a single pair's ratio moved between 1.06 and 1.32 within
one run at the same commit (1.17 to 1.26 together).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import secrets
import time
from typing import Any

import trio

from bench import driver, httpclient, report, server


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The fanout scenario's options."""
    parser.add_argument("--connections", type=int, default=1000, help="WebSockets per side")
    parser.add_argument("--steps", type=int, default=100, help="progress frames (max 100)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between frames")
    parser.add_argument(
        "--watchers-per-ticket", type=int, default=1, help="real side: watchers of each ticket"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="HTTP connections (intake)")
    driver.add_pair_arguments(parser)
    driver.add_target_arguments(parser)


@dataclasses.dataclass
class Side:
    """One side's window."""

    name: str
    seconds: float = 0.0
    frames: int = 0
    server_cpu: float | None = None
    server_wakeups: int | None = None
    postgres_cpu: float | None = None
    driver_cpu: float = 0.0
    machine_busy: float = 0.0
    latencies: list[float] = dataclasses.field(default_factory=list)
    checks: dict[str, int] = dataclasses.field(default_factory=dict)
    total_cpu: float | None = None
    """Server CPU over the whole side: connects, frames, closes (and intake)."""
    total_frames: int = 0
    connections: int = 0
    opened_at: float = 0.0
    closed_at: float = 0.0
    overlap_share: float | None = None
    """With ``--together``: the share of the longer window both sides were open."""

    def metrics(self) -> dict[str, Any]:
        """The side's numbers."""
        seconds = self.seconds or 1e-9
        return {
            "window_seconds": round(self.seconds, 2),
            "frames_in_window": self.frames,
            "frames_per_second": driver.rate(self.frames, self.seconds),
            "server_cpu_seconds": None if self.server_cpu is None else round(self.server_cpu, 3),
            "server_cpu_us_per_event": None
            if self.server_cpu is None or not self.frames
            else round(1e6 * self.server_cpu / self.frames, 2),
            "server_wakeups_per_1000_events": None
            if self.server_wakeups is None or not self.frames
            else round(1000 * self.server_wakeups / self.frames, 1),
            "server_cpu_utilisation": None
            if self.server_cpu is None
            else round(self.server_cpu / seconds, 2),
            "postgres_cpu_seconds": None
            if self.postgres_cpu is None
            else round(self.postgres_cpu, 3),
            "driver_cpu_utilisation": round(self.driver_cpu / seconds, 2),
            "machine_busy_cores": round(self.machine_busy / seconds, 2),
            "progress_latency_ms": report.summary(self.latencies),
            "windows_overlap_share": None
            if self.overlap_share is None
            else round(self.overlap_share, 3),
            "whole_side_server_cpu_seconds": None
            if self.total_cpu is None
            else round(self.total_cpu, 3),
            "per_connection_cpu_ms_outside_frames": self.per_connection_ms(),
            "checks": self.checks,
        }

    def per_connection_ms(self) -> float | None:
        """Server CPU per connection beyond its frames (handshake, close; intake on the
        real side), taking each frame at the window's cost."""
        if self.total_cpu is None or self.server_cpu is None or not self.frames:
            return None
        if not self.connections:
            return None
        per_frame = self.server_cpu / self.frames
        return round(1000 * (self.total_cpu - per_frame * self.total_frames) / self.connections, 3)


class WindowProbe:
    """Opens the window when ``wanted`` connections are open, closes it at the first end."""

    def __init__(self, target: server.Target, tally: driver.Tally, side: Side) -> None:
        self.target = target
        self.tally = tally
        self.side = side
        self.opened_at = 0.0
        self.start_frames = 0
        self.start_cpu = 0.0
        self.start_wakeups = 0
        self.start_pg = 0.0
        self.start_driver = 0.0
        self.start_machine = 0.0
        self.pg_pids: list[int] = []
        self.closed = False
        self.ready = trio.Event()

    def open(self) -> None:
        """Take the readings that start the window."""
        if self.target.database_url and self.side.name == "real":
            self.pg_pids = server.backend_pids(self.target.database_url)
        self.opened_at = time.monotonic()
        self.start_frames = self.tally.frames
        self.start_cpu = server.proc_cpu_seconds(self.target.pid) if self.target.pid else 0.0
        self.start_wakeups = server.proc_wakeups(self.target.pid) if self.target.pid else 0
        self.start_pg = server.cpu_of(self.pg_pids)
        self.start_driver = driver.driver_cpu_seconds()
        self.start_machine = server.machine_busy_seconds()
        self.ready.set()

    def close(self, _stream: driver.Stream | None = None) -> None:
        """Take the readings that end the window (once, at the first terminal frame)."""
        if self.closed or not self.ready.is_set():
            return
        self.closed = True
        side = self.side
        side.closed_at = time.monotonic()
        side.opened_at = self.opened_at
        side.seconds = side.closed_at - self.opened_at
        side.frames = self.tally.frames - self.start_frames
        if self.target.pid:
            side.server_cpu = server.proc_cpu_seconds(self.target.pid) - self.start_cpu
            side.server_wakeups = server.proc_wakeups(self.target.pid) - self.start_wakeups
        if self.pg_pids:
            side.postgres_cpu = server.cpu_of(self.pg_pids) - self.start_pg
        side.driver_cpu = driver.driver_cpu_seconds() - self.start_driver
        side.machine_busy = server.machine_busy_seconds() - self.start_machine


async def bare_side(target: server.Target, options: argparse.Namespace) -> Side:
    """``--connections`` WebSockets to the bare route."""
    side = Side("bare")
    tally = driver.Tally(wanted=options.connections)
    probe = WindowProbe(target, tally, side)
    path = f"/_bench/live?frames={options.steps}&interval={options.interval}"
    streams = [
        driver.Stream(f"bare-{i}", "", options.steps, time.time())
        for i in range(options.connections)
    ]
    tally.created = len(streams)

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(
                    functools.partial(
                        driver.watch, allow_coalescing=True, path=path, on_end=probe.close
                    ),
                    target.ws_base,
                    stream,
                    tally,
                    side.latencies,
                )
            await tally.wait_connects(len(streams))
            probe.open()

    cpu0 = server.proc_cpu_seconds(target.pid) if target.pid else None
    await driver.with_status(body, tally, None, "fanout bare ", target)
    _finish(side, target, cpu0, streams)
    return side


async def real_side(target: server.Target, options: argparse.Namespace) -> Side:
    """Tickets with watchers, through the butler and the concierge."""
    side = Side("real")
    per = max(1, options.watchers_per_ticket)
    tickets = max(1, options.connections // per)
    tally = driver.Tally(wanted=tickets)
    probe = WindowProbe(target, tally, side)
    streams: list[driver.Stream] = []
    watch = functools.partial(driver.watch, allow_coalescing=True, on_end=probe.close)

    async def body() -> None:
        async with (
            httpclient.make(options.http_client, target.base_url, options.concurrency) as client,
            trio.open_nursery() as nursery,
        ):
            numbers = iter(range(tickets))

            async def create() -> None:
                for number in numbers:
                    ticket = await driver.create_ticket(client, options.steps, f"f-{number}", tally)
                    if ticket is None:
                        continue
                    tally.created += 1
                    for _ in range(per):
                        stream = driver.Stream(
                            ticket["id"], ticket["token"], options.steps, time.time()
                        )
                        streams.append(stream)
                        nursery.start_soon(watch, target.ws_base, stream, tally, side.latencies)

            async with trio.open_nursery() as creators:
                for _ in range(min(options.concurrency, tickets)):
                    creators.start_soon(create)
            await tally.wait_connects(len(streams))
            probe.open()

    cpu0 = server.proc_cpu_seconds(target.pid) if target.pid else None
    await driver.with_status(body, tally, None, "fanout real ", target)
    _finish(side, target, cpu0, streams)
    return side


def _finish(
    side: Side, target: server.Target, cpu0: float | None, streams: list[driver.Stream]
) -> None:
    side.checks = driver.check_streams(streams, strict_steps=False)
    side.total_frames = side.checks["frames"]
    side.connections = side.checks["connections"]
    if cpu0 is not None and target.pid:
        side.total_cpu = server.proc_cpu_seconds(target.pid) - cpu0


async def _together(pair: tuple[server.Target, server.Target], options: argparse.Namespace
                    ) -> tuple[Side, Side]:  # fmt: skip
    """One pair's two sides at the same time: bare on ``pair[0]``, real on ``pair[1]``.

    Each server's CPU is read from its own process, over its own side's window;
    the windows overlap for most of their length (``overlap_share``), so a
    change in the machine's speed reaches both sides alike.
    """
    sides: dict[str, Side] = {}

    async def run(name: str, make: Any, target: server.Target) -> None:
        sides[name] = await make(target, options)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "bare", bare_side, pair[0])
        nursery.start_soon(run, "real", real_side, pair[1])
    bare, real = sides["bare"], sides["real"]
    overlap = min(bare.closed_at, real.closed_at) - max(bare.opened_at, real.opened_at)
    bare.overlap_share = real.overlap_share = max(0.0, overlap) / max(
        bare.seconds, real.seconds, 1e-9
    )
    return bare, real


MIN_WINDOW_SHARE = 0.25
"""A side's window (every connection open, no stream ended) must last this share of
its streams' span, or its CPU per event is not a steady-state measurement."""


def _pooled(name: str, sides: list[Side]) -> Side:
    """One side's rounds as one window: CPU and frames summed, latencies joined."""
    pooled = Side(name)
    for side in sides:
        pooled.seconds += side.seconds
        pooled.frames += side.frames
        pooled.driver_cpu += side.driver_cpu
        pooled.machine_busy += side.machine_busy * side.seconds
        pooled.latencies += side.latencies
        for key, value in side.checks.items():
            pooled.checks[key] = pooled.checks.get(key, 0) + value
        for field in ("server_cpu", "server_wakeups", "postgres_cpu", "total_cpu"):
            mine, theirs = getattr(pooled, field), getattr(side, field)
            if theirs is not None:
                setattr(pooled, field, (mine or 0.0) + theirs)
        pooled.total_frames += side.total_frames
        pooled.connections += side.connections
    if pooled.seconds:
        pooled.machine_busy /= pooled.seconds
    return pooled


async def run(options: argparse.Namespace) -> report.Result:
    """The fanout scenario."""
    options.steps = max(1, min(100, options.steps))
    options.rounds = max(1, options.rounds)
    per = max(1, options.watchers_per_ticket)
    env = {
        "GRANDHOTEL_BENCH_ROUTES": 1,
        "GRANDHOTEL_OPERATOR_TOKEN": secrets.token_urlsafe(16),
        "GRANDHOTEL_LAUNDRY_STEP_SECONDS": options.interval,
        "GRANDHOTEL_QUEUE_LIMITS": f"default={max(1000, options.connections)}",
        # What is measured is the CPU per frame once every stream is open. The
        # desk's pace (live first) would only slow the real side's tickets in,
        # and the window with every stream open would be too short to measure.
        "GRANDHOTEL_LIVE_LAG_TARGET_MS": 0,
    }
    bares: list[Side] = []
    reals: list[Side] = []
    together = options.together and not options.url
    deaths: list[str] = []
    if together:
        async with server.pair_for(options, env) as (first, second):
            for number in range(options.rounds):
                # Swapping the servers every round cancels what differs between
                # the two processes (memory layout, the core each ran on most).
                pair = (first, second) if number % 2 == 0 else (second, first)
                bare, real = await _together(pair, options)
                bares.append(bare)
                reals.append(real)
                await trio.sleep(1.0)
            deaths = [t.death for t in (first, second) if t.death]
    else:
        async with server.target_for(options, env) as target:
            for number in range(options.rounds):
                # Alternating which side goes first cancels a steady drift of the
                # machine's speed (a neighbour's load) out of the median ratio.
                order = (bare_side, real_side) if number % 2 == 0 else (real_side, bare_side)
                for make in order:
                    side = await make(target, options)
                    (bares if side.name == "bare" else reals).append(side)
                    await trio.sleep(1.0)
            deaths = [target.death] if target.death else []
    per_round = [
        report.ratio(r.metrics()["server_cpu_us_per_event"], b.metrics()["server_cpu_us_per_event"])
        for b, r in zip(bares, reals, strict=True)
    ]
    bare, real = _pooled("bare", bares), _pooled("real", reals)
    bm, rm = bare.metrics(), real.metrics()
    ratio = report.median_ratio(per_round)
    failures = deaths
    span = options.steps * options.interval
    for side in (*bares, *reals):
        for key in ("duplicated", "out_of_order", "missing_terminal", "lost_gaps"):
            if side.checks.get(key):
                failures.append(f"{side.name}: {key} = {side.checks[key]}")
        if side.seconds < MIN_WINDOW_SHARE * span:
            # The last connections opened just before the first tickets ended: no
            # steady window, so no CPU per event worth comparing.
            ratio = None
            failures.append(
                f"{side.name}: the window lasted {side.seconds:.1f} s of the streams' "
                f"{span:g} s (connections opened too slowly): use fewer --connections "
                "or more --steps"
            )
    result = report.Result(
        scenario="fanout",
        parameters={
            "connections": options.connections,
            "steps": options.steps,
            "interval_seconds": options.interval,
            "watchers_per_ticket": per,
            "tickets": max(1, options.connections // per),
            "rounds": options.rounds,
            "together": together,
            "url": options.url or "(started here)",
        },
        metrics={
            "bare": bm,
            "real": rm,
            "cpu_per_event_ratio_real_over_bare": ratio,
            "pooled_ratio_real_over_bare": report.ratio(
                rm["server_cpu_us_per_event"], bm["server_cpu_us_per_event"]
            ),
            "rounds": [
                {
                    "bare_us_per_event": b.metrics()["server_cpu_us_per_event"],
                    "real_us_per_event": r.metrics()["server_cpu_us_per_event"],
                    "ratio": x,
                    "bare_wakeups_per_1000_events": b.metrics()["server_wakeups_per_1000_events"],
                    "real_wakeups_per_1000_events": r.metrics()["server_wakeups_per_1000_events"],
                    "windows_overlap_share": r.metrics()["windows_overlap_share"],
                }
                for b, r, x in zip(bares, reals, per_round, strict=True)
            ],
        },
        targets=[report.Target("server CPU per event real / bare (median)", ratio, 1.25, "x")],
        failures=failures,
        latencies_ms={
            "bare /_bench/live": bare.latencies,
            "real /tickets/{id}/live": real.latencies,
        },
        postgres_url=options.admin_url,
    )
    result.notes.append(
        "the real side's CPU includes its checkpoint flushes to PostgreSQL (once a second); "
        "PostgreSQL's own CPU is listed apart"
    )
    return result
