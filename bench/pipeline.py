"""``pipeline``: what one delivered event costs in CPU, in process, without network or idle time.

``fanout`` measures the whole server on a shared virtual machine, where each
wake-up from idle is charged as CPU (a ``time.sleep(0.02)`` costs 0.14 ms of
CPU time there) and one pair of sides moves by up to 40 % from run to run. This
scenario takes the network and the waiting out and measures what remains: the
CPU each design spends per frame written, with no socket behind the write. No
server, no database.

``--streams`` streams of ``--steps`` steps; a step's own work is
``--work-yields`` yields to trio (a service doing its work). Every stream
writes a snapshot, a status frame, a frame per step and a terminal frame. Its
writes take a lock of their own and yield once, as hypercorn's send does (a
lock, then the socket write's checkpoint), and count the frame. Three kinds:

- ``bare``: one task per stream, like the bare ``/_bench/live`` route: work,
  build the frame's body, encode it, write it;
- ``handoff``: the same frames, built and encoded by a worker task, handed to a
  relay task and by it to a writer task with the smallest hand-over there is
  (a list and a direct wake-up): three tasks per stream as in the hotel, with
  nothing of the hotel's own. ``handoff - bare`` is what the two extra trips
  through trio's scheduler cost;
- ``real``: the hotel's own parts. ``supervisor.Supervisor`` hires a butler
  per ticket; a worker runs a service through ``services.Context`` with the
  laundry's reporter and saver (``laundry.reporter``, ``laundry.saver``) into a
  ``checkpoints.Checkpoints`` book; a writer per stream subscribes to the line
  and writes every frame from its mailbox with the concierge's own
  ``concierge.write_frames``.
  ``real - handoff`` is what the hotel's code costs per event (the notebook,
  the reports, the mailbox, the checkpoints): the part that is ours to make
  cheaper.

Each measurement runs in a fresh interpreter with the collector off (the
server's own collector is measured by the other scenarios), ``--repeat`` times
in turn; the medians are reported. There is no target: ``fanout`` holds it.
A stream that lost or coalesced a frame fails the run, since its figure would
not compare. ``--instructions`` also counts each kind's machine instructions per
frame under valgrind's cachegrind: a figure the machine's speed does not move.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import trio
import trio.lowlevel
import trio.testing

from bench import report, server
from grandhotel import (
    butler,
    checkpoints,
    concierge,
    config,
    directory,
    laundry,
    reader,
    services,
    supervisor,
    tickets,
)

KINDS = ("bare", "handoff", "real")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The pipeline scenario's options."""
    parser.add_argument("--streams", type=int, default=500, help="streams (tickets) at once")
    parser.add_argument("--steps", type=int, default=200, help="progress frames per stream")
    parser.add_argument(
        "--work-yields", type=int, default=4, help="yields to trio of each step's own work"
    )
    parser.add_argument("--repeat", type=int, default=5, help="measurements of each kind")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count each kind's machine instructions per frame under valgrind's "
        "cachegrind (slow; a figure the machine's speed does not move)",
    )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Socket:
    """A connection's write: a lock of its own and one yield, like hypercorn's send."""

    written = 0
    """Frames written by every socket."""

    def __init__(self) -> None:
        self._lock = trio.Lock()

    async def send(self, frame: str) -> None:
        """Write ``frame`` (to nowhere)."""
        async with self._lock:
            await trio.lowlevel.cancel_shielded_checkpoint()
            Socket.written += 1


async def _work(yields: int) -> None:
    for _ in range(yields):
        await trio.lowlevel.checkpoint()


def _body(ticket: str, kind: str, seq: int, done: int, total: int) -> dict[str, Any]:
    return {
        "type": kind, "ticket": ticket, "seq": seq, "status": "in_progress",
        "done": done, "total": total, "percent": tickets.percent(done, total),
        "message": f"Step {done}/{total} complete", "at": butler.utc_now(),
    }  # fmt: skip


async def _bare(go: trio.Event, steps: int, yields: int) -> None:
    socket, ticket = Socket(), str(uuid.uuid4())
    await go.wait()
    await socket.send(butler.encode(_body(ticket, "snapshot", 1, 0, steps)))
    await socket.send(butler.encode(_body(ticket, "status", 2, 0, steps)))
    for done in range(1, steps + 1):
        await _work(yields)
        await socket.send(butler.encode(_body(ticket, "progress", done + 2, done, steps)))
    await socket.send(butler.encode(_body(ticket, "completed", steps + 3, steps, steps)))


