"""Keyset pagination shared by every list query (newest first, `(created_at, id)` order)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import asyncpg

from embedd_server.domain.models import Page
from embedd_server.domain.validation import PageRequest, encode_cursor

T = TypeVar("T")

# Appended to a query whose WHERE clause ends with the caller's own conditions; the cursor
# and the limit take the last three parameters.
KEYSET = (
    " AND ($%d::timestamptz IS NULL OR (created_at, id) < ($%d::timestamptz, $%d::text))"
    " ORDER BY created_at DESC, id DESC LIMIT $%d"
)


async def fetch_page(
    conn: asyncpg.Pool | asyncpg.Connection,
    sql: str,
    args: Sequence[Any],
    page: PageRequest,
    to_model: Callable[[asyncpg.Record], T],
) -> Page[T]:
    """Runs `sql` (SELECT ... WHERE <conditions>) with the keyset clause appended."""
    n = len(args)
    query = sql + KEYSET % (n + 1, n + 1, n + 2, n + 3)
    after_ts, after_id = page.after if page.after else (None, None)
    rows = await conn.fetch(query, *args, after_ts, after_id, page.limit + 1)
    items = [to_model(r) for r in rows[: page.limit]]
    cursor = ""
    if len(rows) > page.limit:
        last = rows[page.limit - 1]
        cursor = encode_cursor(last["created_at"], last["id"])
    return Page(items, cursor)
