"""``intake``: ``POST /tickets`` as fast as the server takes them, beside a bare route.

One server, two routes, measured in turns (``--rounds`` pairs, each side
``--seconds`` long after ``--warmup`` seconds that are not counted):

- ``POST /_bench/tickets``: quart-trio validates the body and answers the same
  201 JSON, without the safe or a butler;
- ``POST /tickets``: the real front desk (one INSERT statement, a butler hired).

``--concurrency`` HTTP/1.1 connections each send the next request as soon as
the last is answered. The ratio real/bare of the request rates says what the
safe costs (target >= 0.8); so does the ratio of server CPU per request. The
laundry is told not to claim (``GRANDHOTEL_QUEUE_LIMITS=default=0``, unless
``--claim``) so that only the intake path is measured; the driver and
PostgreSQL share the machine's cores with the server, so their CPU is reported
too.

By default (``--together``) a pair's two sides run at the same time, each on
a server of its own: two ``grandhotel serve`` processes started alike, which
swap sides every round, as ``fanout`` does. On this shared machine the speed of
the whole machine drifts over tens of seconds with a neighbour's load: one
after the other on one server (``--no-together``, always so with ``--url``),
single pairs of one run ranged from 0.70 to 1.0 x, and the bare side's own rate
from 833 to 1,493 requests/s between windows a minute apart. Run together, the
two sides share whatever the machine gives: the two servers take turns on the
same cores, so each side's rate is what its own CPU per request allows of an
equal share, which is what the ratio is meant to compare. (PostgreSQL's work
for the real side is then shared by both servers' cores; with a spare core
one after the other, it mostly ran beside the server instead.) The target is
the median of the pairs' rate ratios (the pooled ratio is reported beside it).
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import time
from typing import Any

import trio

from bench import driver, httpclient, report, server

BARE = "/_bench/tickets"
REAL = "/tickets"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The intake scenario's options."""
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per side")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--concurrency", type=int, default=32, help="HTTP connections")
    parser.add_argument(
        "--pool-size", type=int, default=20, help="the server's GRANDHOTEL_POOL_SIZE"
    )
    parser.add_argument(
        "--claim",
        action="store_true",
        help="let the laundry claim and run the jobs (1 step each) during the measurement",
    )
    driver.add_pair_arguments(parser)
    driver.add_target_arguments(parser)


@dataclasses.dataclass
class Window:
    """One measured side of one round."""

    path: str
    seconds: float
    created: int
    errors: int
    latencies_ms: list[float]
    server_cpu: float | None
    postgres_cpu: float | None
    driver_cpu: float
    machine_busy: float

    def metrics(self) -> dict[str, Any]:
        """The side's numbers."""
        per = self.created or 1
        return {
            "requests_per_second": driver.rate(self.created, self.seconds),
            "requests": self.created,
            "errors": self.errors,
            "latency_ms": report.summary(self.latencies_ms),
            "server_cpu_utilisation": None
            if self.server_cpu is None
            else round(self.server_cpu / self.seconds, 2),
            "server_cpu_ms_per_request": None
            if self.server_cpu is None
            else round(1000 * self.server_cpu / per, 4),
            "postgres_cpu_ms_per_request": None
            if self.postgres_cpu is None
            else round(1000 * self.postgres_cpu / per, 4),
            "driver_cpu_utilisation": round(self.driver_cpu / self.seconds, 2),
            "machine_busy_cores": round(self.machine_busy / self.seconds, 2),
            "other_processes_busy_cores": round(
                max(
                    0.0,
                    self.machine_busy
                    - self.driver_cpu
                    - (self.server_cpu or 0.0)
                    - (self.postgres_cpu or 0.0),
                )
                / self.seconds,
                2,
            ),
        }


async def hammer(
    client: httpclient.Client,
    path: str,
    *,
    concurrency: int,
    seconds: float,
    tally: driver.Tally,
    latencies: list[float] | None,
) -> tuple[int, int]:
    """POST to ``path`` from ``concurrency`` loops for ``seconds``; (201s, errors)."""
    counts = {"ok": 0, "errors": 0}
    body = {"service": "laundry", "args": {"suits": 1}}
    deadline = time.monotonic() + seconds

    async def loop(worker: int) -> None:
        number = 0
        while time.monotonic() < deadline:
            number += 1
            sent = time.monotonic()
            try:
                status, _ = await client.post_json(path, dict(body, guest=f"g{worker}-{number}"))
            except httpclient.TRANSPORT_ERRORS as ex:
                counts["errors"] += 1
                tally.error(f"POST {path}: {type(ex).__name__}")
                continue
            if status == 201:
                counts["ok"] += 1
                tally.created += 1
                if latencies is not None:
                    latencies.append((time.monotonic() - sent) * 1000.0)
            else:
                counts["errors"] += 1
                tally.error(f"POST {path}: HTTP {status}")

    async with trio.open_nursery() as nursery:
        for worker in range(concurrency):
            nursery.start_soon(loop, worker)
    return counts["ok"], counts["errors"]


