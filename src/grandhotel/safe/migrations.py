"""Applies the numbered migrations, once, even with several servers starting.

Every run takes a transaction-scoped advisory lock first, so two servers
starting at once apply each migration exactly once: the second waits, then finds
nothing left to do. Migrations are append-only; ``schema.sql`` is their sum.
"""

from __future__ import annotations

import logging
from typing import Final

from grandhotel.safe import pool, sql

logger = logging.getLogger(__name__)

LOCK_KEY: Final = 0x6772616E64686F74  # "grandhot"


async def migrate(connections: pool.Pool) -> list[int]:
    """Apply the migrations this database lacks; return their versions."""
    applied_now = []
    async with connections.connection() as conn, conn.transaction():
        await conn.execute(sql.QUERIES["migrations_lock"], {"key": LOCK_KEY})
        await conn.execute(sql.QUERIES["migrations_table"])
        cursor = await conn.execute(sql.QUERIES["migrations_applied"])
        done = {version for (version,) in await cursor.fetchall()}
        for version, name, statements in sql.migrations():
            if version in done:
                continue
            await conn.execute(statements)
            await conn.execute(sql.QUERIES["migration_done"], {"version": version, "name": name})
            logger.info("applied migration %04d_%s", version, name)
            applied_now.append(version)
    return applied_now
