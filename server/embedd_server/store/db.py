"""The control-plane pool and its versioned migrations."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

log = structlog.get_logger(__name__)

# Any constant works; it only has to be the same in every replica.
_MIGRATION_LOCK = 0x656D6264  # "embd"
_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def _migrations() -> list[tuple[int, str, str]]:
    files = resources.files("embedd_server.store") / "migrations"
    found = []
    for entry in files.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


async def migrate(conn: asyncpg.Connection[Any] | PoolConnectionProxy[Any]) -> list[str]:
    """Applies pending migrations in order, one transaction each, under an advisory lock
    so that replicas starting together do not race. Returns the names applied."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in _migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            applied.append(name)
            log.info("migration applied", migration=name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied


async def _no_reset(conn: asyncpg.Connection[Any]) -> None:
    return None


async def create_pool(dsn: str, *, min_size: int, max_size: int) -> asyncpg.Pool[Any]:
    """The control-plane pool, with migrations applied before it is handed out."""
    # No RESET ALL on release: the control plane never changes session state outside a
    # transaction (SET LOCAL only), and the reset would cost every query a round trip.
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, reset=_no_reset)
    async with pool.acquire() as conn:
        await migrate(conn)
    return pool
