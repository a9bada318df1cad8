"""``grandhotel serve`` and ``grandhotel migrate``: the command line.

With no database configured (no ``--database-url``, ``GRANDHOTEL_DATABASE_URL``
or ``PG*`` variable) and nothing answering at libpq's default, ``serve`` starts
an embedded PostgreSQL (the ``embedded`` extra) and says so first thing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence

import trio

from grandhotel import config, doorman, embedded, guest, hotel, housekeeping
from grandhotel.safe import vault

logger = logging.getLogger("grandhotel")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grandhotel", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the hotel (HTTP + WebSocket server)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8000; 0 picks one)")
    serve.add_argument("--node-name", help="this node's name in the safe (default host:pid)")
    migrate = commands.add_parser("migrate", help="apply the safe's migrations and exit")
    commands.add_parser(
        "bench", help="run a benchmark scenario (from a source checkout; see bench/README.md)",
        add_help=False,
    )  # fmt: skip
    watch = commands.add_parser("watch", help="print a ticket's live events (a guest)")
    watch.add_argument(
        "url", help="the ticket's ws:// URL, e.g. ws://127.0.0.1:8000/tickets/ID/live"
    )
    watch.add_argument("token", help="the ticket's token (from the 201)")
    watch.add_argument("--cancel", action="store_true", help="cancel the ticket first")
    for sub in (serve, migrate):
        sub.add_argument(
            "--database-url",
            help="libpq URL (default: GRANDHOTEL_DATABASE_URL, then libpq's PG* defaults)",
        )
        sub.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    return parser


def _configured_database(settings: config.HotelConfig) -> bool:
    return bool(settings.database_url) or any(name.startswith("PG") for name in os.environ)


@contextlib.contextmanager
def _database(settings: config.HotelConfig) -> Iterator[config.HotelConfig]:
    """The settings with a database that answers, starting an embedded one if needed."""
    if _configured_database(settings) or embedded.libpq_default_answers():
        yield settings
        return
    data_dir = embedded.default_data_dir()
    print(f"grandhotel: no PostgreSQL configured or answering; starting an embedded one "
          f"in {data_dir}", flush=True)  # fmt: skip
    with embedded.embedded_postgres(data_dir) as url:
        print(f"grandhotel: embedded PostgreSQL ready at {url}", flush=True)
        yield dataclasses.replace(settings, database_url=url)


async def _serve(settings: config.HotelConfig) -> None:
    the_hotel = hotel.Hotel(settings)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(the_hotel.run)
            # Start-up objects live forever: keep them out of every collection, and
            # collect young objects less often (thousands of connections churn them).
            housekeeping.tune(settings.gc_gen0_threshold, settings.gc_gen1_threshold)
            print(f"grandhotel: serving on {', '.join(binds)} as node {settings.node_name}",
                  flush=True)  # fmt: skip
            async for signum in signals:
                logger.info("received %s: stopping gracefully", signal.Signals(signum).name)
                the_hotel.stop()
                break
    logger.info("stopped")


async def _migrate(settings: config.HotelConfig) -> None:
    the_hotel = hotel.Hotel(settings)
    try:
        applied = await the_hotel.safe.migrate()
    finally:
        await the_hotel.pool.aclose()
    print(f"grandhotel: applied {len(applied)} migration(s): {applied}" if applied
          else "grandhotel: the safe is up to date")  # fmt: skip


def _bench(argv: list[str]) -> int:
    """``grandhotel bench ...``: the harness lives in the repository's ``bench/``."""
    sys.path.insert(0, os.getcwd())
    try:
        bench_cli = importlib.import_module("bench.cli")
    except ImportError:
        print(
            "grandhotel: run `grandhotel bench` from a grandhotel source checkout "
            "(the harness is its bench/ folder), with the bench extra installed",
            file=sys.stderr,
        )
        return 2
    result: int = bench_cli.main(argv)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``grandhotel`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    options = _parser().parse_args(argv)
    if options.command == "watch":
        return guest.main(options.url, options.token, options.cancel)
    logging.basicConfig(
        level=options.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    overrides = {
        "database_url": options.database_url,
        "host": getattr(options, "host", None),
        "port": getattr(options, "port", None),
        "node_name": getattr(options, "node_name", None),
    }
    code = 0
    try:
        settings = config.HotelConfig.from_env(**overrides)
        with _database(settings) as ready:
            trio.run(_serve if options.command == "serve" else _migrate, ready)
    except* (ValueError, embedded.EmbeddedUnavailable) as group:
        print(f"grandhotel: {_first(group)}", file=sys.stderr)
        code = 2
    except* vault.SafeUnavailable as group:
        print(f"grandhotel: cannot reach the database: {_first(group)}", file=sys.stderr)
        code = 3
    except* doorman.CannotListen as group:
        print(f"grandhotel: {_first(group)}", file=sys.stderr)
        code = 4
    return code


def _first(group: BaseExceptionGroup[Exception]) -> BaseException:
    """The first error of a group, however deep the nurseries nested it."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


if __name__ == "__main__":
    sys.exit(main())
