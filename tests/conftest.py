"""Session fixtures: one real PostgreSQL, one server (in-process, port 0), one Envoy."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from embedd_server import app
from embedd_server.config import Settings, load_settings
from embedd_server.devtools.demo_data import SCHEMA, products
from embedd_server.devtools.envoy import EnvoyProcess, render_config
from embedd_server.devtools.pg import LocalPostgres, create_database, create_role
from embedd_server.logs import configure_logging

from tests.harness import (
    MODES,
    ROOT,
    UNTHROTTLED,
    CountingRegistry,
    Org,
    SwitchableChecker,
    assert_no_lua_errors,
    delete_vector_tables,
    random_secret_key,
    unexpected_tracebacks,
)


@pytest.fixture(scope="session")
def log_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every log line the server writes during the session (checked for secrets)."""
    return tmp_path_factory.mktemp("logs") / "server.log"


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPostgres]:
    server = LocalPostgres(tmp_path_factory.mktemp("pg") / "data", port=0, fast=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def control_dsn(pg: LocalPostgres) -> str:
    await create_database(pg.superuser_dsn(), "embedd_control", with_vector=False)
    return pg.superuser_dsn("embedd_control", direct=True)  # the TLS front is for user databases


@pytest.fixture(scope="session")
def server_settings(control_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return load_settings(
        database_url=control_dsn,
        grpc_host="127.0.0.1",
        grpc_port=0,
        secret_key=random_secret_key(),
        connect_timeout_s=5.0,
        cdc_sweep_s=2.0,
        sync_max_backoff_s=4.0,
        # Batch-strategy fills (docs/batch.md): small batches, polled often (the fake OpenAI's
        # batch clock runs fast in those tests).
        batch_rows_per_batch=200,
        batch_poll_s=0.1,
        # Managed mode: real Qdrant, in embedded local mode (a folder of the session's own).
        qdrant_path=tmp_path_factory.mktemp("qdrant"),
    )


@pytest.fixture(scope="session")
def checker(server_settings: Settings) -> SwitchableChecker:
    """The session server's connection checker: the real one, replaceable for a block."""
    return SwitchableChecker(app.default_checker(server_settings))


@pytest.fixture(scope="session")
async def service(
    server_settings: Settings, checker: SwitchableChecker, log_path: Path
) -> AsyncIterator[app.Service]:
    log_file = log_path.open("a", buffering=1)
    configure_logging("DEBUG", "json", stream=log_file)
    svc = await app.start(server_settings, checker=checker, embedders=CountingRegistry)
    yield svc
    await svc.stop(1.0)
    log_file.close()
    # No request of the session - hostile ones included - made the server fail on its side.
    leftovers = unexpected_tracebacks(log_path.read_text())  # noqa: ASYNC240 - once, at the end
    assert not leftovers, "tracebacks in the server log:\n" + "\n".join(leftovers[:20])


@pytest.fixture(scope="session")
async def envoy(
    service: app.Service, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[EnvoyProcess]:
    config = render_config(
        ROOT / "envoy" / "envoy.yaml",
        grpc_host="127.0.0.1",
        grpc_port=service.port,
        http_host="127.0.0.1",
        http_port=0,
        admin_port=0,
        descriptor=ROOT / "envoy" / "embedd.binpb",
    )
    proc = EnvoyProcess(config, work_dir=tmp_path_factory.mktemp("envoy"))
    # In a thread: Envoy's start waits for its first health checks, which the in-process
    # server answers from this loop.
    await asyncio.to_thread(proc.start)
    try:
        yield proc
    finally:
        await asyncio.to_thread(proc.stop)
    assert_no_lua_errors(proc.log_path)  # a Lua runtime error shows nowhere else


@pytest.fixture(scope="session")
async def rest(envoy: EnvoyProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=envoy.http_url, timeout=30) as client:
        yield client


@pytest.fixture
async def org(service: app.Service, rest: httpx.AsyncClient) -> AsyncIterator[Org]:
    """A new organisation per test: tests never see each other's resources. Its vector
    tables are deleted afterwards, vectors and all, so the background sync does not keep
    working for finished tests."""
    org_id = await service.orgs.create_org(f"test-{secrets.token_hex(4)}", requests_per_minute=UNTHROTTLED)
    _, key = await service.orgs.create_api_key(org_id, "full", "full")
    _, read_key = await service.orgs.create_api_key(org_id, "reader", "read_only")
    made = Org(org_id, key, read_key, f"127.0.0.1:{service.port}", rest)
    yield made
    await delete_vector_tables(made.grpc_target, key)


PRODUCT_ROWS = 500


@dataclass(frozen=True)
class UserDb:
    """A user's database as the seed describes it, plus variants that fail the checks."""

    host: str
    port: int
    database: str
    user: str
    password: str
    reader: str  # may SELECT, lacks CREATE on public
    reader_password: str
    novector_db: str  # a database without the vector extension
    owner_dsn: str

    def credentials(self, **overrides: object) -> dict[str, object]:
        creds: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "database": self.database,
            "user": self.user,
            "password": self.password,
        }
        creds.update(overrides)
        return creds


@pytest.fixture(scope="session")
async def user_db(pg: LocalPostgres) -> UserDb:
    admin = pg.superuser_dsn()
    user_pw, reader_pw = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    await create_role(admin, "embedd_user", user_pw)
    await create_role(admin, "reader_user", reader_pw)
    await create_database(admin, "shop", with_vector=True)
    await create_database(admin, "novector", with_vector=False)
    conn = await asyncpg.connect(pg.superuser_dsn("shop"))
    try:
        await conn.execute(SCHEMA)
        if not await conn.fetchval("SELECT count(*) FROM products"):
            await conn.copy_records_to_table(
                "products",
                records=[tuple(p) for p in products(PRODUCT_ROWS)],
                columns=["id", "name", "description", "category", "price", "in_stock"],
            )
        await conn.execute(
            "GRANT SELECT ON products TO embedd_user, reader_user;"
            "GRANT CREATE ON SCHEMA public TO embedd_user;"
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC;"
        )
    finally:
        await conn.close()
    return UserDb(
        host="127.0.0.1",
        port=pg.port,
        database="shop",
        user="embedd_user",
        password=user_pw,
        reader="reader_user",
        reader_password=reader_pw,
        novector_db="novector",
        owner_dsn=pg.superuser_dsn("shop"),
    )


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """Where a test's vector tables keep their vectors: a test that takes it runs in both modes."""
    return str(request.param)


ITEM_ROWS = 200


@pytest.fixture
async def source(user_db: UserDb) -> AsyncIterator[tuple[str, asyncpg.Connection[Any]]]:
    """A fresh source table `items_<hex>` owned by the test, and an owner connection to it."""
    name = f"items_{secrets.token_hex(3)}"
    conn = await asyncpg.connect(user_db.owner_dsn)
    await conn.execute(
        f"CREATE TABLE {name} (id int PRIMARY KEY, title text, body text, price numeric(8,2),"
        " updated_at timestamptz NOT NULL DEFAULT now());"
        f"INSERT INTO {name} SELECT g, 'item ' || g, 'body of item ' || g, g"
        f" FROM generate_series(1, {ITEM_ROWS}) g;"
        f"GRANT SELECT ON {name} TO embedd_user;"
    )
    try:
        yield name, conn
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {name}")
        await conn.close()
