"""Keyset pagination shared by every list query: `(created_at, id)` order, newest first unless
a list says otherwise (environments are listed oldest first)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import asyncpg
import structlog

from embedd_server.domain.models import Page
from embedd_server.domain.validation import PageRequest, encode_cursor

T = TypeVar("T")
log = structlog.get_logger(__name__)

# Appended to a query whose WHERE clause ends with the caller's own conditions; the cursor
# and the limit take the last three parameters.
_KEYSET = (
    " AND ($%d::timestamptz IS NULL OR (created_at, id) {cmp} ($%d::timestamptz, $%d::text))"
    " ORDER BY created_at {order}, id {order} LIMIT $%d"
)
NEWEST_FIRST = _KEYSET.format(cmp="<", order="DESC")
OLDEST_FIRST = _KEYSET.format(cmp=">", order="ASC")


async def fetch_page(
    conn: asyncpg.Pool | asyncpg.Connection,
    sql: str,
    args: Sequence[Any],
    page: PageRequest,
    to_model: Callable[[asyncpg.Record], T],
    *,
    keyset: str = NEWEST_FIRST,
) -> Page[T]:
    """Runs `sql` (SELECT ... WHERE <conditions>) with the keyset clause appended. A stored
    row that cannot be read as a model is left out (and logged) rather than failing the page."""
    n = len(args)
    query = sql + keyset % (n + 1, n + 1, n + 2, n + 3)
    after_ts, after_id = page.after if page.after else (None, None)
    rows = await conn.fetch(query, *args, after_ts, after_id, page.limit + 1)
    items = [item for item in (_model(to_model, r) for r in rows[: page.limit]) if item is not None]
    cursor = ""
    if len(rows) > page.limit:
        last = rows[page.limit - 1]
        cursor = encode_cursor(last["created_at"], last["id"])
    return Page(items, cursor)


def _model(to_model: Callable[[asyncpg.Record], T], row: asyncpg.Record) -> T | None:
    try:
        return to_model(row)
    except (ValueError, TypeError, KeyError, AssertionError) as exc:
        log.error("stored row left out of a list: it cannot be read", id=row["id"], error=repr(exc))
        return None
