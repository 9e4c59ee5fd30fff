"""The fault suite's stack: real processes, each of which a scenario may kill, pause or restart.

- two PostgreSQL clusters of the suite's own - the control plane and the user's database - so
  that restarting one disturbs no other test (each scenario gets a control-plane database and
  a source table of its own);
- server processes (`embedd-server serve`, devtools/serverproc.py), logging JSON lines to a
  file each; the stack's teardown fails the test on any traceback they logged;
- optionally one Envoy in front of all of them (envoy/envoy.yaml: balanced, health-checked);
- the fake OpenAI (tests/fakes) as the embedding provider: deterministic vectors, a latency
  to make the work last, and a switch to take it down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from embedd.v1 import (
    connection_pb2,
    embedding_provider_pb2,
    sync_pb2,
    task_pb2,
    values_pb2,
    vector_table_pb2,
)
from embedd_client import EmbeddClient
from embedd_server.devtools.envoy import DESCRIPTOR, ENVOY_YAML, EnvoyProcess, render_config
from embedd_server.devtools.pg import LocalPostgres, create_database
from embedd_server.devtools.serverproc import ServerProcess, create_org, free_port, new_secret_key

from tests.fakes.providers import FakeOpenAI
from tests.faults.check import assert_settled, platform_views
from tests.harness import unexpected_tracebacks, wait_for

USER = "embedd_user"
SOURCE_DB = "shop"
MODEL = "text-embedding-3-small"
DIMENSIONS = 256
ROWS = 3000  # a scenario's source table: a few seconds of backfill, 60 chunks to die between

# Small chunks (many checkpoints to die between), a short lease (a quick takeover), quick
# polls and a short sync backoff: every fault plays out in seconds. INFO: the log says what
# each process did (claims, lost leases, completions).
SERVER_SETTINGS = {
    "engine_lease_s": "3",
    "engine_poll_s": "0.2",
    "engine_chunk_rows": "50",
    "engine_inflight_chunks": "2",
    "sync_max_backoff_s": "2",
    "connect_timeout_s": "3",
    "log_level": "INFO",
}

COLUMNS = [
    vector_table_pb2.Column(
        name="title", role=values_pb2.ColumnRole.embedding, ordinal=1, name_prefix="Title: "
    ),
    vector_table_pb2.Column(name="body", role=values_pb2.ColumnRole.embedding, ordinal=2),
    vector_table_pb2.Column(
        name="category", role=values_pb2.ColumnRole.metadata, filter_type=values_pb2.FilterType.keyword
    ),
    vector_table_pb2.Column(
        name="price", role=values_pb2.ColumnRole.metadata, filter_type=values_pb2.FilterType.float
    ),
]


@dataclass
class Clusters:
    """The suite's two PostgreSQL clusters (restartable: they come back on the same ports)."""

    control: LocalPostgres
    user: LocalPostgres
    user_password: str

    def owner_dsn(self) -> str:
        return self.user.superuser_dsn(SOURCE_DB, direct=True)


async def start_clusters(root: Path) -> Clusters:
    control = await asyncio.to_thread(LocalPostgres(root / "control", port=0, fast=True).start)
    user = await asyncio.to_thread(LocalPostgres(root / "user", port=0, fast=True).start)
    password = secrets.token_urlsafe(12)
    admin = await asyncpg.connect(user.superuser_dsn(direct=True))
    try:
        await admin.execute(f"CREATE ROLE {USER} LOGIN PASSWORD '{password}'")
    finally:
        await admin.close()
    await create_database(user.superuser_dsn(direct=True), SOURCE_DB, with_vector=True)
    owner = await asyncpg.connect(user.superuser_dsn(SOURCE_DB, direct=True))
    try:
        await owner.execute(f"GRANT CREATE ON SCHEMA public TO {USER}")
    finally:
        await owner.close()
    return Clusters(control, user, password)


@dataclass
class Table:
    """A vector table the scenario made: its id, its table in the user's database, its source."""

    id: str
    ref: str
    source: str


