"""The driver's clients: tickets over HTTP, guests over WebSockets, and what they saw.

Everything here runs in the bench process, never in the server: real HTTP
(httpx, HTTP/1.1 with a pool of keep-alive connections) and real WebSockets
(trio-websocket), one task per watcher.

``Stream`` is one ticket as its watcher saw it, across every connection it
made. Each frame is checked as it arrives: the first frame of a connection must
be a snapshot, seqs must strictly increase within a connection (equal is a
duplicate, lower is out of order, a jump is a gap: events lost), a resumed
connection's snapshot must not go back, and exactly one terminal event must
come, last. A progress frame's latency is its receipt minus its ``at`` (set by
the butler when it handled the report; ISO with milliseconds, truncated, so a
latency reads up to 1 ms high). The receipt is the kernel's receive time of
the frame's bytes on the watcher's socket (receipt.py), not the moment this
process, which hosts every watcher, got round to reading it.

``Sampler`` records the server's RSS, CPU and ``/stats`` counters twice a
second for the plot; ``status_lines`` prints one line a second to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import gc
import json
import math
import random
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import httpx
import trio
import trio_websocket
import wsproto.utilities

from bench import httpclient, receipt, server
from grandhotel import housekeeping

TERMINAL_KINDS: Final = frozenset({"completed", "failed", "cancelled"})
CONNECT_TRIES: Final = 8


def parse_at(at: str) -> float:
    """An event's ``at`` (ISO 8601, ``Z``) as epoch seconds."""
    return datetime.datetime.fromisoformat(at).timestamp()


def driver_cpu_seconds() -> float:
    """This process's user + system CPU seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclasses.dataclass
class Tally:
    """Counters for the status line and the final numbers."""

    wanted: int = 0
    created: int = 0
    finished: int = 0
    frames: int = 0
    progress: int = 0
    watching: int = 0
    connects: int = 0
    resumes: int = 0
    planned_disconnects: int = 0
    connect_retries: int = 0
    http_retries: int = 0
    client_protocol_errors: int = 0
    dropped_on_purpose: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    read_delays_ms: list[float] = dataclasses.field(default_factory=list)
    """Per progress frame (in the order of the latencies): the driver's read
    minus the frame's receipt, its own queueing (receipt.py)."""
    _connected: trio.lowlevel.ParkingLot = dataclasses.field(
        default_factory=trio.lowlevel.ParkingLot, repr=False
    )

    def connected(self) -> None:
        """A watcher connected."""
        self.connects += 1
        self._connected.unpark_all()

    async def wait_connects(self, count: int) -> None:
        """Return once ``count`` connections were made in all."""
        while self.connects < count:
            await self._connected.park()

    @property
    def in_flight(self) -> int:
        """Tickets created whose watcher has not seen the end yet."""
        return self.created - self.finished

    def error(self, text: str) -> None:
        """Note an error (the first few hundred are kept)."""
        if len(self.errors) < 200:
            self.errors.append(text)


DROP_EVERY = 0
"""Self-test of the checks (``--drop-every``): ignore every Nth progress frame."""


@dataclasses.dataclass
class Chaos:
    """Random watcher disconnects: after a frame, with ``probability``, then resume."""

    probability: float
    pause_max_seconds: float
    rng: random.Random


@dataclasses.dataclass(slots=True)
class Stream:
    """One ticket as its watcher saw it."""

    ticket_id: str
    token: str
    total: int
    created: float
    """Driver wall clock when the 201 arrived."""
    probe: bool = False
    """Created by the memory probe, watched only after a pause."""
    first_frame: float | None = None
    """Driver wall clock when the first snapshot arrived."""
    first_done: int = -1
    """``done`` in the first snapshot (steps before it were summarised by it)."""
    steps: set[int] = dataclasses.field(default_factory=set)
    frames: int = 0
    connections: int = 0
    last_seq: int = 0
    gaps: int = 0
    """Seqs skipped within one connection (events lost)."""
    coalesced: int = 0
    """Seqs skipped within one connection where coalescing is allowed."""
    duplicated: int = 0
    out_of_order: int = 0
    not_snapshot_first: int = 0
    after_terminal: int = 0
    terminal: str | None = None
    terminals: int = 0
    snapshot_terminal: str | None = None
    """The status of the last snapshot, when it was already an ending."""
    terminal_only_in_snapshot: int = 0
    """Connections closed with 1000 after a snapshot showing the ending, with no
    terminal event (the contract promises the event after the snapshot)."""
    finished: float | None = None
    close_codes: list[int] = dataclasses.field(default_factory=list)
    failed_connects: int = 0

    @property
    def steps_unseen(self) -> int:
        """Steps of ``total`` shown neither by a snapshot nor by a progress event."""
        return sum(1 for step in range(1, self.total + 1) if step not in self.steps)


