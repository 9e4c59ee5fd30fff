"""Organisations, environments and API keys."""

from __future__ import annotations

import hashlib

import asyncpg

from embedd_server.domain.errors import ApiError, Kind
from embedd_server.domain.ids import new_api_key, new_id
from embedd_server.domain.models import ApiKey, Environment, Page
from embedd_server.domain.tiers import DEFAULT_TIER, requests_per_minute
from embedd_server.domain.validation import PageRequest
from embedd_server.store.paging import OLDEST_FIRST, fetch_page

DEFAULT_ENVIRONMENT = "prod"
# NOTIFY channel: the payload is the id of a revoked key, a deleted environment, or an
# organisation whose tier or request limit changed.
AUTH_CHANNEL = "embedd_auth"


def hash_key(secret: str) -> bytes:
    """API keys are stored as SHA-256: high-entropy secrets need no slow hash."""
    return hashlib.sha256(secret.encode()).digest()


def _env(r: asyncpg.Record) -> Environment:
    return Environment(r["id"], r["org_id"], r["name"], r["is_default"], r["created_at"])


def _key(r: asyncpg.Record) -> ApiKey:
    return ApiKey(
        r["id"],
        r["org_id"],
        r["name"],
        r["key_prefix"],
        r["permission"],
        r["created_at"],
        r["revoked_at"],
    )


