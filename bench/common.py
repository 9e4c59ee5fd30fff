"""Shared bench plumbing: a throw-away PostgreSQL, the server as a subprocess, RSS sampling."""

from __future__ import annotations

import asyncio
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
from embedd.v1 import (
    connection_pb2,
    embedding_provider_pb2,
    sync_pb2,
    task_pb2,
    values_pb2,
    vector_table_pb2,
)
from embedd_client import EmbeddClient
from embedd_server.devtools.pg import LocalPostgres, create_database, create_role
from embedd_server.devtools.serverproc import ServerProcess
from embedd_server.domain.vector_tables import ColumnSpec
from embedd_server.services.vector_tables import column_to_proto

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


# --- the API calls every benchmark makes ---------------------------------------------------

PRODUCT_COLUMNS = (
    ColumnSpec("name", "embedding", 1, "Product: "),
    ColumnSpec("description", "embedding", 2, "Description: "),
    ColumnSpec("category", "metadata", filter_type="keyword"),
    ColumnSpec("price", "metadata", filter_type="float"),
    ColumnSpec("in_stock", "metadata", filter_type="boolean"),
)


async def platform_connection(
    client: EmbeddClient, pg_port: int, password: str, mode: str = "platform"
) -> str:
    """The id of a connection (platform mode unless `mode` says otherwise) to the bench
    source database as `bench_user`."""
    conn = await client.connections.CreateConnection(
        connection_pb2.CreateConnectionRequest(
            provider=values_pb2.ConnectionProvider.postgresql,
            name=f"bench-{mode}",
            mode=values_pb2.Mode.Value.Value(mode),
            credentials=connection_pb2.PostgresCredentials(
                host="127.0.0.1", port=pg_port, database="bench_source", user="bench_user", password=password
            ),
        )
    )
    return conn.id


async def platform_records(
    client: EmbeddClient, pg_port: int, password: str, mode: str = "platform"
) -> tuple[str, str]:
    """(connection id, local provider id) for the bench source database as `bench_user`."""
    emb = await client.embedding_providers.CreateEmbeddingProvider(
        embedding_provider_pb2.CreateEmbeddingProviderRequest(
            name="local", provider=values_pb2.EmbeddingProviderType.local, default_model="local-lexical-384"
        )
    )
    return await platform_connection(client, pg_port, password, mode), emb.id


async def openai_provider(client: EmbeddClient, base_url: str, api_key: str) -> str:
    """The id of an `openai` provider record whose base URL is `base_url` (a fake OpenAI)."""
    emb = await client.embedding_providers.CreateEmbeddingProvider(
        embedding_provider_pb2.CreateEmbeddingProviderRequest(
            name="openai",
            provider=values_pb2.EmbeddingProviderType.openai,
            api_key=api_key,
            default_model="text-embedding-3-small",
            base_url=base_url,
        )
    )
    return emb.id


async def create_table(
    client: EmbeddClient,
    conn_id: str,
    emb_id: str,
    table: str,
    *,
    interval: int = 60,
    model: str = "local-lexical-384",
    dimensions: int = 384,
) -> vector_table_pb2.VectorTable:
    return await client.vector_tables.CreateVectorTable(
        vector_table_pb2.CreateVectorTableRequest(
            vector_table=vector_table_pb2.VectorTable(
                name=table,
                connection_id=conn_id,
                embedding_provider_id=emb_id,
                source_table=f"public.{table}",
                primary_key_column="id",
                embedding_model=model,
                embedding_dimensions=dimensions,
                columns=[column_to_proto(c) for c in PRODUCT_COLUMNS],
                sync_interval_seconds=interval,
            )
        )
    )


async def backfill(client: EmbeddClient, vt_id: str) -> task_pb2.Task:
    """Queues a backfill and waits for it, through the progress stream."""
    task = await client.sync.BackfillVectorTable(sync_pb2.BackfillVectorTableRequest(vector_table_id=vt_id))
    return await wait_task(client, task.task_id)


async def wait_task(client: EmbeddClient, task_id: str) -> task_pb2.Task:
    async for event in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id)):
        if event.done:
            assert event.task.status == values_pb2.TaskStatus.completed, event
            return event.task
    raise AssertionError(f"the progress stream of {task_id} ended before the task did")


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client (one connection, one request at a time): what a
    REST call costs the service and Envoy, without a Python HTTP library's own per-request
    work (httpx spent 0.4-1.4 ms a request more here). Replies must carry Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self._reader, self._writer, self._host = reader, writer, host

    @classmethod
    async def open(cls, url: str) -> RawHttp:
        parts = urllib.parse.urlsplit(url)
        assert parts.hostname is not None and parts.port is not None, url
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer, parts.netloc)

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        lines = [f"POST {path} HTTP/1.1", f"Host: {self._host}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
        length = int(next(v for k, v in fields.items() if k.lower() == b"content-length"))
        return status, await self._reader.readexactly(length)

    async def aclose(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()