class Connection:
    """Per-connection check state."""

    __slots__ = ("last", "opened")

    def __init__(self) -> None:
        self.last = -1
        self.opened = False


def take(
    stream: Stream,
    conn: Connection,
    event: dict[str, Any],
    received: float,
    latencies: list[float],
    *,
    allow_coalescing: bool = False,
    read: float | None = None,
    read_delays: list[float] | None = None,
) -> None:
    """Check one frame against the stream so far and record it.

    ``received`` is the frame's receipt; ``read``, when given, when the driver
    read it: their difference goes to ``read_delays`` beside each latency.
    """
    seq = event.get("seq")
    if seq is None:  # pong, error: unnumbered
        return
    kind = event.get("type")
    stream.frames += 1
    if stream.terminal is not None:
        stream.after_terminal += 1
    if stream.first_frame is None:
        stream.first_frame = received
    if conn.last < 0:
        if kind != "snapshot":
            stream.not_snapshot_first += 1
        elif seq < stream.last_seq:
            stream.out_of_order += 1  # a resumed snapshot went back in time
    elif seq == conn.last:
        stream.duplicated += 1
    elif seq < conn.last:
        stream.out_of_order += 1
    elif seq > conn.last + 1:
        if allow_coalescing and kind == "progress":
            stream.coalesced += seq - conn.last - 1
        else:
            stream.gaps += seq - conn.last - 1
    conn.last = max(conn.last, seq)
    stream.last_seq = max(stream.last_seq, seq)
    done = event.get("done")
    if kind == "snapshot":
        if isinstance(done, int):
            if stream.first_done < 0:
                stream.first_done = done
            stream.steps.update(range(1, done + 1))
        status = event.get("status")
        stream.snapshot_terminal = str(status) if status in TERMINAL_KINDS else None
        if stream.snapshot_terminal is not None and stream.finished is None:
            stream.finished = received
    elif kind == "progress":
        if isinstance(done, int):
            stream.steps.add(done)
        at = event.get("at")
        if isinstance(at, str):
            latencies.append((received - parse_at(at)) * 1000.0)
            if read_delays is not None and read is not None:
                read_delays.append((read - received) * 1000.0)
    elif kind in TERMINAL_KINDS:
        _end(stream, str(kind), received)


def at_read(latencies: list[float], read_delays: list[float]) -> list[float]:
    """The latencies as of the driver's reads (each plus its read delay), as
    measured before receipts were stamped; empty if the two do not pair up."""
    if len(latencies) != len(read_delays):
        return []
    return [latency + delay for latency, delay in zip(latencies, read_delays, strict=True)]


def _end(stream: Stream, kind: str, received: float) -> None:
    stream.terminals += 1
    if stream.terminal is None:
        stream.terminal = kind
        stream.finished = received


async def create_ticket(
    client: httpclient.Client, suits: int, guest: str, tally: Tally, path: str = "/tickets"
) -> dict[str, Any] | None:
    """POST one laundry ticket; retry a 429, a 503 or a dropped connection a few times."""
    body = {"service": "laundry", "args": {"suits": suits}, "guest": guest}
    for attempt in range(6):
        try:
            status, answer = await client.post_json(path, body)
        except httpclient.TRANSPORT_ERRORS as ex:
            tally.http_retries += 1
            tally.error(f"POST {path}: {type(ex).__name__}: {ex}")
        else:
            if status == 201 and isinstance(answer, dict):
                return answer
            if status not in (429, 503):
                tally.error(f"POST {path}: HTTP {status} {str(answer)[:200]}")
                return None
            tally.http_retries += 1
        await trio.sleep(0.05 * 2**attempt)
    return None


