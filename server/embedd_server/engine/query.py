"""Semantic query orchestration: readiness, query embedding (cached), the filter parsed
against the table's columns, the search by the table's store (engine/stores.py), and the pools
of connections to users' databases (platform mode searches there).

How each store searches is its own: platform mode picks exact ranking or HNSW by how many rows
the filter selects (sinks/pgvector_store.py, docs/facts.md "Query paths"); managed mode asks
Qdrant with the filter translated (sinks/qdrant_filters.py).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import numpy as np
import structlog
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from embedd_server.domain.credentials import PgCredentials
from embedd_server.domain.errors import ApiError, Kind
from embedd_server.domain.filters import Node, parse_filters
from embedd_server.domain.models import EmbeddingProvider, VectorTable
from embedd_server.engine.stores import StoreFactory
from embedd_server.network_policy import NetworkPolicy
from embedd_server.providers.base import InputType, ProviderError, Vectors
from embedd_server.providers.registry import EmbedderRegistry
from embedd_server.secretbox import SecretBox, open_credentials
from embedd_server.sinks.base import Hit
from embedd_server.sinks.pgvector_search import (
    DEFAULT_EF_SEARCH,
    Conn,
    ef_search_for,
    prepare_query_connection,
)
from embedd_server.sources.postgres import connect
from embedd_server.store.connections import ConnectionStore, EmbeddingProviderStore

log = structlog.get_logger(__name__)
T = TypeVar("T")


class StaleTable(Exception):
    """The physical table no longer matches the spec read with it: a re-backfill swapped in
    a table of other dimensions between the control-plane read and the search."""


def not_ready(message: str) -> ApiError:
    return ApiError(Kind.NOT_READY, "vector_table_not_ready", message)


# -- query embeddings -----------------------------------------------------------------------


class QueryEmbeddingCache:
    """Query vectors (float32) by (provider id, model, dims, text): a bounded LRU whose
    entries live `ttl_s`. Concurrent misses of one key share a single provider call, which runs
    as a task of its own: a waiter that gives up (its client cancelled) cancels only its own
    wait, never the call the other waiters are waiting for."""

    def __init__(self, max_entries: int = 10_000, ttl_s: float = 300.0) -> None:
        self._max = max_entries
        self._ttl = ttl_s
        self._entries: collections.OrderedDict[tuple[str, str, int, str], tuple[float, Vectors]] = (
            collections.OrderedDict()
        )
        self._inflight: dict[tuple[str, str, int, str], asyncio.Task[Vectors]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str, int, str]) -> Vectors | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires < time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: tuple[str, str, int, str], value: Vectors) -> None:
        self._entries[key] = (time.monotonic() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    async def get_or_compute(
        self, key: tuple[str, str, int, str], compute: Callable[[], Coroutine[Any, Any, Vectors]]
    ) -> Vectors:
        cached = self.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        task = self._inflight.get(key)
        if task is not None:
            self.hits += 1
        else:
            self.misses += 1
            task = asyncio.ensure_future(compute())
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._done, key))
        return await asyncio.shield(task)

    def _done(self, key: tuple[str, str, int, str], task: asyncio.Task[Vectors]) -> None:
        self._inflight.pop(key, None)
        if task.cancelled():
            return
        if task.exception() is None:  # retrieved: the waiters re-raise it themselves
            self.put(key, task.result())

    def clear(self) -> None:
        self._entries.clear()


# -- connections to users' databases ----------------------------------------------------------


async def _no_reset(conn: asyncpg.Connection[Any]) -> None:
    """Pool release without the default `RESET ALL` round trip: query connections hold only
    their hnsw session settings, which must survive (open transactions are still rolled back)."""


# asyncpg's own default. A query's statements are few (by path, filter shape and page size),
# so each is prepared once per connection: one round trip a statement instead of two
# (Parse/Describe, then Bind/Execute). A re-backfill's swap renames tables under them, which
# PostgreSQL answers by analysing a prepared statement again, by name (docs/query-path.md).
QUERY_STATEMENT_CACHE = 100
# Named prepared statements the user's database cannot keep: a pooler in transaction mode.
_UNPREPARED = (asyncpg.InvalidSQLStatementNameError, asyncpg.DuplicatePreparedStatementError)


class UserPools:
    """A small asyncpg pool per connection (and credentials version) and hnsw.ef_search (a
    database may hold tables of either width: sinks/pgvector_search.ef_search_for), built on
    first use, the least recently used closed beyond `max_pools`. Connections are
    `sources.postgres.connect`'s with the vector codec, the hnsw session settings and a
    statement cache - or none, for a database that turned out not to keep prepared statements
    (`without_statement_cache`)."""

    def __init__(
        self,
        *,
        policy: NetworkPolicy,
        max_size: int = 4,
        max_pools: int = 32,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self._policy = policy
        self._max_size = max_size
        self._max_pools = max_pools
        self._timeout = connect_timeout_s
        self.pools: collections.OrderedDict[tuple[str, int], asyncpg.Pool[Any]] = collections.OrderedDict()
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()
        self.unprepared: set[str] = set()  # pool keys whose database refused prepared statements

    async def get(
        self, key: str, creds: PgCredentials, ef_search: int = DEFAULT_EF_SEARCH
    ) -> asyncpg.Pool[Any]:
        variant = (key, ef_search)
        pool = self.pools.get(variant)
        if pool is not None:
            self.pools.move_to_end(variant)
            return pool
        async with self._lock:
            pool = self.pools.get(variant)
            if pool is None:
                cache = 0 if key in self.unprepared else QUERY_STATEMENT_CACHE
                pool = await self._create(creds, cache, ef_search)
                self.pools[variant] = pool
                self._evict()
            return pool

    async def read(
        self, key: str, creds: PgCredentials, ef_search: int, work: Callable[[Conn], Awaitable[T]]
    ) -> T:
        """`work` (reads only) on a connection of the pool; asked once more without prepared
        statements when the database turns out not to keep them."""
        try:
            return await self._on(await self.get(key, creds, ef_search), work)
        except _UNPREPARED:
            await self.without_statement_cache(key)
            return await self._on(await self.get(key, creds, ef_search), work)

    @staticmethod
    async def _on(pool: asyncpg.Pool[Any], work: Callable[[Conn], Awaitable[T]]) -> T:
        async with pool.acquire() as conn:
            return await work(conn)

    async def without_statement_cache(self, key: str) -> None:
        """From now on this database's queries go without named prepared statements."""
        if key not in self.unprepared:
            log.warning(
                "the database refused named prepared statements (a pooler in transaction mode?);"
                " its queries go without them from now on",
                pool=key.split(":", 1)[0],
            )
            if len(self.unprepared) > 10_000:
                self.unprepared.clear()
            self.unprepared.add(key)
        await self.invalidate(key)

    async def _create(self, creds: PgCredentials, statement_cache: int, ef_search: int) -> asyncpg.Pool[Any]:
        timeout, policy = self._timeout, self._policy

        async def make(*_: object, **__: object) -> asyncpg.Connection[Any]:
            return await connect(
                creds, policy=policy, timeout_s=timeout, statement_cache_size=statement_cache
            )

        pool: asyncpg.Pool[Any] = await asyncpg.create_pool(
            connect=make,
            min_size=1,
            max_size=self._max_size,
            max_inactive_connection_lifetime=120.0,
            init=functools.partial(prepare_query_connection, ef_search=ef_search),
            reset=_no_reset,
        )
        return pool

    def _evict(self) -> None:
        while len(self.pools) > self._max_pools:
            _, old = self.pools.popitem(last=False)
            task = asyncio.create_task(self._close(old))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close(pool: asyncpg.Pool[Any]) -> None:
        try:
            await asyncio.wait_for(pool.close(), 10.0)
        except (TimeoutError, Exception):
            pool.terminate()

    async def invalidate(self, key: str) -> None:
        """Closes every pool of this connection."""
        for variant in [v for v in self.pools if v[0] == key]:
            await self._close(self.pools.pop(variant))

    async def aclose(self) -> None:
        pools = list(self.pools.values())
        self.pools.clear()
        await asyncio.gather(*(self._close(p) for p in pools), *self._closing, return_exceptions=True)


