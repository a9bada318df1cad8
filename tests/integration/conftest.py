"""Fixtures for the safe's integration tests: empty databases, a dead port, a relay.

The shared fixtures in ``tests/conftest.py`` give each test a fresh *migrated*
database (``database_url``) and blocking SQL for assertions (``query``). Here:

- ``empty_database``: a factory of fresh databases with nothing in them (for
  migration tests), each dropped after the test.
- ``closed_port_url``: a libpq URL nobody listens on.
- ``relay``: a TCP relay to the PostgreSQL server whose open links can be frozen,
  which is how a half-open connection (a peer that stopped answering without
  closing) looks from the client's side.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
import trio

from integration import support

ADMIN_URL = os.environ.get(
    "GRANDHOTEL_TEST_DATABASE_URL", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)


def _admin(statement: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


@pytest.fixture
def empty_database() -> Iterator[Callable[[], str]]:
    """Call it to get the libpq URL of a new, empty database (dropped after the test)."""
    created: list[str] = []

    def create() -> str:
        name = f"grandhotel_empty_{uuid.uuid4().hex[:12]}"
        _admin(f"CREATE DATABASE {name}")
        created.append(name)
        return psycopg.conninfo.make_conninfo(ADMIN_URL, dbname=name)

    yield create
    for name in created:
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def closed_port_url() -> str:
    """A libpq URL for 127.0.0.1 on a port that was just free (nobody listens)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return psycopg.conninfo.make_conninfo(ADMIN_URL, host="127.0.0.1", port=str(port))


@pytest.fixture
async def relay(nursery: trio.Nursery) -> support.Relay:
    """A running ``Relay`` to the test server (stopped with the test's nursery)."""
    the_relay = support.Relay(ADMIN_URL)
    await nursery.start(the_relay.run)
    return the_relay