async def measure(
    client: httpclient.Client,
    target: server.Target,
    path: str,
    options: argparse.Namespace,
    tally: driver.Tally,
) -> Window:
    """Warm up, then measure one side."""
    await hammer(
        client,
        path,
        concurrency=options.concurrency,
        seconds=options.warmup,
        tally=tally,
        latencies=None,
    )
    pg_pids = server.backend_pids(target.database_url) if target.database_url else []
    cpu0 = server.proc_cpu_seconds(target.pid) if target.pid else 0.0
    pg0 = server.cpu_of(pg_pids)
    driver0 = driver.driver_cpu_seconds()
    machine0 = server.machine_busy_seconds()
    started = time.monotonic()
    latencies: list[float] = []
    created, errors = await hammer(
        client,
        path,
        concurrency=options.concurrency,
        seconds=options.seconds,
        tally=tally,
        latencies=latencies,
    )
    seconds = time.monotonic() - started
    return Window(
        path=path,
        seconds=seconds,
        created=created,
        errors=errors,
        latencies_ms=latencies,
        server_cpu=server.proc_cpu_seconds(target.pid) - cpu0 if target.pid else None,
        postgres_cpu=server.cpu_of(pg_pids) - pg0 if pg_pids else None,
        driver_cpu=driver.driver_cpu_seconds() - driver0,
        machine_busy=server.machine_busy_seconds() - machine0,
    )


Driven = tuple[server.Target, httpclient.Client]


async def _together(pair: tuple[Driven, Driven], options: argparse.Namespace,
                    tally: driver.Tally) -> tuple[Window, Window]:  # fmt: skip
    """One pair's two sides at the same time: bare on ``pair[0]``, real on ``pair[1]``."""
    windows: dict[str, Window] = {}

    async def side(path: str, target: server.Target, client: httpclient.Client) -> None:
        windows[path] = await measure(client, target, path, options, tally)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, BARE, *pair[0])
        nursery.start_soon(side, REAL, *pair[1])
    return windows[BARE], windows[REAL]


def _combine(windows: list[Window]) -> Window:
    return Window(
        path=windows[0].path,
        seconds=sum(w.seconds for w in windows),
        created=sum(w.created for w in windows),
        errors=sum(w.errors for w in windows),
        latencies_ms=[v for w in windows for v in w.latencies_ms],
        server_cpu=None
        if windows[0].server_cpu is None
        else sum(w.server_cpu or 0.0 for w in windows),
        postgres_cpu=None
        if windows[0].postgres_cpu is None
        else sum(w.postgres_cpu or 0.0 for w in windows),
        driver_cpu=sum(w.driver_cpu for w in windows),
        machine_busy=sum(w.machine_busy for w in windows),
    )


async def _run_together(
    options: argparse.Namespace, env: dict[str, Any], tally: driver.Tally,
    bare: list[Window], real: list[Window],
) -> list[str]:  # fmt: skip
    """Every pair at the same time on two servers; the deaths of either."""
    async with (
        server.pair_for(options, env) as (first, second),
        httpclient.make(options.http_client, first.base_url, options.concurrency) as one,
        httpclient.make(options.http_client, second.base_url, options.concurrency) as two,
    ):

        async def body() -> None:
            for number in range(options.rounds):
                # Swapping the servers every round cancels what differs between
                # the two processes (memory layout, the tickets each holds).
                pair = ((first, one), (second, two))
                x, y = await _together(pair if number % 2 == 0 else pair[::-1], options, tally)
                bare.append(x)
                real.append(y)

        await driver.with_status(body, tally, driver.Sampler(first, tally, None), "intake ")
        return [t.death for t in (first, second) if t.death]


