"""``grandhotel bench SCENARIO [options]`` / ``python -m bench SCENARIO [options]``.

Each scenario starts its own server on a fresh database (or drives ``--url``),
prints a status line every second, and writes ``<scenario>-<time>.json``,
``.md`` and ``.png`` to ``--out`` (``bench/results/``). The exit code is 0 when
every correctness check passed, 1 when one failed (a lost, duplicated or
out-of-order event, a ticket that never ended), 2 for bad options, and 3 with
``--fail-on-target`` when a performance target was missed.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib
import sys
from pathlib import Path
from types import ModuleType

import trio

from bench import driver, report, server

SCENARIOS = {
    "watch": "N tickets, one WebSocket watcher each: latency, loss, memory, CPU",
    "intake": "POST /tickets as fast as the server takes them, beside a bare route",
    "fanout": "server CPU per delivered event, beside a bare hypercorn WebSocket route",
    "idle": "100,000 idle butlers in one process: bytes per butler, hire rate",
    "chaos": "watch with crashing butlers and watchers that disconnect and resume",
    "peer": "the same workflow on Celery + Redis with polling, side by side",
    "pipeline": "CPU per event of the hotel's code path in process, without network or idle",
}


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"bench.{name}")


def build_parser() -> argparse.ArgumentParser:
    """The command line: a scenario and its options."""
    parser = argparse.ArgumentParser(
        prog="grandhotel bench", description=(__doc__ or "").splitlines()[0]
    )
    scenarios = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    for name, help_text in SCENARIOS.items():
        sub = scenarios.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--out",
            type=Path,
            default=report.DEFAULT_OUT,
            help="results folder (default bench/results)",
        )
        sub.add_argument(
            "--driver-gc",
            choices=("tuned", "default"),
            default="tuned",
            help="the driver's own garbage collector: tuned (young collections only, "
            "as the server's; default) or Python's default settings (see bench/README.md)",
        )
        sub.add_argument(
            "--admin-url",
            default=server.default_admin_url(),
            help="PostgreSQL admin connection for the fresh database "
            "(default: GRANDHOTEL_BENCH_ADMIN_URL, then the tests' server, then 127.0.0.1:5432)",
        )
        sub.add_argument(
            "--fail-on-target",
            action="store_true",
            help="exit 3 when a performance target is missed",
        )
        _module(name).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one scenario; write its results; the exit code says whether it passed."""
    options = build_parser().parse_args(argv)
    module = _module(options.scenario)
    started_at = datetime.datetime.now(datetime.UTC)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    options.out = Path(options.out)
    options.log_path = options.out / f"{options.scenario}-{stamp}.server.log"
    code = report.code_version()
    limit = server.raise_fd_limit()
    collector = driver.DriverCollector(tuned=options.driver_gc == "tuned")
    print(
        f"bench {options.scenario}: open-file limit {limit}; results in {options.out}",
        file=sys.stderr,
    )
    try:
        result: report.Result = trio.run(collector.run, functools.partial(module.run, options))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finished_at = datetime.datetime.now(datetime.UTC)
    result.metrics["driver_gc"] = collector.report()
    result.parameters["driver_gc"] = options.driver_gc
    paths = report.write(
        result, options.out, started_at=started_at, finished_at=finished_at, code=code
    )
    print(_summary(result, paths))
    if not result.passed:
        return 1
    if options.fail_on_target and not all(t.met for t in result.targets):
        return 3
    return 0


def _summary(result: report.Result, paths: dict[str, Path]) -> str:
    lines = [f"bench {result.scenario}: {'PASSED' if result.passed else 'FAILED'}"]
    for target in result.targets:
        rule = ">=" if target.higher_is_better else "<="
        value = "-" if target.value is None else f"{target.value:,.4g}"
        lines.append(
            f"  target {target.name}: {value} {target.unit} (want {rule} {target.bound:g}) "
            f"{'met' if target.met else 'MISSED'}"
        )
    for failure in result.failures:
        lines.append(f"  FAILURE: {failure}")
    for note in result.notes:
        lines.append(f"  note: {note}")
    lines += [f"  {kind}: {path}" for kind, path in paths.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