# -- the query ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueryRequest:
    text: str
    limit: int = 10
    filters: Mapping[str, Any] | None = None
    min_score: float | None = None
    include_embedded_text: bool = False


@dataclass(frozen=True, slots=True)
class _Source:
    creds: PgCredentials
    pool_key: str
    provider: EmbeddingProvider


class QueryEngine:
    def __init__(
        self,
        *,
        connections: ConnectionStore,
        providers: EmbeddingProviderStore,
        embedders: EmbedderRegistry,
        secrets: SecretBox,
        pools: UserPools,
        cache: QueryEmbeddingCache,
        stores: StoreFactory | None = None,
    ) -> None:
        self._connections = connections
        self._providers = providers
        self._embedders = embedders
        self._secrets = secrets
        self.pools = pools
        self.cache = cache
        self.stores = stores or StoreFactory()
        self.resolve_ttl_s = 30.0
        self._sources: dict[tuple[str, str], tuple[float, _Source]] = {}

    async def aclose(self) -> None:
        await self.pools.aclose()

    async def query(self, vt: VectorTable, request: QueryRequest) -> list[Hit]:
        if vt.last_synced_at is None:
            raise not_ready(
                f"Vector table {vt.id!r} has not been filled yet (sync_status {vt.sync_status!r}). "
                f"Run the backfill (POST /v1/vector-tables/{vt.id}/backfill), wait for sync_status "
                "'synced', then query."
            )
        spec = vt.spec  # the live table's; a re-backfill's pending spec is not served until the swap
        where = parse_filters(request.filters, spec.columns)
        source = await self._resolve(vt)
        vector = await self._embed(
            source.provider, spec.embedding_model, spec.embedding_dimensions, request.text
        )
        if vector is None:
            return []  # nothing to compare: the text has no features the model knows
        rows_hint = max(vt.synced_rows, vt.total_rows)
        if spec.mode == "managed":
            hits = await self._search_managed(vt, vector, where, request, rows_hint)
        else:
            hits = await self._search_platform(
                vt, source=source, vector=vector, where=where, request=request, rows_hint=rows_hint
            )
        # The stores return embedded text only when asked (include_text).
        if request.min_score is None:
            return hits
        return [h for h in hits if h.score >= request.min_score]

    async def _search_managed(
        self, vt: VectorTable, vector: Vectors, where: Node, request: QueryRequest, rows_hint: int
    ) -> list[Hit]:
        store = self.stores.open(vt.spec, vt.platform_vector_ref, None)
        try:
            return await store.search(
                vector, where, request.limit, include_text=request.include_embedded_text, rows_hint=rows_hint
            )
        except (ValueError, UnexpectedResponse) as exc:
            text = str(exc).lower()
            if "dimension" in text or ("vector" in text and "size" in text):
                raise StaleTable(vt.id) from exc
            if "not found" in text or "doesn't exist" in text:
                raise not_ready(
                    f"The vector table's collection ({vt.platform_vector_ref}) is missing from Qdrant. "
                    f"Run the backfill again: POST /v1/vector-tables/{vt.id}/backfill."
                ) from exc
            raise
        except ResponseHandlingException as exc:  # the Qdrant server did not answer
            raise ApiError(
                Kind.UNAVAILABLE,
                "managed_mode_unavailable",
                "The managed vector store (Qdrant) cannot be reached right now; retry in a "
                "moment. If it persists, the server's operator checks EMBEDD_QDRANT_URL.",
            ) from exc

    async def _search_platform(
        self,
        vt: VectorTable,
        *,
        source: _Source,
        vector: Vectors,
        where: Node,
        request: QueryRequest,
        rows_hint: int,
    ) -> list[Hit]:
        pool_key = source.pool_key

        async def search(conn: Conn) -> list[Hit]:
            store = self.stores.open(vt.spec, vt.platform_vector_ref, conn)
            return await store.search(
                vector, where, request.limit, include_text=request.include_embedded_text, rows_hint=rows_hint
            )

        try:
            return await self.pools.read(
                pool_key, source.creds, ef_search_for(vt.spec.embedding_dimensions), search
            )
        except asyncpg.DataError as exc:
            if "dimensions" in str(exc):
                raise StaleTable(vt.id) from exc
            raise
        except asyncpg.UndefinedTableError as exc:
            raise not_ready(
                f"The vector table's data ({vt.platform_vector_ref}) is missing from the database. "
                f"Run the backfill again: POST /v1/vector-tables/{vt.id}/backfill."
            ) from exc
        except (
            OSError,
            TimeoutError,
            asyncpg.CannotConnectNowError,
            asyncpg.InvalidAuthorizationSpecificationError,
            asyncpg.InvalidPasswordError,
        ) as exc:
            await self.pools.invalidate(pool_key)
            self._sources.pop((vt.connection_id, vt.embedding_provider_id), None)
            raise ApiError(
                Kind.NOT_READY,
                "connection_not_ready",
                f"Cannot reach the vector table's database ({exc.__class__.__name__}). Run "
                f"POST /v1/connections/{vt.connection_id}/test to see what is wrong, fix it, then retry.",
            ) from exc

    async def _resolve(self, vt: VectorTable) -> _Source:
        """The table's credentials and provider record, cached `resolve_ttl_s`: both are
        immutable once created, and neither can be deleted while the vector table exists."""
        key = (vt.connection_id, vt.embedding_provider_id)
        cached = self._sources.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        connection = await self._connections.get_by_id(vt.connection_id)
        provider = await self._providers.get_by_id(vt.embedding_provider_id)
        if connection is None or provider is None:
            raise not_ready(
                "The vector table's connection or embedding provider was deleted; recreate the vector table."
            )
        creds = open_credentials(self._secrets, connection)
        pool_key = f"{connection.id}:{hashlib.sha256(connection.credentials_enc).hexdigest()[:16]}"
        source = _Source(creds, pool_key, provider)
        if len(self._sources) > 1024:
            self._sources.clear()
        self._sources[key] = (now + self.resolve_ttl_s, source)
        return source

    async def _embed(self, provider: EmbeddingProvider, model: str, dims: int, text: str) -> Vectors | None:
        key_id = provider.id
        embedder = self._embedders.get(provider, model, dims)

        async def compute() -> Vectors:
            try:
                result = await embedder.embed([text], InputType.QUERY)
            except ProviderError as exc:
                kind = Kind.RATE_LIMITED if exc.code == "quota" else Kind.UNAVAILABLE
                raise ApiError(
                    kind, "embedding_provider_error", f"Embedding the query failed: {exc.message}"
                ) from exc
            if result.failed:
                raise ApiError(
                    Kind.INVALID,
                    "validation_error",
                    f"The provider rejected the query text: {result.failed[0]}",
                )
            return np.asarray(result.vectors[0], dtype=np.float32)

        vector = await self.cache.get_or_compute((key_id, model, dims, text), compute)
        return vector if vector.any() else None