async def _run_in_turns(
    options: argparse.Namespace, env: dict[str, Any], tally: driver.Tally,
    bare: list[Window], real: list[Window],
) -> list[str]:  # fmt: skip
    """Every pair one side after the other on one server; its death, if it died."""
    async with (
        server.target_for(options, env) as target,
        httpclient.make(options.http_client, target.base_url, options.concurrency) as client,
    ):

        async def body() -> None:
            for number in range(options.rounds):
                # Alternating which side goes first cancels a steady drift of the
                # machine's speed (a neighbour's load) out of the median ratio.
                sides = [(bare, BARE), (real, REAL)]
                for windows, path in sides if number % 2 == 0 else reversed(sides):
                    windows.append(await measure(client, target, path, options, tally))

        await driver.with_status(body, tally, driver.Sampler(target, tally, None), "intake ")
        return [target.death] if target.death else []


async def run(options: argparse.Namespace) -> report.Result:
    """The intake scenario."""
    options.rounds = max(1, options.rounds)
    token = secrets.token_urlsafe(16)
    env = {
        "GRANDHOTEL_BENCH_ROUTES": 1,
        "GRANDHOTEL_OPERATOR_TOKEN": token,
        "GRANDHOTEL_POOL_SIZE": options.pool_size,
        "GRANDHOTEL_LAUNDRY_STEP_SECONDS": 0.01,
        "GRANDHOTEL_QUEUE_LIMITS": "default=1000" if options.claim else "default=0",
    }
    tally = driver.Tally()
    bare: list[Window] = []
    real: list[Window] = []
    together = options.together and not options.url
    if together:
        deaths = await _run_together(options, env, tally, bare, real)
    else:
        deaths = await _run_in_turns(options, env, tally, bare, real)
    b, r = _combine(bare), _combine(real)
    bm, rm = b.metrics(), r.metrics()
    pairs = [(x.metrics(), y.metrics()) for x, y in zip(bare, real, strict=True)]
    rate_ratios = [
        report.ratio(y["requests_per_second"], x["requests_per_second"]) for x, y in pairs
    ]
    cpu_ratios = [
        report.ratio(y["server_cpu_ms_per_request"], x["server_cpu_ms_per_request"])
        for x, y in pairs
    ]
    rate_ratio = report.median_ratio(rate_ratios)
    metrics = {
        "together": together,
        "bare": bm,
        "real": rm,
        "rate_ratio_real_over_bare": rate_ratio,
        "pooled_rate_ratio_real_over_bare": report.ratio(
            rm["requests_per_second"], bm["requests_per_second"]
        ),
        "server_cpu_per_request_ratio_real_over_bare": report.median_ratio(cpu_ratios),
        "pooled_server_cpu_per_request_ratio_real_over_bare": report.ratio(
            rm["server_cpu_ms_per_request"], bm["server_cpu_ms_per_request"]
        ),
        "rounds": [
            {
                ("bare_on" if together else "first"): (
                    ("first server" if number % 2 == 0 else "second server")
                    if together
                    else ("bare" if number % 2 == 0 else "real")
                ),
                "bare_rps": x["requests_per_second"],
                "real_rps": y["requests_per_second"],
                "rate_ratio": rate,
                "server_cpu_ratio": cpu,
            }
            for number, ((x, y), rate, cpu) in enumerate(
                zip(pairs, rate_ratios, cpu_ratios, strict=True)
            )
        ],
    }
    failures = list(deaths)
    if not r.created or not b.created:
        failures.append("a side created nothing")
    failures += [f"driver error: {e}" for e in tally.errors[:10]]
    result = report.Result(
        scenario="intake",
        parameters={
            "seconds_per_side": options.seconds,
            "warmup_seconds": options.warmup,
            "rounds": options.rounds,
            "together": together,
            "concurrency": options.concurrency,
            "pool_size": options.pool_size,
            "http_client": options.http_client,
            "laundry_claims": options.claim,
            "url": options.url or "(started here)",
        },
        metrics=metrics,
        targets=[
            report.Target(
                "intake rate real / bare (median)", rate_ratio, 0.8, "x", higher_is_better=True
            )
        ],
        failures=failures,
        latencies_ms={
            f"bare POST {BARE}": b.latencies_ms,
            f"real POST {REAL}": r.latencies_ms,
        },
        postgres_url=options.admin_url,
    )
    if (rm["driver_cpu_utilisation"] or 0) > 0.85 or (bm["driver_cpu_utilisation"] or 0) > 0.85:
        result.notes.append(
            "the driver used most of a core: the rates may be bounded by the client, "
            "compare server CPU per request too"
        )
    return result