def http_client(base_url: str, connections: int, timeout: float = 60.0) -> httpx.AsyncClient:
    """An httpx HTTP/1.1 client with ``connections`` keep-alive connections."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=timeout,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


async def watch(
    ws_base: str,
    stream: Stream,
    tally: Tally,
    latencies: list[float],
    *,
    chaos: Chaos | None = None,
    allow_coalescing: bool = False,
    path: str | None = None,
    on_end: Callable[[Stream], None] | None = None,
) -> None:
    """Watch a ticket until its terminal event, resuming with ``?after=`` if cut off.

    ``path`` replaces ``/tickets/<id>/live`` (the bare route: no token, no resume).
    """
    headers = [("Authorization", f"Bearer {stream.token}")] if stream.token else []
    url = f"{ws_base}{path or f'/tickets/{stream.ticket_id}/live'}"
    tries = 0
    try:
        while stream.terminal is None:
            after = stream.last_seq
            conn = Connection()
            if after and path is None:
                target = f"{url}?after={after}"
            elif after:
                return  # the bare route cannot resume
            else:
                target = url
            try:
                async with trio_websocket.open_websocket_url(target, extra_headers=headers) as ws:
                    stamped = receipt.stamp(ws)
                    tries = 0
                    stream.connections += 1
                    tally.connected()
                    if stream.connections > 1:
                        tally.resumes += 1
                    tally.watching += 1
                    try:
                        code = await _read(
                            ws, stamped, stream, conn, tally, latencies, chaos, allow_coalescing
                        )
                    finally:
                        tally.watching -= 1
                    if code is not None:
                        stream.close_codes.append(code)
                    if code == 1000 and stream.terminal is None and stream.snapshot_terminal:
                        # The ending came in the snapshot only: the watcher knows it.
                        stream.terminal_only_in_snapshot += 1
                        stream.terminal = stream.snapshot_terminal
            except wsproto.utilities.LocalProtocolError:
                # trio-websocket 0.12 answers a server ping that arrives after the
                # client sent its close with a pong, which wsproto refuses, and
                # raises that out of the connection. Only seen after a planned
                # hang-up: the connection is over either way.
                tally.client_protocol_errors += 1
            except (OSError, trio_websocket.HandshakeError) as ex:
                tries += 1
                stream.failed_connects += 1
                tally.connect_retries += 1
                if isinstance(ex, trio_websocket.ConnectionRejected) and ex.status_code == 404:
                    tally.error(f"watch {stream.ticket_id}: 404 (no such ticket)")
                    return
                if tries >= CONNECT_TRIES:
                    tally.error(f"watch {stream.ticket_id}: gave up connecting: {ex!r}")
                    return
                await trio.sleep(min(2.0, 0.05 * 2**tries) * random.random())
                continue
            if chaos is not None and stream.terminal is None:
                await trio.sleep(chaos.rng.random() * chaos.pause_max_seconds)
    finally:
        if stream.terminal is not None:
            tally.finished += 1
        if on_end is not None:
            on_end(stream)


async def _read(
    ws: trio_websocket.WebSocketConnection,
    stamped: receipt.StampedStream | None,
    stream: Stream,
    conn: Connection,
    tally: Tally,
    latencies: list[float],
    chaos: Chaos | None,
    allow_coalescing: bool,
) -> int | None:
    """Read frames until the server closes (its close code) or chaos hangs up (None)."""
    while True:
        try:
            message = await ws.get_message()
        except trio_websocket.ConnectionClosed as closed:
            return closed.reason.code if closed.reason is not None else None
        read = time.time()
        received = receipt.receipt(stamped, read)
        event = json.loads(message)
        if DROP_EVERY and event.get("type") == "progress":
            tally.dropped_on_purpose += 1
            if tally.dropped_on_purpose % DROP_EVERY == 0:
                continue
        take(
            stream, conn, event, received, latencies, allow_coalescing=allow_coalescing,
            read=read, read_delays=tally.read_delays_ms,
        )  # fmt: skip
        tally.frames += 1
        if event.get("type") == "progress":
            tally.progress += 1
        if chaos is not None and stream.terminal is None and chaos.rng.random() < chaos.probability:
            tally.planned_disconnects += 1
            await ws.aclose()
            return None


def check_streams(streams: list[Stream], *, strict_steps: bool = True) -> dict[str, int]:
    """Totals of every check over all streams."""
    totals = {
        "tickets": len(streams),
        "finished": sum(1 for s in streams if s.terminal is not None),
        "missing_terminal": sum(1 for s in streams if s.terminal is None),
        "extra_terminal": sum(max(0, s.terminals - 1) for s in streams),
        "lost_gaps": sum(s.gaps for s in streams),
        "duplicated": sum(s.duplicated for s in streams),
        "out_of_order": sum(s.out_of_order for s in streams),
        "not_snapshot_first": sum(s.not_snapshot_first for s in streams),
        "after_terminal": sum(s.after_terminal for s in streams),
        "coalesced": sum(s.coalesced for s in streams),
        "frames": sum(s.frames for s in streams),
        "connections": sum(s.connections for s in streams),
        "abnormal_closes": sum(1 for s in streams for c in s.close_codes if c != 1000),
        "terminal_only_in_snapshot": sum(s.terminal_only_in_snapshot for s in streams),
    }
    completed = [s for s in streams if s.terminal == "completed"]
    totals["completed"] = len(completed)
    totals["failed"] = sum(1 for s in streams if s.terminal == "failed")
    totals["cancelled"] = sum(1 for s in streams if s.terminal == "cancelled")
    totals["steps_unseen"] = sum(s.steps_unseen for s in completed) if strict_steps else 0
    return totals


def failures_of(totals: dict[str, int], *, keys: tuple[str, ...]) -> list[str]:
    """A failure line for each of ``keys`` that is not zero."""
    return [f"{key} = {totals[key]} (must be 0)" for key in keys if totals.get(key)]


@dataclasses.dataclass
class Sampler:
    """The server's RSS, CPU and /stats, and the driver's counts, over time."""

    target: server.Target
    tally: Tally
    stats_client: httpx.AsyncClient | None
    started: float = dataclasses.field(default_factory=time.monotonic)
    rows: list[dict[str, float]] = dataclasses.field(default_factory=list)
    peak_rss: int = 0
    peak_butlers: int = 0
    peak_watchers: int = 0
    last_stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    async def stats(self) -> dict[str, Any]:
        """``GET /stats`` with the operator token ({} without one)."""
        if self.stats_client is None or not self.target.operator_token:
            return {}
        try:
            response = await self.stats_client.get(
                "/stats", headers={"Authorization": f"Bearer {self.target.operator_token}"}
            )
        except httpx.HTTPError:
            return {}
        if response.status_code != 200:
            return {}
        body: dict[str, Any] = response.json()
        self.last_stats = body
        return body

    def sample_process(self) -> tuple[int, float]:
        """The server's RSS (bytes) and CPU seconds now (0s without a pid)."""
        if self.target.pid is None:
            return 0, 0.0
        rss = server.proc_rss_bytes(self.target.pid)
        self.peak_rss = max(self.peak_rss, rss)
        return rss, server.proc_cpu_seconds(self.target.pid)

    async def run(self, interval: float = 0.5) -> None:
        """Sample until cancelled."""
        while True:
            rss, cpu = self.sample_process()
            body = await self.stats()
            butlers = int(body.get("butlers_on_duty", 0))
            watchers = int(body.get("watchers", 0))
            self.peak_butlers = max(self.peak_butlers, butlers)
            self.peak_watchers = max(self.peak_watchers, watchers)
            self.rows.append(
                {
                    "t": round(time.monotonic() - self.started, 2),
                    "in_flight": self.tally.in_flight,
                    "server_butlers": butlers,
                    "server_watchers": watchers,
                    "server_rss_mb": round(rss / 2**20, 1),
                    "server_cpu_s": round(cpu, 2),
                }
            )
            await trio.sleep(interval)

    def series(self) -> dict[str, list[float]]:
        """Columns for the plot."""
        if not self.rows:
            return {}
        columns = ["t", "in_flight", "server_butlers", "server_watchers", "server_rss_mb"]
        if not self.last_stats:
            columns = ["t", "in_flight", "server_rss_mb"]
        return {name: [row[name] for row in self.rows] for name in columns}