class _Handover:
    """The smallest hand-over between two tasks: a list and a direct wake-up."""

    def __init__(self) -> None:
        self.items: collections.deque[str | None] = collections.deque()
        self.reader = reader.Reader()

    def put(self, item: str | None) -> None:
        self.items.append(item)
        self.reader.wake()

    async def get(self) -> str | None:
        while not self.items:
            await self.reader.park("a hand-over")
        return self.items.popleft()


async def _handoff(go: trio.Event, nursery: trio.Nursery, steps: int, yields: int) -> None:
    to_relay, to_writer, ticket = _Handover(), _Handover(), str(uuid.uuid4())

    async def relay() -> None:
        while True:
            frame = await to_relay.get()
            to_writer.put(frame)
            if frame is None:
                return

    async def write() -> None:
        socket = Socket()
        while (frame := await to_writer.get()) is not None:
            await socket.send(frame)

    nursery.start_soon(relay)
    nursery.start_soon(write)
    await go.wait()
    to_writer.put(butler.encode(_body(ticket, "snapshot", 1, 0, steps)))
    to_relay.put(butler.encode(_body(ticket, "status", 2, 0, steps)))
    for done in range(1, steps + 1):
        await _work(yields)
        to_relay.put(butler.encode(_body(ticket, "progress", done + 2, done, steps)))
    to_relay.put(butler.encode(_body(ticket, "completed", steps + 3, steps, steps)))
    to_relay.put(None)


def _notebook(number: int, steps: int) -> tickets.Notebook:
    ticket_id = uuid.UUID(int=number + 1)
    now = butler.utc_now()
    return tickets.Notebook(
        ticket_id=str(ticket_id), guest=f"room-{number}", service="steps", args={"steps": steps},
        butler=tickets.butler_name(ticket_id), status=tickets.Status.QUEUED, done=0,
        total=steps, message=None, seq=1, attempt=0, created_at=now, updated_at=now,
    )  # fmt: skip