@dataclass
class Stack:
    clusters: Clusters
    work: Path
    provider: FakeOpenAI
    control_db: str = field(default_factory=lambda: f"ctl_{secrets.token_hex(4)}")
    secret_key: str = field(default_factory=new_secret_key)
    servers: list[ServerProcess] = field(default_factory=list)
    envoy: EnvoyProcess | None = None
    api_key: str = ""
    sources: list[str] = field(default_factory=list)

    @property
    def control_dsn(self) -> str:
        return self.clusters.control.superuser_dsn(self.control_db, direct=True)

    # -- processes ---------------------------------------------------------------------------

    async def start_server(self, **settings: str) -> ServerProcess:
        """One more server process on the stack's control plane (a replica)."""
        n = len(self.servers)
        server = ServerProcess(
            self.control_dsn,
            self.secret_key,
            log_path=self.work / f"server-{n}.log",
            **{**SERVER_SETTINGS, **settings},
        )
        self.servers.append(server)
        await asyncio.to_thread(server.start)
        if not self.api_key:
            self.api_key = await asyncio.to_thread(create_org, self.control_dsn, self.secret_key)
        return server

    async def start_envoy(self, http_port: int | None = None) -> EnvoyProcess:
        """Envoy in front of every server started so far, on a fixed port (a restart keeps it)."""
        config = render_config(
            ENVOY_YAML,
            grpc_host="127.0.0.1",
            grpc_port=[s.port for s in self.servers],
            http_host="127.0.0.1",
            http_port=http_port or free_port(),
            admin_port=0,
            descriptor=DESCRIPTOR,
        )
        self.envoy = EnvoyProcess(config, work_dir=self.work / "envoy")
        await asyncio.to_thread(self.envoy.start)
        return self.envoy

    def live(self) -> ServerProcess:
        return next(s for s in self.servers if s.alive())

    def client(self, server: ServerProcess | None = None) -> EmbeddClient:
        return EmbeddClient((server or self.live()).target, self.api_key)

    def rest(self) -> httpx.AsyncClient:
        assert self.envoy is not None
        return httpx.AsyncClient(
            base_url=self.envoy.http_url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=30
        )

    def replica_of(self, lease_owner: str | None) -> ServerProcess | None:
        """The server process holding a lease (owners are `host:pid:nonce`)."""
        if not lease_owner:
            return None
        pid = int(lease_owner.split(":")[1])
        return next((s for s in self.servers if s.proc is not None and s.pid == pid), None)

    # -- data ---------------------------------------------------------------------------------

    async def make_source(self, rows: int) -> str:
        """A source table `items_<hex>` of `rows` rows that embedd_user may read."""
        name = f"items_{secrets.token_hex(3)}"
        async with self.owner() as conn:
            await conn.execute(
                f"CREATE TABLE {name} (id bigint PRIMARY KEY, title text, body text, category text,"
                " price float8);"
                f"INSERT INTO {name} SELECT g, 'item ' || g, 'the body of item number ' || g,"
                f" 'cat' || (g % 7), g * 1.5 FROM generate_series(1, {rows}) g;"
                f"GRANT SELECT ON {name} TO {USER};"
            )
        self.sources.append(name)
        return name

    async def make_table(self, source: str, *, interval_s: int = 1) -> Table:
        async with self.client() as c:
            conn = await c.connections.CreateConnection(
                connection_pb2.CreateConnectionRequest(
                    provider=values_pb2.ConnectionProvider.postgresql,
                    name=f"src-{source}",
                    mode=values_pb2.Mode.platform,
                    credentials=connection_pb2.PostgresCredentials(
                        host="127.0.0.1",
                        port=self.clusters.user.backend_port,
                        database=SOURCE_DB,
                        user=USER,
                        password=self.clusters.user_password,
                        ssl_mode="disable",
                    ),
                )
            )
            emb = await c.embedding_providers.CreateEmbeddingProvider(
                embedding_provider_pb2.CreateEmbeddingProviderRequest(
                    name=f"openai-{source}",
                    provider=values_pb2.EmbeddingProviderType.openai,
                    api_key=self.provider.api_key,
                    default_model=MODEL,
                    base_url=self.provider.base_url,
                )
            )
            vt = await c.vector_tables.CreateVectorTable(
                vector_table_pb2.CreateVectorTableRequest(
                    vector_table=vector_table_pb2.VectorTable(
                        name=source,
                        connection_id=conn.id,
                        embedding_provider_id=emb.id,
                        source_table=source,
                        primary_key_column="id",
                        embedding_model=MODEL,
                        embedding_dimensions=DIMENSIONS,
                        sync_interval_seconds=interval_s,
                        columns=COLUMNS,
                    )
                )
            )
        return Table(vt.id, vt.platform_vector_ref, source)

    async def backfill(self, table: Table) -> str:
        async with self.client() as c:
            task = await c.sync.BackfillVectorTable(
                sync_pb2.BackfillVectorTableRequest(vector_table_id=table.id)
            )
        return task.task_id

    async def synced_table(self, rows: int) -> Table:
        """A table backfilled and synced."""
        table = await self.make_table(await self.make_source(rows))
        await self.wait_task(await self.backfill(table), "completed", within=120)
        return table

    async def update_columns(self, table: Table, columns: Sequence[vector_table_pb2.Column]) -> None:
        async with self.client() as c:
            await c.vector_tables.UpdateVectorTable(
                vector_table_pb2.UpdateVectorTableRequest(
                    vector_table=vector_table_pb2.VectorTable(id=table.id, columns=columns),
                )
            )

    # -- observation ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def owner(self) -> AsyncIterator[asyncpg.Connection[Any]]:
        conn = await asyncpg.connect(self.clusters.owner_dsn())
        try:
            yield conn
        finally:
            await conn.close()

    @contextlib.asynccontextmanager
    async def control(self) -> AsyncIterator[asyncpg.Connection[Any]]:
        conn = await asyncpg.connect(self.control_dsn)
        try:
            yield conn
        finally:
            await conn.close()

    async def task_row(self, task_id: str) -> asyncpg.Record:
        async with self.control() as ctl:
            row = await ctl.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
        assert row is not None
        return row

    async def fill_task(self, table: Table) -> str:
        """The id of the table's queued or running backfill / re-backfill."""
        async with self.control() as ctl:
            task_id: str | None = await ctl.fetchval(
                "SELECT id FROM tasks WHERE target_id = $1 AND status IN ('pending', 'running')", table.id
            )
        assert task_id is not None
        return task_id

    async def wait_progress(self, task_id: str, rows: int, within: float = 30) -> asyncpg.Record:
        """Waits until the task has checkpointed `rows` rows; the row then."""

        async def progressed() -> bool:
            row = await self.task_row(task_id)
            return bool(row["rows_processed"] >= rows)

        await wait_for(progressed, within, what=f"{rows} rows checkpointed")
        return await self.task_row(task_id)

    async def wait_task(self, task_id: str, status: str, within: float = 60) -> asyncpg.Record:
        async def done() -> bool:
            return bool((await self.task_row(task_id))["status"] in ("completed", "failed"))

        await wait_for(done, within, what=f"task {task_id} to finish")
        row = await self.task_row(task_id)
        assert row["status"] == status, dict(row)
        return row

    async def get_table(self, table: Table) -> vector_table_pb2.VectorTable:
        async with self.client() as c:
            return await c.vector_tables.GetVectorTable(
                vector_table_pb2.GetVectorTableRequest(vector_table_id=table.id)
            )

    async def list_tasks(self, table: Table | None = None) -> list[task_pb2.Task]:
        async with self.client() as c:
            page = await c.tasks.ListTasks(
                task_pb2.ListTasksRequest(target_id=table.id if table else "", limit=100)
            )
        return list(page.tasks)

    async def rows_with(self, table: Table, pattern: str) -> int:
        """How many of the table's vectors hold an embedded text LIKE `pattern`."""
        async with self.owner() as conn:
            n = await conn.fetchval(
                f'SELECT count(*) FROM "{table.ref}" WHERE embedded_text LIKE $1', pattern
            )
        return int(n)

    async def settled(self, table: Table, *, failed_tasks: int = 0) -> str:
        """The check every scenario ends with (check.py), through a live server; what it saw."""
        owner_dsn = self.clusters.owner_dsn()
        async with self.client() as c:
            seen = await assert_settled(
                c,
                control_dsn=self.control_dsn,
                owner_dsn=owner_dsn,
                vt_id=table.id,
                views=platform_views(owner_dsn),
                failed_tasks=failed_tasks,
                expected_vector=lambda text: self.provider.expected(text, None, DIMENSIONS),
            )
        return str(seen)

    def log_records(self, server: ServerProcess) -> list[dict[str, Any]]:
        assert server.log_path is not None
        out = []
        for line in server.log_path.read_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def logged(self, server: ServerProcess, event: str) -> int:
        return sum(1 for r in self.log_records(server) if r.get("event") == event)

    # -- teardown -------------------------------------------------------------------------------

    async def close(self) -> list[str]:
        """Stops everything; returns the tracebacks the servers logged (there must be none)."""
        for server in self.servers:
            await asyncio.to_thread(server.stop)
        if self.envoy is not None:
            await asyncio.to_thread(self.envoy.stop)
        found = []
        for server in self.servers:
            assert server.log_path is not None
            if server.log_path.exists():
                found += [
                    f"{server.log_path.name}: {t}" for t in unexpected_tracebacks(server.log_path.read_text())
                ]
        await self._drop()
        return found

    async def _drop(self) -> None:
        if not self.clusters.control.running or not self.clusters.user.running:
            return
        admin = await asyncpg.connect(self.clusters.control.superuser_dsn(direct=True))
        try:
            refs = []
            with contextlib.suppress(asyncpg.PostgresError):
                ctl = await asyncpg.connect(self.control_dsn)
                try:
                    refs = [
                        r["platform_vector_ref"]
                        for r in await ctl.fetch("SELECT platform_vector_ref FROM vector_tables")
                    ]
                finally:
                    await ctl.close()
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.control_db}" WITH (FORCE)')
        finally:
            await admin.close()
        async with self.owner() as conn:
            for ref in refs:
                for name in (ref, f"{ref}_swap", f"{ref}_old"):
                    await conn.execute(f'DROP TABLE IF EXISTS "{name}"')
            for source in self.sources:
                await conn.execute(f"DROP TABLE IF EXISTS {source}")