async def status_lines(
    tally: Tally, sampler: Sampler | None = None, label: str = "", interval: float = 1.0
) -> None:
    """Print a status line every ``interval`` seconds (to stderr) until cancelled."""
    started = time.monotonic()
    last_cpu, last_time = (sampler.sample_process()[1] if sampler else 0.0), started
    last_frames = 0
    last_busy = server.machine_busy_seconds()
    while True:
        await trio.sleep(interval)
        now = time.monotonic()
        extra = ""
        if sampler is not None and sampler.target.pid is not None:
            rss, cpu = sampler.sample_process()
            busy = (cpu - last_cpu) / max(now - last_time, 1e-9)
            extra = f"  server cpu {busy:4.0%} rss {rss / 2**20:6.0f} MB"
            last_cpu = cpu
        elapsed = max(now - last_time, 1e-9)
        rate = (tally.frames - last_frames) / elapsed
        busy_now = server.machine_busy_seconds()
        extra += f"  machine {(busy_now - last_busy) / elapsed:3.1f} cores busy"
        last_time, last_frames, last_busy = now, tally.frames, busy_now
        wanted = f"/{tally.wanted}" if tally.wanted else ""
        print(
            f"[{label}{now - started:6.1f}s] created {tally.created}{wanted}  "
            f"events {tally.frames} ({rate:,.0f}/s)  in flight {tally.in_flight}  "
            f"watching {tally.watching}{extra}",
            file=sys.stderr,
            flush=True,
        )


