"""Connections and embedding providers: rows with encrypted secrets."""

from __future__ import annotations

import asyncpg

from embedd_server.domain.errors import ApiError, Kind
from embedd_server.domain.models import Connection, EmbeddingProvider, LearnedLimits, Page
from embedd_server.domain.validation import PageRequest
from embedd_server.store.paging import fetch_page


def _conn(r: asyncpg.Record) -> Connection:
    return Connection(
        id=r["id"],
        org_id=r["org_id"],
        env_id=r["env_id"],
        name=r["name"],
        provider=r["provider"],
        mode=r["mode"],
        status=r["status"],
        created_at=r["created_at"],
        last_tested_at=r["last_tested_at"],
        credentials_enc=bytes(r["credentials_enc"]),
    )


def _provider(r: asyncpg.Record) -> EmbeddingProvider:
    enc = r["api_key_enc"]
    return EmbeddingProvider(
        id=r["id"],
        org_id=r["org_id"],
        env_id=r["env_id"],
        name=r["name"],
        provider=r["provider"],
        default_model=r["default_model"],
        base_url=r["base_url"],
        created_at=r["created_at"],
        api_key_enc=bytes(enc) if enc is not None else None,
        dimensions=r["dimensions"],
        max_inputs_per_request=r["max_inputs_per_request"],
        max_concurrency=r["max_concurrency"],
        learned=LearnedLimits(r["learned_max_inputs"], r["learned_concurrency"]),
    )


class ConnectionStore:
    """SQL for connections. Every query is scoped by organisation and environment."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(
        self,
        *,
        id: str,
        org_id: str,
        env_id: str,
        name: str,
        provider: str,
        mode: str,
        credentials_enc: bytes,
    ) -> Connection:
        row = await self._pool.fetchrow(
            "INSERT INTO connections (id, org_id, env_id, name, provider, mode, credentials_enc)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
            id,
            org_id,
            env_id,
            name,
            provider,
            mode,
            credentials_enc,
        )
        assert row is not None
        return _conn(row)

    async def get(self, org_id: str, env_id: str, conn_id: str) -> Connection | None:
        row = await self._pool.fetchrow(
            "SELECT * FROM connections WHERE org_id = $1 AND env_id = $2 AND id = $3",
            org_id,
            env_id,
            conn_id,
        )
        return _conn(row) if row else None

    async def get_by_id(self, conn_id: str) -> Connection | None:
        """Unscoped: for the engine, which works on behalf of a task's organisation."""
        row = await self._pool.fetchrow("SELECT * FROM connections WHERE id = $1", conn_id)
        return _conn(row) if row else None

    async def list(self, org_id: str, env_id: str, page: PageRequest) -> Page[Connection]:
        return await fetch_page(
            self._pool,
            "SELECT * FROM connections WHERE org_id = $1 AND env_id = $2",
            [org_id, env_id],
            page,
            _conn,
        )

    async def delete(self, org_id: str, env_id: str, conn_id: str) -> bool:
        """True when deleted; `connection_conflict` while vector tables use it."""
        try:
            status = await self._pool.execute(
                "DELETE FROM connections WHERE org_id = $1 AND env_id = $2 AND id = $3",
                org_id,
                env_id,
                conn_id,
            )
        except asyncpg.ForeignKeyViolationError as exc:
            raise ApiError(
                Kind.CONFLICT,
                "connection_conflict",
                "Vector tables still use this connection. Delete them first.",
            ) from exc
        return bool(status.endswith(" 1"))

    async def record_test(self, conn_id: str, *, ok: bool, failure: str | None) -> Connection | None:
        row = await self._pool.fetchrow(
            "UPDATE connections SET status = $2, last_tested_at = clock_timestamp(),"
            " last_test_failure = $3 WHERE id = $1 RETURNING *",
            conn_id,
            "connected" if ok else "error",
            failure,
        )
        return _conn(row) if row else None


class EmbeddingProviderStore:
    """SQL for embedding providers. Every query is scoped by organisation and environment."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(
        self,
        *,
        id: str,
        org_id: str,
        env_id: str,
        name: str,
        provider: str,
        default_model: str,
        base_url: str | None,
        api_key_enc: bytes | None,
        dimensions: int | None = None,
        max_inputs_per_request: int | None = None,
        max_concurrency: int | None = None,
    ) -> EmbeddingProvider:
        row = await self._pool.fetchrow(
            "INSERT INTO embedding_providers"
            " (id, org_id, env_id, name, provider, default_model, base_url, api_key_enc,"
            "  dimensions, max_inputs_per_request, max_concurrency)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *",
            id,
            org_id,
            env_id,
            name,
            provider,
            default_model,
            base_url,
            api_key_enc,
            dimensions,
            max_inputs_per_request,
            max_concurrency,
        )
        assert row is not None
        return _provider(row)

    async def save_learned(self, provider_id: str, learned: LearnedLimits) -> None:
        """Remembers what the embedder learned about the provider's server (no-op once the
        record is deleted)."""
        await self._pool.execute(
            "UPDATE embedding_providers SET learned_max_inputs = $2, learned_concurrency = $3 WHERE id = $1",
            provider_id,
            learned.max_inputs,
            learned.concurrency,
        )

    async def get(self, org_id: str, env_id: str, provider_id: str) -> EmbeddingProvider | None:
        row = await self._pool.fetchrow(
            "SELECT * FROM embedding_providers WHERE org_id = $1 AND env_id = $2 AND id = $3",
            org_id,
            env_id,
            provider_id,
        )
        return _provider(row) if row else None

    async def get_by_id(self, provider_id: str) -> EmbeddingProvider | None:
        """Unscoped: for the engine, which works on behalf of a task's organisation."""
        row = await self._pool.fetchrow("SELECT * FROM embedding_providers WHERE id = $1", provider_id)
        return _provider(row) if row else None

    async def list(self, org_id: str, env_id: str, page: PageRequest) -> Page[EmbeddingProvider]:
        return await fetch_page(
            self._pool,
            "SELECT * FROM embedding_providers WHERE org_id = $1 AND env_id = $2",
            [org_id, env_id],
            page,
            _provider,
        )

    async def delete(self, org_id: str, env_id: str, provider_id: str) -> bool:
        try:
            status = await self._pool.execute(
                "DELETE FROM embedding_providers WHERE org_id = $1 AND env_id = $2 AND id = $3",
                org_id,
                env_id,
                provider_id,
            )
        except asyncpg.ForeignKeyViolationError as exc:
            raise ApiError(
                Kind.CONFLICT,
                "embedding_provider_conflict",
                "Vector tables still use this embedding provider. Delete them first.",
            ) from exc
        return bool(status.endswith(" 1"))