@dataclass
class QueryLoad:
    """REST queries through Envoy, `concurrency` at a time, until stopped: each outcome
    (HTTP status and error, or the transport error's class) with the time it was sent."""

    rest: httpx.AsyncClient
    vt_id: str
    concurrency: int = 4
    outcomes: list[tuple[float, str]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> QueryLoad:
        self._tasks = [asyncio.create_task(self._loop(i)) for i in range(self.concurrency)]
        return self

    async def _loop(self, n: int) -> None:
        body = {"query": f"item {n}", "limit": 3}
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                r = await self.rest.post(f"/v1/vector-tables/{self.vt_id}/query", json=body)
                outcome = str(r.status_code)
                if r.status_code != 200:
                    error = r.json().get("error", {})
                    outcome += f" {error.get('code')}: {str(error.get('message'))[:160]}"
            except httpx.TransportError as exc:
                outcome = exc.__class__.__name__
                await asyncio.sleep(0.05)  # a client's pause before it tries again
            self.outcomes.append((sent, outcome))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def ok(self, since: float = 0.0) -> int:
        return sum(1 for t, o in self.outcomes if t >= since and o == "200")

    def failed(self, since: float = 0.0, until: float = float("inf")) -> list[str]:
        return [o for t, o in self.outcomes if since <= t < until and o != "200"]

    async def wait_ok(self, n: int, since: float = 0.0, within: float = 30) -> None:
        await wait_for(lambda: self.ok(since) >= n, within, what=f"{n} successful queries")


def envoy_hosts(envoy: EnvoyProcess) -> dict[int, dict[str, str]]:
    """Envoy's view of each replica (admin /clusters): port -> stats and `health_flags`."""
    with urllib.request.urlopen(f"{envoy.admin_url}/clusters", timeout=5) as resp:  # the local admin API
        text = resp.read().decode()
    hosts: dict[int, dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == "embedd_grpc" and ":" in parts[1]:  # per-host lines
            port = int(parts[1].rsplit(":", 1)[1])
            hosts.setdefault(port, {})[parts[2]] = parts[3]
    return hosts


def server_errors(stack: Stack, server: ServerProcess) -> list[str]:
    """What a server logged as its own failure: error records, and calls it answered with
    anything but success (a client's bad luck - a dropped connection - is none of these)."""
    found = []
    for r in stack.log_records(server):
        if r.get("level") in ("error", "critical"):
            found.append(f"{r.get('event')}: {r.get('exception', '')[-200:]}")
        elif r.get("event") == "rpc" and r.get("outcome") != "OK":
            found.append(f"{r.get('method')} answered {r.get('outcome')}")
    return found
