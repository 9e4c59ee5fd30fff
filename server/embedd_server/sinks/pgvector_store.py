"""Platform mode's `VectorStore`: a vector table's pgvector table in the user's own database.

The table is the seed's (sinks/pgvector.py). Because the source and the vectors share one
database, the diff of a sync cycle runs there in one query (sources/queries.diff_all: only
differences are shipped), a vanished row is found by an anti-join, and a re-backfill that
keeps the embedded text reuses the live vectors in one INSERT ... SELECT. Writes go through
the job's writer session, which holds the table's fence (sinks/fence.py).

A re-backfill builds `<ref>_swap` and swaps it in by renaming both tables in one
transaction with a short lock timeout (retried, so a running query delays the swap, never the
reverse); the lease is confirmed inside it and the swapped-in table is marked with its spec,
so a holder that dies after the rename is finished by the next one instead of rebuilt.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import numpy as np

from embedd_server.domain.filters import Node
from embedd_server.domain.vector_tables import ColumnSpec, VectorTableSpec, swap_marker
from embedd_server.providers.base import Vectors
from embedd_server.sinks.base import Batch, Change, ChangeSet, Hit, Source, SourceRow, VectorStore
from embedd_server.sinks.pgvector import PgVectorTable, VectorRow, encode_vectors
from embedd_server.sinks.pgvector_filters import CompiledFilter, to_sql
from embedd_server.sinks.pgvector_search import (
    FILTER_FIRST_PARAM,
    Conn,
    PgVectorSearch,
    run_count,
    run_search,
)
from embedd_server.sources.queries import diff_all, diff_since, source_rows
from embedd_server.sources.sql import qualified, quote_ident, quote_literal

# Rows a filter may select for the exact path (docs/facts.md, "Query paths").
EXACT_THRESHOLD = 5_000
SWAP_LOCK_TIMEOUT = "2s"
SWAP_ATTEMPTS = 10
# Rows of a diff handled at once (one embed call, one transaction).
DIFF_CHUNK = 1000

Confirm = Callable[[], Awaitable[None]]


class PgVectorStore:
    """The vectors of one vector table (or of its re-backfill's `_swap` table)."""

    def __init__(
        self,
        spec: VectorTableSpec,
        ref: str,
        conn: Conn,
        *,
        name: str | None = None,
        reader: Conn | None = None,
        exact_threshold: int = EXACT_THRESHOLD,
    ) -> None:
        self.spec = spec
        self._ref = ref  # the live name, whichever table this store writes
        self.table = PgVectorTable(
            spec.target_schema, name or ref, spec.embedding_dimensions, halfvec=spec.hnsw_halfvec
        )
        self._conn = conn
        self._reader = reader
        self.exact_threshold = exact_threshold

    @property
    def ref(self) -> str:
        return self._ref

    @property
    def _writer(self) -> asyncpg.Connection[Any]:
        return self._conn  # type: ignore[return-value]

    # -- lifecycle ---------------------------------------------------------------------------

    async def create(self) -> None:
        await self.table.create(self._writer, with_index=False)

    async def drop(self) -> None:
        for name in (self._ref, f"{self._ref}_swap", f"{self._ref}_old"):
            await PgVectorTable(self.spec.target_schema, name, 1).drop(self._writer)

    async def count(self) -> int:
        return await self.table.count(self._writer)

    async def is_empty(self) -> bool:
        return await self.table.is_empty(self._writer)

    async def has_index(self) -> bool:
        return await self.table.has_hnsw(self._writer)

    async def drop_index(self) -> None:
        await self.table.drop_hnsw(self._writer)

    async def build_indexes(
        self, columns: Sequence[ColumnSpec], maintenance_work_mem: str | None, *, concurrently: bool = False
    ) -> None:
        # The btree indexes first: they are quick, and filtered queries count through them.
        metadata = [c for c in columns if c.role == "metadata"]
        await self.table.create_metadata_indexes(self._writer, metadata, concurrently=concurrently)
        await self.table.create_hnsw(self._writer, maintenance_work_mem, concurrently=concurrently)

    async def index_progress(self) -> float | None:
        # On the reader: the writer is busy building.
        conn = self._reader if self._reader is not None else self._writer
        return await self.table.index_progress(conn)  # type: ignore[arg-type]

    # -- writes ------------------------------------------------------------------------------

    async def write(self, batch: Batch, *, upsert: bool) -> None:
        if batch.rows:
            await self.table.write(self._writer, _vector_rows(batch), upsert=upsert)

    async def apply(self, changes: ChangeSet) -> None:
        """Deletes, metadata-only updates and upserts of one sync step, in one transaction."""
        writer = self._writer
        async with writer.transaction():
            if changes.delete:
                await writer.execute(
                    f"DELETE FROM {self.table.qualified} WHERE pk_value = ANY($1::text[])",
                    list(changes.delete),
                )
            if changes.metadata:
                rows = changes.metadata
                await writer.execute(
                    f"UPDATE {self.table.qualified} t SET metadata = u.metadata::jsonb,"
                    " row_hash = u.row_hash FROM unnest($1::text[], $2::text[], $3::text[])"
                    " AS u(pk_value, metadata, row_hash) WHERE t.pk_value = u.pk_value",
                    [r.pk for r in rows],
                    [r.metadata for r in rows],
                    [r.row_hash for r in rows],
                )
            if changes.upsert is not None and changes.upsert.rows:
                await self.table.write(writer, _vector_rows(changes.upsert), upsert=True)

    # -- diff --------------------------------------------------------------------------------

    async def changes(self, source: Source, *, since: str | None, full: bool) -> AsyncIterator[list[Change]]:
        """The diff in the user's database, on the source reader's connection (inside the
        cycle's repeatable-read snapshot): one query returns only what differs."""
        reader = self._reader
        assert reader is not None, "a diff needs the source reader's connection"
        if full or self.spec.sync_mode != "cdc":
            query = diff_all(self.spec, self.table.qualified)
            args: tuple[object, ...] = query.params
        else:
            query = diff_since(self.spec, self.table.qualified)
            args = (*query.params, since)
        cursor = await reader.cursor(query.sql, *args)
        while records := await cursor.fetch(DIFF_CHUNK):
            yield [_change(r) for r in records]

    async def remove_vanished(self, source: Source) -> int:
        pk = quote_ident(self.spec.primary_key_column)
        src = qualified(self.spec.source_schema, self.spec.source_table)
        status = await self._writer.execute(
            f"DELETE FROM {self.table.qualified} t WHERE NOT EXISTS"
            f" (SELECT 1 FROM {src} s WHERE s.{pk}::text = t.pk_value)"
        )
        return int(status.rsplit(" ", 1)[-1])

    # -- search ------------------------------------------------------------------------------

    async def search(
        self, vector: Vectors, where: Node, limit: int, *, include_text: bool, rows_hint: int
    ) -> list[Hit]:
        """Exact ranking when the filter selects few rows (or the table is small), else HNSW
        with relaxed-order iterative scan; an HNSW page that comes back short is ranked exactly
        instead (docs/facts.md, "Query paths")."""
        search = PgVectorSearch(self.table)
        encoded = encode_vectors(np.asarray(vector, dtype=np.float32).reshape(1, -1))[0]
        compiled = to_sql(where, first_param=FILTER_FIRST_PARAM)
        matched: int | None = None
        if rows_hint <= self.exact_threshold // 2:
            matched = rows_hint
        elif not compiled.is_empty:
            matched = await run_count(self._conn, search.count_sql(compiled), self.exact_threshold + 1)
        path = plan_path(search, compiled, matched, self.exact_threshold)
        statement = (search.exact if path == "exact" else search.hnsw)(encoded, compiled, limit, include_text)
        hits = await run_search(self._conn, statement)
        if path == "hnsw" and len(hits) < limit:
            hits = await run_search(self._conn, search.exact(encoded, compiled, limit, include_text))
        return hits

    # -- re-backfill -------------------------------------------------------------------------

    def replacement(self, spec: VectorTableSpec) -> PgVectorStore:
        """`<ref>_swap`, built for `spec` while this table keeps serving."""
        return PgVectorStore(spec, self._ref, self._conn, name=f"{self._ref}_swap", reader=self._reader)

    def _old(self) -> PgVectorTable:
        return PgVectorTable(
            self.spec.target_schema,
            f"{self._ref}_old",
            self.spec.embedding_dimensions,
            halfvec=self.spec.hnsw_halfvec,
        )

    def promoted(self) -> PgVectorStore:
        """After the rename the vectors are the live-named table."""
        return PgVectorStore(self.spec, self._ref, self._conn, reader=self._reader)

    async def swapped(self) -> bool:
        """Whether this replacement is already the live table (a swap that committed before
        its holder stopped): the live-named table carries this spec's mark."""
        return await self.promoted().table.marker(self._writer) == swap_marker(self.spec)

    async def reuse_vectors(self, live: VectorStore, source: Source) -> None:
        """Copies the live vectors of rows whose embedded text is unchanged, in one statement."""
        assert isinstance(live, PgVectorStore)
        rows, params = source_rows(self.spec)
        await self._writer.execute(
            f"INSERT INTO {self.table.qualified} (pk_value, embedding, embedded_text, metadata, row_hash)"
            " SELECT src.pk, l.embedding, src.text, src.metadata, src.row_hash"
            f" FROM ({rows}) src JOIN {live.table.qualified} l"
            " ON l.pk_value = src.pk AND left(l.row_hash, 32) = left(src.row_hash, 32)"
            " ON CONFLICT (pk_value) DO NOTHING",
            *params,
        )

    async def swap_in(self, replacement: VectorStore, confirm: Confirm) -> None:
        """live -> `_old`, `_swap` -> live, marked, in one transaction whose last step confirms
        the lease (a holder that lost it rolls back); then `_old` goes."""
        assert isinstance(replacement, PgVectorStore)
        writer = self._writer
        old = self._old()
        await old.drop(writer)  # a leftover of an interrupted earlier swap
        for attempt in range(1, SWAP_ATTEMPTS + 1):
            try:
                async with writer.transaction():
                    await writer.execute(f"SET LOCAL lock_timeout = {quote_literal(SWAP_LOCK_TIMEOUT)}")
                    await writer.execute(
                        f"ALTER TABLE {self.table.qualified} RENAME TO {quote_ident(old.name)}"
                    )
                    await writer.execute(
                        f"ALTER TABLE {replacement.table.qualified} RENAME TO {quote_ident(self._ref)}"
                    )
                    await replacement.promoted().table.set_marker(writer, swap_marker(replacement.spec))
                    await confirm()
                break
            except asyncpg.LockNotAvailableError:
                if attempt == SWAP_ATTEMPTS:
                    raise
                await asyncio.sleep(0.1 * attempt)
        await old.drop(writer)

    async def after_swap(self) -> None:
        """What a swap leaves behind (the previous table, `_old`) is dropped."""
        await PgVectorTable(self.spec.target_schema, f"{self._ref}_old", 1).drop(self._writer)


def plan_path(search: PgVectorSearch, where: CompiledFilter, matched: int | None, threshold: int) -> str:
    """ "exact" or "hnsw" for a filter that selects `matched` rows (None: not probed)."""
    if not search.has_index or (matched is not None and matched <= threshold):
        return "exact"
    return "hnsw"


def _vector_rows(batch: Batch) -> list[VectorRow]:
    encoded = encode_vectors(batch.vectors)
    return [
        VectorRow(r.pk, encoded[i], r.text or "", r.metadata, r.row_hash) for i, r in enumerate(batch.rows)
    ]


def _change(r: asyncpg.Record) -> Change:
    if r["deleted"]:
        return Change(r["pk"], None, r["old_hash"])
    return Change(r["pk"], SourceRow(r["pk"], r["text"], r["metadata"], r["row_hash"]), r["old_hash"])
