"""Reading a source table through one connection: the chunks a backfill embeds, and the
hashes, rows and keys a store's diff needs (`sinks.base.Source`). SQL from sources/queries."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np

from embedd_server.domain.vector_tables import VectorTableSpec
from embedd_server.providers.base import Vectors
from embedd_server.sinks.base import SourceRow
from embedd_server.sources.queries import (
    count_rows,
    existing_keys,
    hashes_read,
    keyset_read,
    max_cursor,
    rows_by_keys,
)


def _row(r: asyncpg.Record) -> SourceRow:
    return SourceRow(r["pk"], r["text"], r["metadata"], r["row_hash"])


def imported_vector(values: Sequence[float] | None, dimensions: int) -> Vectors | None:
    """An imported vector as the stores take it (float32, L2-normalised), or None when it
    cannot serve (absent, another size, all zeros or not finite): then the row is embedded."""
    if values is None or len(values) != dimensions:
        return None
    vector = np.asarray(values, dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        return None
    return vector / norm


@dataclass
class SourceReader:
    spec: VectorTableSpec
    conn: asyncpg.Connection[Any]
    page_rows: int = 1000

    async def count(self) -> int:
        return int(await self.conn.fetchval(count_rows(self.spec)))

    async def max_cursor(self) -> str | None:
        value: str | None = await self.conn.fetchval(max_cursor(self.spec))
        return value

    async def chunk(self, after: str | None, limit: int, *, imported: bool = False) -> list[SourceRow]:
        """Up to `limit` rows after the key `after` (None: from the start), in key order; with
        `imported`, each with its vector from the table's import where one serves."""
        query = keyset_read(self.spec, imported=imported)
        records = await self.conn.fetch(query.sql, after, limit, *query.params)
        if not imported:
            return [_row(r) for r in records]
        dims = self.spec.embedding_dimensions
        return [
            dataclasses.replace(_row(r), imported=imported_vector(r["imported_vector"], dims))
            for r in records
        ]

    async def hashes(self, *, since: str | None = None) -> AsyncIterator[list[tuple[str, str]]]:
        query = hashes_read(self.spec, since=since is not None)
        extra = (since,) if since is not None else ()
        after: str | None = None
        while True:
            page = await self.conn.fetch(query.sql, *query.params, after, self.page_rows, *extra)
            if not page:
                return
            yield [(r["pk"], r["row_hash"]) for r in page]
            if len(page) < self.page_rows:
                return
            after = page[-1]["pk"]

    async def rows(self, keys: Sequence[str]) -> list[SourceRow]:
        if not keys:
            return []
        query = rows_by_keys(self.spec)
        return [_row(r) for r in await self.conn.fetch(query.sql, *query.params, list(keys))]

    async def existing(self, keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        return {r["pk"] for r in await self.conn.fetch(existing_keys(self.spec), list(keys))}