async def _real(
    go: trio.Event,
    staff: supervisor.Supervisor, book: checkpoints.Checkpoints, number: int, steps: int,
    yields: int, coalesced: list[int],
) -> None:  # fmt: skip
    line = staff.hire(_notebook(number, steps), [b""])
    snapshot, box = line.subscribe()

    async def write() -> None:  # as the concierge does, into a socket of its own
        if not await concierge.write_frames(Socket().send, snapshot, box, deadline=10.0):
            raise RuntimeError("a write took over 10 s")
        coalesced.append(box.coalesced)

    async def run(ctx: services.Context) -> dict[str, int]:  # a service, as a developer writes one
        total: int = ctx.args["steps"]
        for step in range(1, total + 1):
            await _work(yields)
            await ctx.progress(step, total, f"Step {step}/{total} complete")
            ctx.checkpoint({"steps_done": step})
        return {"steps": total}

    job = {"ticket_id": line.ticket_id, "job_id": number, "attempt": 1}
    context = services.Context(
        line.ticket_id, {"steps": steps}, 1, laundry.reporter(book, staff.lines.lookup, job),
        save=laundry.saver(book, job),
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        await go.wait()
        await line.report(tickets.Started(1))
        result = await run(context)
        record = {"done": steps, "total": steps, "amount_cents": 0, "result": result}
        await line.report(tickets.Ended(tickets.Status.COMPLETED, record))


async def _measure(kind: str, streams: int, steps: int, yields: int) -> dict[str, Any]:
    coalesced: list[int] = []
    gc.collect()
    gc.freeze()
    gc.disable()
    go = trio.Event()
    measuring: dict[str, float] = {}

    async def start_when_ready() -> None:
        await trio.testing.wait_all_tasks_blocked()  # every stream set up, waiting for go
        measuring.update(started=time.perf_counter(), cpu=_cpu_seconds())
        go.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(start_when_ready)
        if kind == "bare":
            for _ in range(streams):
                nursery.start_soon(_bare, go, steps, yields)
        elif kind == "handoff":
            for _ in range(streams):
                nursery.start_soon(_handoff, go, nursery, steps, yields)
        else:
            lines: directory.Directory[butler.Line] = directory.Directory()

            async def give_up(line: Any, reason: str) -> None:
                raise RuntimeError(f"a butler gave up: {reason}")

            staff = supervisor.Supervisor(
                config.HotelConfig.from_env(env={}), lines, give_up=give_up
            )
            book = checkpoints.Checkpoints(None, 1.0)  # type: ignore[arg-type] # never flushed
            await nursery.start(staff.run)
            async with trio.open_nursery() as tickets_nursery:
                for number in range(streams):
                    tickets_nursery.start_soon(
                        _real, go, staff, book, number, steps, yields, coalesced
                    )
            nursery.cancel_scope.cancel()
    cpu = _cpu_seconds() - measuring["cpu"]
    wall = time.perf_counter() - measuring["started"]
    gc.enable()
    frames = Socket.written
    return {
        "kind": kind,
        "frames": frames,
        "frames_expected": streams * (steps + 3),
        "coalesced": sum(coalesced),
        "cpu_seconds": round(cpu, 3),
        "wall_seconds": round(wall, 3),
        "cpu_us_per_frame": round(1e6 * cpu / max(frames, 1), 2),
    }


def child(kind: str, streams: int, steps: int, yields: int) -> None:
    """One measurement in this fresh interpreter; prints its JSON."""
    print(json.dumps(trio.run(_measure, kind, streams, steps, yields)))


def _run_child(kind: str, options: argparse.Namespace) -> dict[str, Any]:
    counts = (options.streams, options.steps, options.work_yields)
    return server.run_child("bench.pipeline", kind, *map(str, counts), timeout=900)


def _instructions(kind: str, options: argparse.Namespace) -> int:
    """Instructions per frame of ``kind``: two runs under cachegrind, ``--steps``
    and a sixth of it, differenced, so that start-up and set-up cancel out."""
    counts = []
    for steps in (max(1, options.steps // 6), options.steps):
        with tempfile.NamedTemporaryFile(suffix=".cachegrind") as out:
            wrapper = ["valgrind", "--tool=cachegrind", "--cache-sim=no",
                       f"--cachegrind-out-file={out.name}"]  # fmt: skip
            measured = server.run_child(
                "bench.pipeline", kind, str(options.streams), str(steps),
                str(options.work_yields), timeout=3600, wrapper=wrapper,
            )  # fmt: skip
            summary = Path(out.name).read_text().rsplit("summary:", 1)[1]
        counts.append((int(summary.split()[0]), measured["frames"]))
    (few, few_frames), (many, many_frames) = counts
    return round((many - few) / max(1, int(many_frames) - int(few_frames)))


async def run(options: argparse.Namespace) -> report.Result:
    """The pipeline scenario."""
    if min(options.streams, options.steps, options.repeat) < 1 or options.work_yields < 0:
        raise SystemExit("--streams, --steps and --repeat must be >= 1, --work-yields >= 0")
    if options.instructions and shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (Debian: apt-get install valgrind)")
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    failures: list[str] = []
    for round_number in range(options.repeat):
        for kind in KINDS:
            measured = await trio.to_thread.run_sync(_run_child, kind, options)
            print(
                f"[pipeline] round {round_number + 1}/{options.repeat} {kind:8s} "
                f"{measured['cpu_us_per_frame']:7.2f} us per frame "
                f"({measured['frames']:,} frames, {measured['cpu_seconds']} CPU-s)",
                file=sys.stderr,
            )
            if measured["frames"] != measured["frames_expected"] or measured["coalesced"]:
                failures.append(
                    f"{kind} round {round_number + 1}: {measured['frames']:,} frames written "
                    f"of {measured['frames_expected']:,}, {measured['coalesced']} coalesced"
                )
            runs[kind].append(measured)
    per = {kind: statistics.median(m["cpu_us_per_frame"] for m in runs[kind]) for kind in KINDS}
    instructions: dict[str, int] = {}
    if options.instructions:
        for kind in KINDS:
            instructions[kind] = await trio.to_thread.run_sync(_instructions, kind, options)
            print(f"[pipeline] {kind:8s} {instructions[kind]:,} instructions per frame",
                  file=sys.stderr)  # fmt: skip
    metrics = {
        "cpu_us_per_frame": {kind: round(per[kind], 2) for kind in KINDS},
        "trio_handoff_us_per_frame": round(per["handoff"] - per["bare"], 2),
        "hotel_code_us_per_frame": round(per["real"] - per["handoff"], 2),
        "real_over_bare_ratio": report.ratio(per["real"], per["bare"]),
        "instructions_per_frame": instructions or None,
        "handoff_over_bare_ratio": report.ratio(per["handoff"], per["bare"]),
        "runs": runs,
    }
    return report.Result(
        scenario="pipeline",
        parameters={
            "streams": options.streams,
            "steps": options.steps,
            "work_yields": options.work_yields,
            "repeat": options.repeat,
        },
        metrics=metrics,
        failures=failures,
        notes=[
            "in process, no network, collector off: the CPU of the code path alone; "
            "fanout measures the server (target <= 1.25 there)",
            f"of the real side's extra {per['real'] - per['bare']:.1f} us per frame, "
            f"{per['handoff'] - per['bare']:.1f} us are trio's two extra trips "
            f"(handoff - bare) and {per['real'] - per['handoff']:.1f} us the hotel's code "
            "(real - handoff)",
        ],
    )


if __name__ == "__main__":
    child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
