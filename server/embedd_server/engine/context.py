"""What every engine job needs, resolved once per job: the table's source credentials, its
embedder, two connections to the user's database (one reads; one writes, holding the table's
fence: sinks/fence.py), and its vector store (either kind: engine/stores.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from embedd_server.domain.models import VectorTable
from embedd_server.domain.vector_tables import VectorTableSpec
from embedd_server.engine.batch_backfill import BatchSettings
from embedd_server.engine.stores import StoreFactory
from embedd_server.network_policy import PERMISSIVE, NetworkPolicy
from embedd_server.providers.base import Embedder
from embedd_server.providers.registry import EmbedderRegistry
from embedd_server.secretbox import SecretBox, open_credentials
from embedd_server.sinks.base import VectorStore
from embedd_server.sinks.fence import Holder, take_over
from embedd_server.sinks.pgvector import register_vector_codec
from embedd_server.sources.postgres import connect
from embedd_server.sources.reader import SourceReader
from embedd_server.store.connections import ConnectionStore, EmbeddingProviderStore
from embedd_server.store.tasks import TaskStore
from embedd_server.store.vector_tables import VectorTableStore


class PermanentError(Exception):
    """Retrying will not help (deleted table, bad key, no privilege): fail now."""


class ConnectionLost(Exception):
    """A job's connection to the user's database closed under it - it restarted, the network
    dropped it, or a new lease holder ended this one's session - whatever the driver raised
    for it then (a closed-connection error, or a confused protocol state)."""


_DRIVER_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
_PROBE_TIMEOUT_S = 2.0


async def usable(conn: asyncpg.Connection[Any]) -> bool:
    """The connection still answers. One the server ended may not look closed yet: asyncpg
    marks it closed when it reads the end of the stream, and until then every call fails
    with a protocol-state error ("another operation (2) is in progress")."""
    if conn.is_closed():
        return False
    try:
        await asyncio.wait_for(conn.fetchval("SELECT 1"), _PROBE_TIMEOUT_S)
    except (*_DRIVER_ERRORS, TimeoutError):
        return False
    return True


@asynccontextmanager
async def connections_watched(*conns: asyncpg.Connection[Any]) -> AsyncIterator[None]:
    """Turns a driver error after which one of `conns` no longer answers into ConnectionLost."""
    try:
        yield
    except _DRIVER_ERRORS as exc:
        for conn in conns:
            if not await usable(conn):
                raise ConnectionLost(
                    "the connection to the source database was closed (it restarted, the network"
                    " dropped it, or another server took the table over)"
                ) from exc
        raise


@dataclass(frozen=True, slots=True)
class EngineSettings:
    chunk_rows: int = 1000
    inflight_chunks: int = 4
    max_tasks: int = 4
    lease_s: float = 30.0
    poll_s: float = 0.5
    maintenance_work_mem: str = ""
    connect_timeout_s: float = 10.0
    max_sync_backoff_s: float = 600.0
    # A failed task attempt is retried after this long, 4x longer after each further one.
    retry_backoff_s: float = 5.0
    # cdc mode: a full comparison (deletes, late commits) every this many seconds.
    cdc_sweep_s: float = 600.0
    # Where the users' databases may be (the server's network policy).
    network: NetworkPolicy = PERMISSIVE
    # Fills through a provider's batch API (docs/batch.md).
    batch: BatchSettings = field(default_factory=BatchSettings)


@dataclass(frozen=True, slots=True)
class Fence:
    """Who the session writes for: the lease kind, and how to confirm the lease is still ours
    (raises LeaseLost)."""

    holder: Holder
    confirm: Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class TableSession:
    embedder: Embedder
    reader: asyncpg.Connection[Any]
    writer: asyncpg.Connection[Any]
    ref: str
    fence: Fence
    stores: StoreFactory
    chunk_rows: int = 1000

    def store(self, spec: VectorTableSpec) -> VectorStore:
        """The vector table's store for `spec` (the live one, or a re-backfill's)."""
        return self.stores.open(spec, self.ref, self.writer, reader=self.reader, confirm=self.fence.confirm)

    def source(self, spec: VectorTableSpec) -> SourceReader:
        """The source table read with `spec`'s columns."""
        return SourceReader(spec, self.reader, self.chunk_rows)


@dataclass(frozen=True)
class EngineDeps:
    tasks: TaskStore
    vector_tables: VectorTableStore
    connections: ConnectionStore
    providers: EmbeddingProviderStore
    embedders: EmbedderRegistry
    secrets: SecretBox
    settings: EngineSettings
    clock: Callable[[], float] = time.monotonic
    stores: StoreFactory = field(default_factory=StoreFactory)

    @asynccontextmanager
    async def session(
        self, vt: VectorTable, fence: Fence, spec: VectorTableSpec | None = None
    ) -> AsyncIterator[TableSession]:
        """Connections and the embedder for `spec` (the live one by default). The writer
        holds the table's fence for the session: earlier, stale holders are cut off."""
        spec = spec or vt.spec
        connection = await self.connections.get_by_id(vt.connection_id)
        provider = await self.providers.get_by_id(vt.embedding_provider_id)
        if connection is None or provider is None:
            raise PermanentError("the vector table's connection or embedding provider was deleted")
        creds = open_credentials(self.secrets, connection)
        embedder = self.embedders.get(provider, spec.embedding_model, spec.embedding_dimensions)
        timeout = self.settings.connect_timeout_s
        policy = self.settings.network
        reader = await connect(creds, policy=policy, timeout_s=timeout)
        try:
            writer = await connect(creds, policy=policy, timeout_s=timeout)
        except BaseException:
            await reader.close()
            raise
        try:
            async with connections_watched(reader, writer):
                await take_over(writer, vt.platform_vector_ref, fence.holder, fence.confirm)
                if spec.mode != "managed":  # managed mode's source needs no pgvector
                    await register_vector_codec(writer)
                yield TableSession(
                    embedder,
                    reader,
                    writer,
                    vt.platform_vector_ref,
                    fence,
                    self.stores,
                    self.settings.chunk_rows,
                )
        finally:
            await asyncio.gather(reader.close(), writer.close(), return_exceptions=True)


async def cancel_and_wait(*tasks: asyncio.Task[None] | None) -> None:
    """Cancels background tasks and waits until each has finished its cleanup."""
    live = [t for t in tasks if t is not None]
    for task in live:
        task.cancel()
    await asyncio.gather(*live, return_exceptions=True)
