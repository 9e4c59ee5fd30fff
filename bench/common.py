"""Shared bench plumbing: a throw-away PostgreSQL, the server as a subprocess, RSS sampling."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
from embedd_server.devtools.pg import LocalPostgres, create_database, create_role
from embedd_server.devtools.serverproc import ServerProcess

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def local_postgres() -> Iterator[LocalPostgres]:
    with tempfile.TemporaryDirectory(prefix="embedd-bench-") as tmp:
        pg = LocalPostgres(Path(tmp) / "pg", port=0, fast=True)
        pg.start()
        try:
            yield pg
        finally:
            pg.stop()


async def prepare_databases(pg: LocalPostgres, user_password: str) -> tuple[str, str]:
    """(control-plane DSN, source DSN as owner); role `bench_user` may read and create.
    Benchmarks talk to PostgreSQL directly (`backend_port`), not through the dev TLS front
    that LocalPostgres adds for SSL tests: production has no such proxy."""
    admin = pg.superuser_dsn(direct=True)
    await create_database(admin, "bench_control", with_vector=False)
    await create_database(admin, "bench_source", with_vector=True)
    await create_role(admin, "bench_user", user_password)
    conn = await asyncpg.connect(pg.superuser_dsn("bench_source", direct=True))
    try:
        await conn.execute("GRANT CREATE ON SCHEMA public TO bench_user")
    finally:
        await conn.close()
    return pg.superuser_dsn("bench_control", direct=True), pg.superuser_dsn("bench_source", direct=True)


async def sample_until(server: ServerProcess, done: asyncio.Event, every_s: float = 0.05) -> None:
    while not done.is_set():
        server.sample_rss()
        await asyncio.sleep(every_s)
