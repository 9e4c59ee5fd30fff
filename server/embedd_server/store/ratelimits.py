"""The rate limiter's shared counts: requests per organisation and minute, in the control
plane, so that every replica draws on one budget."""

from __future__ import annotations

from typing import Any

import asyncpg


class RateLimitStore:
    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def add(self, org_id: str, minute: int, n: int, cap: int | None = None) -> int | None:
        """Adds `n` requests to the minute's count and returns the new count; with `cap`, only
        if the count stays within it (None when refused). One atomic statement, so replicas
        admitting at once never pass the cap together."""
        if cap is not None and n > cap:
            return None
        count: int | None = await self._pool.fetchval(
            "INSERT INTO rate_windows (org_id, minute, count) VALUES ($1, $2, $3)"
            " ON CONFLICT (org_id, minute) DO UPDATE SET count = rate_windows.count + EXCLUDED.count"
            " WHERE $4::bigint IS NULL OR rate_windows.count + EXCLUDED.count <= $4"
            " RETURNING count",
            org_id,
            minute,
            n,
            cap,
        )
        return count

    async def counts(self, org_id: str, minute: int) -> tuple[int, int]:
        """(previous minute's count, this minute's count)."""
        rows = await self._pool.fetch(
            "SELECT minute, count FROM rate_windows WHERE org_id = $1 AND minute IN ($2 - 1, $2)",
            org_id,
            minute,
        )
        by_minute = {r["minute"]: r["count"] for r in rows}
        return int(by_minute.get(minute - 1, 0)), int(by_minute.get(minute, 0))

    async def prune(self, before_minute: int) -> None:
        await self._pool.execute("DELETE FROM rate_windows WHERE minute < $1", before_minute)
