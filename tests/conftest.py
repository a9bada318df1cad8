"""Shared fixtures: a real PostgreSQL, a fresh database per test, a real hotel.

The database server comes from ``GRANDHOTEL_TEST_DATABASE_URL`` (default: the
local server as ``postgres``). If it does not answer, every database test
errors: a missing PostgreSQL is a failure, never a skip.
"""

from __future__ import annotations

import logging
import os
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest
import trio

import helpers
from grandhotel import config, hotel, services, tokens
from grandhotel.safe import pool, vault

ADMIN_URL = os.environ.get(
    "GRANDHOTEL_TEST_DATABASE_URL", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
TEMPLATE = f"grandhotel_template_{os.getpid()}"


def _url_for(dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(ADMIN_URL, dbname=dbname)


def _admin(sql: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """A database with every migration applied, cloned for each test."""
    try:
        _admin(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
    except psycopg.OperationalError as ex:
        pytest.fail(f"PostgreSQL is required for these tests and did not answer: {ex}")
    _admin(f"CREATE DATABASE {TEMPLATE}")

    async def migrate() -> None:
        connections = pool.Pool(_url_for(TEMPLATE), size=1, connect_timeout_seconds=5)
        await vault.Vault(connections).migrate()
        await connections.aclose()

    trio.run(migrate)
    yield TEMPLATE
    _admin(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")


@pytest.fixture
def database_url(template_database: str) -> Iterator[str]:
    """A fresh, migrated database for one test; its libpq URL."""
    name = f"grandhotel_test_{uuid.uuid4().hex[:12]}"
    _admin(f"CREATE DATABASE {name} TEMPLATE {template_database}")
    yield _url_for(name)
    _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def query(database_url: str) -> Callable[..., list[tuple[Any, ...]]]:
    """Run SQL against the test's database (blocking; for assertions only)."""

    def run(sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(database_url, autocommit=True) as conn:
            cursor = conn.execute(sql, params or None)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    return run


def test_settings(database_url: str, **overrides: Any) -> config.HotelConfig:
    """Settings for a hotel under test: fast steps, port 0, quick retries."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "host": "127.0.0.1",
        "port": 0,
        "node_name": f"test-{uuid.uuid4().hex[:6]}",
        "laundry_step_seconds": 0.01,
        "retry_base_seconds": 0.01,
        "retry_max_seconds": 0.05,
        "poll_interval_seconds": 0.2,
        "shutdown_grace_seconds": 2.0,
        "operator_token": "operator-secret-for-tests",
        # The tests' clients run in the server's own trio loop, so its lag is
        # theirs too: the desk's pacing is off here and tested on its own
        # (tests/unit/test_pace.py, tests/acceptance/test_live_first.py).
        "live_lag_target_ms": 0.0,
    }
    values.update(overrides)
    return config.HotelConfig.from_env(env={}, **values)


StartHotel = Callable[..., Awaitable[tuple[hotel.Hotel, str]]]


@pytest.fixture
async def start_hotel(nursery: trio.Nursery, database_url: str) -> AsyncIterator[StartHotel]:
    """Start a real hotel (hypercorn on 127.0.0.1:0) in the test's nursery.

    Returns ``(hotel, base_url)``. Keyword arguments override settings; pass
    ``catalogue=`` to offer extra services.
    """
    started: list[hotel.Hotel] = []

    async def start(
        catalogue: services.Catalogue | None = None, **overrides: Any
    ) -> tuple[hotel.Hotel, str]:
        settings = test_settings(overrides.pop("database_url", database_url), **overrides)
        the_hotel = hotel.Hotel(settings, catalogue, rng=random.Random(7))
        binds = await nursery.start(the_hotel.run)
        started.append(the_hotel)
        return the_hotel, binds[0]

    yield start
    for the_hotel in started:
        the_hotel.stop()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(autouse=True)
def no_token_in_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test: no token minted during it appears in any log line it caused.

    grandhotel's own loggers log at DEBUG for the check; every other logger at
    its usual level. Server subprocesses are checked by ``servers.ServerProcess``.
    """
    minted: list[str] = []
    real_mint = tokens.mint

    def mint() -> str:
        token = real_mint()
        minted.append(token)
        return token

    monkeypatch.setattr(tokens, "mint", mint)
    collect = _Collect()
    ours = logging.getLogger("grandhotel")
    level = ours.level
    ours.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(collect)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(collect)
        ours.setLevel(level)
    text = "\n".join(collect.lines)
    leaked = [token for token in minted + helpers.TOKENS if token in text]
    helpers.TOKENS.clear()
    assert not leaked, f"{len(leaked)} token(s) appear in the logs"
