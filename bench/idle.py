"""``idle``: 100,000 idle butlers in one process: bytes per butler, hire rate.

In-process, no server: the real ``supervisor.Supervisor`` (with a no-op
``give_up``) runs in a nursery and hires ``--butlers`` notebooks with
``supervisor.hire(notebook, [token_hash])``; each butler then waits on its
inbox. The RSS growth (``/proc/self/statm``) over the count is the bytes per
butler, notebook included; the hires per second count until every butler task
is started and blocked.

Side by side in the same run, each measurement in a fresh interpreter (so that
no measurement reuses memory another one freed):

- ``butlers``: the above;
- ``bare``: a bare trio task per item, with its own nursery and a memory
  channel pair (the sending end kept, as a directory would), waiting on receive;
- ``notebooks``: the notebooks and token hashes alone (the ticket's data,
  which any design must hold), so ``butlers - notebooks`` is what a butler adds.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import sys
import time
import uuid
from typing import Any

import trio
import trio.lowlevel
import trio.testing

from bench import report, server

KINDS = ("notebooks", "bare", "butlers")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The idle scenario's options."""
    parser.add_argument("--butlers", type=int, default=100_000, help="items per measurement")
    parser.add_argument(
        "--repeat", type=int, default=1, help="measure each kind this many times (median)"
    )


def _notebook(number: int) -> Any:
    from grandhotel import tickets

    ticket_id = uuid.UUID(int=number + 1)
    now = "2026-01-01T00:00:00.000Z"
    return tickets.Notebook(
        ticket_id=str(ticket_id),
        guest=f"room-{number}",
        service="laundry",
        args={"suits": 10},
        butler=tickets.butler_name(ticket_id),
        status=tickets.Status.QUEUED,
        done=0,
        total=10,
        message=None,
        seq=1,
        attempt=0,
        created_at=now,
        updated_at=now,
    )


def _token_hash(number: int) -> bytes:
    return hashlib.sha256(number.to_bytes(8, "big")).digest()


async def _measure(kind: str, count: int) -> dict[str, Any]:
    from grandhotel import config, directory, supervisor

    kept: list[Any] = []
    gc.collect()
    await trio.lowlevel.checkpoint()
    before = server.self_rss_bytes()
    started = time.perf_counter()
    if kind == "notebooks":
        kept.extend((_notebook(i), [_token_hash(i)]) for i in range(count))
        hired = time.perf_counter()
        on_duty = hired
    elif kind == "bare":
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                send, receive = trio.open_memory_channel[Any](64)
                kept.append(send)
                nursery.start_soon(_bare_item, receive)
            hired = time.perf_counter()
            await trio.testing.wait_all_tasks_blocked()
            on_duty = time.perf_counter()
            after = server.self_rss_bytes()
            nursery.cancel_scope.cancel()
    else:
        settings = config.HotelConfig.from_env(env={})
        lines: directory.Directory[Any] = directory.Directory()

        async def give_up(line: Any, reason: str) -> None:
            """Nothing to fail here."""

        hotel_staff = supervisor.Supervisor(settings, lines, give_up=give_up)
        async with trio.open_nursery() as nursery:
            await nursery.start(hotel_staff.run)
            for i in range(count):
                hotel_staff.hire(_notebook(i), [_token_hash(i)])
            hired = time.perf_counter()
            await trio.testing.wait_all_tasks_blocked()
            on_duty = time.perf_counter()
            after = server.self_rss_bytes()
            if hotel_staff.on_duty != count:
                raise RuntimeError(f"{hotel_staff.on_duty} butlers on duty, wanted {count}")
            nursery.cancel_scope.cancel()
    if kind == "notebooks":
        after = server.self_rss_bytes()
    return {
        "kind": kind,
        "count": count,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "bytes_per_item": round((after - before) / count),
        "hire_seconds": round(hired - started, 3),
        "until_all_blocked_seconds": round(on_duty - started, 3),
        "items_per_second": round(count / max(on_duty - started, 1e-9)),
    }


async def _bare_item(receive: trio.MemoryReceiveChannel[Any]) -> None:
    async with trio.open_nursery():
        await receive.receive()


def child(kind: str, count: int) -> None:
    """One measurement in this fresh interpreter; prints its JSON."""
    print(json.dumps(trio.run(_measure, kind, count)))


def _run_child(kind: str, count: int) -> dict[str, Any]:
    return server.run_child("bench.idle", kind, str(count))


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


async def run(options: argparse.Namespace) -> report.Result:
    """The idle scenario."""
    count = options.butlers
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for round_number in range(max(1, options.repeat)):
        for kind in KINDS:
            print(f"[idle] round {round_number + 1}: {kind} x {count:,} ...", file=sys.stderr)
            measured = await trio.to_thread.run_sync(_run_child, kind, count)
            print(
                f"[idle]   {measured['bytes_per_item']:,} bytes each, "
                f"{measured['items_per_second']:,}/s",
                file=sys.stderr,
            )
            runs[kind].append(measured)
    per = {kind: _median([m["bytes_per_item"] for m in runs[kind]]) for kind in KINDS}
    rate = {kind: _median([m["items_per_second"] for m in runs[kind]]) for kind in KINDS}
    metrics = {
        "bytes_per_butler": round(per["butlers"]),
        "bytes_per_bare_task": round(per["bare"]),
        "bytes_per_notebook": round(per["notebooks"]),
        "bytes_a_butler_adds_to_its_notebook": round(per["butlers"] - per["notebooks"]),
        "butler_over_bare_ratio": round(per["butlers"] / per["bare"], 3) if per["bare"] else None,
        "hires_per_second": round(rate["butlers"]),
        "bare_tasks_per_second": round(rate["bare"]),
        "runs": runs,
    }
    return report.Result(
        scenario="idle",
        parameters={"butlers": count, "repeat": options.repeat},
        metrics=metrics,
        targets=[
            report.Target(f"bytes per idle butler at {count:,}", per["butlers"], 8192, "bytes")
        ],
    )


if __name__ == "__main__":
    child(sys.argv[1], int(sys.argv[2]))