async def with_status(
    body: Callable[[], Awaitable[None]],
    tally: Tally,
    sampler: Sampler | None,
    label: str = "",
    target: server.Target | None = None,
) -> None:
    """Run ``body`` with the status line (and the sampler) beside it.

    If the server (``target``, or the sampler's) dies, ``body`` is cancelled and
    ``target.death`` says how.
    """
    watched = target or (sampler.target if sampler is not None else None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(status_lines, tally, sampler, label)
        if sampler is not None:
            nursery.start_soon(sampler.run)
        if watched is not None:
            nursery.start_soon(_watchdog, watched, nursery.cancel_scope)
        await body()
        nursery.cancel_scope.cancel()


async def _watchdog(target: server.Target, scope: trio.CancelScope) -> None:
    if target.process is None:
        return
    await target.process.wait()
    target.check_alive()
    print(f"bench: {target.death}", file=sys.stderr, flush=True)
    scope.cancel()


T = TypeVar("T")

DRIVER_GEN0_THRESHOLD = 10_000
DRIVER_YOUNG_INTERVAL_SECONDS = 0.1


class DriverCollector:
    """The driver's own collector: tuned, and its pauses reported with the result.

    Every latency the driver measures ends when the driver reads the frame, so a
    pause of the driver's own collector counts as the server's latency. With
    Python's default thresholds, a driver holding 2,000 WebSockets makes full
    collections that walk every one of their objects; ``tuned`` freezes what the
    start-up made and leaves only young collections (as the server does,
    ``housekeeping.tune``), made on a clock too (``run``): as on the server, old
    objects that die (closed connections) hold Python's own trigger back while
    the young generation grows (young pauses of up to 100 ms in the driver of a
    10,000-ticket ``watch`` with the trigger alone). Cyclic garbage waits until
    the process exits: a run is minutes long. ``report`` says what the
    collector cost either way.
    """

    def __init__(self, *, tuned: bool) -> None:
        self.tuned = tuned
        self.pauses = housekeeping.Pauses()
        if tuned:
            gc.collect()
            gc.freeze()
            gc.set_threshold(DRIVER_GEN0_THRESHOLD, housekeeping.NEVER, housekeeping.NEVER)
        gc.callbacks.append(self.pauses)

    async def run(self, scenario: Callable[[], Awaitable[T]]) -> T:
        """Run ``scenario`` with the young collections' clock beside it (if tuned)."""
        async with trio.open_nursery() as nursery:
            if self.tuned:
                await nursery.start(
                    functools.partial(
                        housekeeping.young_collections,
                        shortest_seconds=DRIVER_YOUNG_INTERVAL_SECONDS,
                        longest_seconds=DRIVER_YOUNG_INTERVAL_SECONDS,
                        pause_target_seconds=1.0,
                    )
                )
            outcome = await scenario()
            nursery.cancel_scope.cancel()
        return outcome

    def report(self) -> dict[str, Any]:
        """Collections, total and longest pause (ms) per generation, and the thresholds."""
        body = self.pauses.report()
        body.pop("young_interval_seconds", None)
        body.pop("frozen_objects", None)
        return body


def rate(count: int, seconds: float) -> float:
    """``count / seconds``, 0.0 for no time."""
    return round(count / seconds, 1) if seconds > 0 else 0.0


def ms(seconds: float) -> float:
    """Seconds as milliseconds, rounded."""
    return round(seconds * 1000.0, 2)


def finite(value: float | None) -> float | None:
    """None for NaN/inf."""
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return value


def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    """``--rounds`` and ``--together`` (the scenarios that compare a bare side and a real one)."""
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="bare/real pairs, swapping the servers (or, --no-together, which side goes first)",
    )
    parser.add_argument(
        "--together",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run each pair's two sides at the same time on two servers started alike, "
        "swapping them every round (default); --no-together: one after the other on one "
        "server (always so with --url)",
    )


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """``--url`` and friends (shared by the scenarios that drive a server)."""
    parser.add_argument(
        "--url", help="drive a running server at this base URL instead of starting one"
    )
    parser.add_argument(
        "--server-pid", type=int, help="with --url: the server's pid (for CPU and RSS)"
    )
    parser.add_argument(
        "--database-url", default="", help="with --url: the server's database (pickup latency)"
    )
    parser.add_argument(
        "--operator-token", default="", help="with --url: its operator token (for GET /stats)"
    )
    parser.add_argument(
        "--http-client",
        choices=("raw", "httpx"),
        default="raw",
        help="the driver's HTTP client: raw (lean HTTP/1.1, default) or httpx "
        "(~5x the driver CPU per request, see bench/httpclient.py)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the server with py-spy throughout (raw stacks + a top-functions summary)",
    )
