"""Migrations (``safe/migrations.py``) against fresh, empty databases.

What they must do: apply each numbered migration exactly once, even when
several servers migrate at once, and add up to exactly ``schema.sql``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest
import trio

from grandhotel.safe import bridge, migrations, pool, sql

VERSIONS = [version for version, _, _ in sql.migrations()]
BOOK = "grandhotel_migrations"


@pytest.fixture
async def make_pool() -> AsyncIterator[Callable[[str], pool.Pool]]:
    pools: list[pool.Pool] = []

    def make(url: str) -> pool.Pool:
        pools.append(pool.Pool(url, size=1, connect_timeout_seconds=5))
        return pools[-1]

    yield make
    for each in pools:
        await each.aclose()


def rows(url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params or None)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def test_there_is_a_first_migration() -> None:
    assert VERSIONS[0] == 1
    assert sorted(set(VERSIONS)) == VERSIONS


async def test_migrate_applies_everything_once_then_nothing(
    empty_database: Callable[[], str], make_pool: Callable[[str], pool.Pool]
) -> None:
    url = empty_database()
    connections = make_pool(url)
    assert await migrations.migrate(connections) == VERSIONS
    names = [(version, name) for version, name, _ in sql.migrations()]
    assert rows(url, "SELECT version, name FROM grandhotel_migrations ORDER BY version") == names
    tables = rows(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert {"guests", "tickets", "jobs", "service_records", "nodes"} <= {t for (t,) in tables}

    assert await migrations.migrate(connections) == []
    assert rows(url, "SELECT version, name FROM grandhotel_migrations ORDER BY version") == names


async def test_concurrent_migrations_apply_each_version_exactly_once(
    empty_database: Callable[[], str], make_pool: Callable[[str], pool.Pool]
) -> None:
    url = empty_database()
    results: list[list[int]] = []

    async def one_server() -> None:
        results.append(await migrations.migrate(make_pool(url)))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(one_server)
    assert sorted(results) == [[], [], VERSIONS]
    assert rows(
        url, "SELECT version, count(*) FROM grandhotel_migrations GROUP BY 1 ORDER BY 1"
    ) == [(version, 1) for version in VERSIONS]


async def test_migrate_holds_the_lock_while_another_server_migrates(
    empty_database: Callable[[], str], make_pool: Callable[[str], pool.Pool]
) -> None:
    # A server that holds the advisory lock (mid-migration) makes the next one wait.
    url = empty_database()
    holder = await bridge.TrioConnection.connect(url, autocommit=True)
    try:
        await holder.execute("BEGIN")
        await holder.execute(sql.QUERIES["migrations_lock"], {"key": migrations.LOCK_KEY})
        with trio.move_on_after(0.3) as scope:
            await migrations.migrate(make_pool(url))
        assert scope.cancelled_caught, "migrate() ran although another server held the lock"
        await holder.execute("COMMIT")
    finally:
        await holder.close()
    assert await migrations.migrate(make_pool(url)) == VERSIONS


def catalog(url: str) -> dict[str, set[tuple[Any, ...]]]:
    """Columns, indexes, constraints and sequences of ``public``, minus the book."""
    return {
        "columns": set(
            rows(
                url,
                "SELECT table_name, column_name, data_type, udt_name, column_default,"
                " is_nullable, character_maximum_length, numeric_precision"
                " FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name <> %s",
                BOOK,
            )
        ),
        "indexes": set(
            rows(
                url,
                "SELECT tablename, indexname, indexdef FROM pg_indexes"
                " WHERE schemaname = 'public' AND tablename <> %s",
                BOOK,
            )
        ),
        "constraints": set(
            rows(
                url,
                "SELECT c.conrelid::regclass::text, c.conname, c.contype,"
                " pg_get_constraintdef(c.oid)"
                " FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace"
                " WHERE n.nspname = 'public' AND c.conrelid::regclass::text <> %s",
                BOOK,
            )
        ),
        "sequences": set(
            rows(
                url,
                "SELECT sequence_name, data_type, start_value, increment"
                " FROM information_schema.sequences WHERE sequence_schema = 'public'",
            )
        ),
    }


def differences(
    left: dict[str, set[tuple[Any, ...]]], right: dict[str, set[tuple[Any, ...]]]
) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    """What only one side has, per kind (empty when the catalogs agree)."""
    found = {}
    for kind in left.keys() | right.keys():
        only_left = sorted(left.get(kind, set()) - right.get(kind, set()), key=repr)
        only_right = sorted(right.get(kind, set()) - left.get(kind, set()), key=repr)
        if only_left or only_right:
            found[kind] = {"only_left": only_left, "only_right": only_right}
    return found


async def apply_schema_sql(url: str) -> None:
    conn = await bridge.TrioConnection.connect(url, autocommit=True)
    try:
        await conn.execute(sql.schema())
    finally:
        await conn.close()


async def test_migrations_add_up_to_schema_sql(
    empty_database: Callable[[], str], make_pool: Callable[[str], pool.Pool]
) -> None:
    migrated, from_schema = empty_database(), empty_database()
    await migrations.migrate(make_pool(migrated))
    await apply_schema_sql(from_schema)

    expected = catalog(from_schema)
    assert all(expected.values()), "the catalog query found nothing to compare"
    assert differences(catalog(migrated), expected) == {}


async def test_catalog_comparison_notices_a_changed_default(
    empty_database: Callable[[], str],
) -> None:
    # The comparison itself can fail: one changed default is a difference.
    left, right = empty_database(), empty_database()
    await apply_schema_sql(left)
    await apply_schema_sql(right)
    rows(right, "ALTER TABLE jobs ALTER COLUMN priority SET DEFAULT 5")
    found = differences(catalog(left), catalog(right))
    assert list(found) == ["columns"]
    assert [row[:2] for row in found["columns"]["only_right"]] == [("jobs", "priority")]