class OrgStore:
    """SQL for organisations, their environments and their API keys."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create_org(
        self, name: str, tier: str = DEFAULT_TIER, requests_per_minute: int | None = None
    ) -> str:
        """A new organisation with its default `prod` environment. `requests_per_minute`
        overrides the tier's request limit."""
        org_id = new_id("org")
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO orgs (id, name, tier, requests_per_minute) VALUES ($1, $2, $3, $4)",
                org_id,
                name,
                tier,
                requests_per_minute,
            )
            await conn.execute(
                "INSERT INTO environments (id, org_id, name, is_default) VALUES ($1, $2, $3, true)",
                new_id("environment"),
                org_id,
                DEFAULT_ENVIRONMENT,
            )
        return org_id

    async def set_tier(self, org_id: str, tier: str) -> bool:
        """Moves an organisation to `tier`; every replica's auth cache hears of it (NOTIFY)."""
        return await self._update_org(org_id, "tier = $2", tier)

    async def set_request_limit(self, org_id: str, requests_per_minute: int | None) -> bool:
        """Gives an organisation its own request limit (None: its tier's again)."""
        return await self._update_org(org_id, "requests_per_minute = $2", requests_per_minute)

    async def _update_org(self, org_id: str, assignment: str, value: object) -> bool:
        row = await self._pool.fetchrow(
            f"WITH u AS (UPDATE orgs SET {assignment} WHERE id = $1 RETURNING id)"  # noqa: S608 - fixed text
            " SELECT pg_notify($3, u.id) FROM u",
            org_id,
            value,
            AUTH_CHANNEL,
        )
        return row is not None

    async def org_limits(self, org_id: str) -> tuple[str, int | None] | None:
        """(tier, request limit override) of an organisation."""
        row = await self._pool.fetchrow("SELECT tier, requests_per_minute FROM orgs WHERE id = $1", org_id)
        return (row["tier"], row["requests_per_minute"]) if row else None

    # --- API keys ---------------------------------------------------------------------

    async def create_api_key(self, org_id: str, name: str, permission: str) -> tuple[ApiKey, str]:
        """The key record and its secret (returned once, stored only as a hash)."""
        secret = new_api_key()
        row = await self._pool.fetchrow(
            "INSERT INTO api_keys (id, org_id, name, key_hash, key_prefix, permission)"
            " VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
            new_id("api_key"),
            org_id,
            name,
            hash_key(secret),
            secret[:8],
            permission,
        )
        assert row is not None
        return _key(row), secret

    async def find_key_and_environment(
        self, secret: str, env_ref: str
    ) -> tuple[ApiKey, str | None, int | None] | None:
        """The key, the id of the environment the call is scoped to (`env_ref`, by id or
        name, or the default when empty) and the organisation's request limit per minute
        (None: unlimited), in one round trip - every request pays for it."""
        row = await self._pool.fetchrow(
            "SELECT k.*, e.id AS scoped_env_id, o.tier AS org_tier, o.requests_per_minute AS org_rpm"
            " FROM api_keys k JOIN orgs o ON o.id = k.org_id"
            " LEFT JOIN LATERAL (SELECT id FROM environments e WHERE e.org_id = k.org_id"
            "   AND CASE WHEN $2 = '' THEN e.is_default ELSE (e.id = $2 OR e.name = $2) END"
            "   ORDER BY (e.id = $2) DESC LIMIT 1) e ON true"
            " WHERE k.key_hash = $1",
            hash_key(secret),
            env_ref,
        )
        if row is None:
            return None
        return _key(row), row["scoped_env_id"], requests_per_minute(row["org_tier"], row["org_rpm"])

    async def find_key(self, secret: str) -> ApiKey | None:
        row = await self._pool.fetchrow("SELECT * FROM api_keys WHERE key_hash = $1", hash_key(secret))
        return _key(row) if row else None

    async def list_api_keys(self, org_id: str, page: PageRequest) -> Page[ApiKey]:
        return await fetch_page(self._pool, "SELECT * FROM api_keys WHERE org_id = $1", [org_id], page, _key)

    async def revoke_api_key(self, org_id: str, key_id: str) -> ApiKey | None:
        """Revokes a key and tells every replica (NOTIFY on AUTH_CHANNEL, sent at commit) to
        forget what it cached about it."""
        row = await self._pool.fetchrow(
            "WITH r AS (UPDATE api_keys SET revoked_at = coalesce(revoked_at, clock_timestamp())"
            " WHERE org_id = $1 AND id = $2 RETURNING *)"
            " SELECT r.*, pg_notify($3, r.id) FROM r",
            org_id,
            key_id,
            AUTH_CHANNEL,
        )
        return _key(row) if row else None

    # --- environments -----------------------------------------------------------------

    async def find_environment(self, org_id: str, id_or_name: str) -> Environment | None:
        row = await self._pool.fetchrow(
            "SELECT * FROM environments WHERE org_id = $1 AND (id = $2 OR name = $2)"
            " ORDER BY (id = $2) DESC LIMIT 1",
            org_id,
            id_or_name,
        )
        return _env(row) if row else None

    async def create_environment(self, org_id: str, name: str) -> Environment | None:
        """The new environment, or None when the name is taken."""
        row = await self._pool.fetchrow(
            "INSERT INTO environments (id, org_id, name) VALUES ($1, $2, $3)"
            " ON CONFLICT (org_id, name) DO NOTHING RETURNING *",
            new_id("environment"),
            org_id,
            name,
        )
        return _env(row) if row else None

    async def list_environments(self, org_id: str, page: PageRequest) -> Page[Environment]:
        return await fetch_page(
            self._pool,
            "SELECT * FROM environments WHERE org_id = $1",
            [org_id],
            page,
            _env,
            keyset=OLDEST_FIRST,
        )

    async def delete_environment(self, org_id: str, env_id: str) -> bool:
        """True when deleted. Raises `environment_conflict` while resources live in it (the
        foreign keys decide, so a resource created concurrently cannot slip through)."""
        try:
            status = await self._pool.execute(
                "WITH d AS (DELETE FROM environments WHERE org_id = $1 AND id = $2 RETURNING id)"
                " SELECT pg_notify($3, d.id) FROM d",
                org_id,
                env_id,
                AUTH_CHANNEL,
            )
        except asyncpg.ForeignKeyViolationError as exc:
            raise ApiError(
                Kind.CONFLICT,
                "environment_conflict",
                "This environment still holds connections, embedding providers or vector "
                "tables. Delete them first.",
            ) from exc
        return bool(status.endswith(" 1"))
