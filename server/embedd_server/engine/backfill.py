"""The reconciler: make a vector table match its source table.

Stages run under one anyio task group joined by bounded memory streams, so back-pressure
bounds memory (at most `inflight` chunks embedded at once, one being written) and a failure
in any stage cancels the others:

    read (keyset chunks, text/metadata/hash in SQL) -> embed (several chunks in flight)
        -> write (in order: binary COPY, then a checkpoint in the control plane)

The checkpoint is the last primary key whose chunk is committed. The vectors live in the
user's database and the checkpoint in the control plane, so a crash can leave one chunk
committed but not checkpointed: after a resume the first chunk is written as an upsert,
which makes the repeat harmless ("every source row exactly once").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import asyncpg
import structlog
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from embedd_server.domain.models import Task, VectorTable
from embedd_server.domain.vector_tables import VectorTableSpec
from embedd_server.providers.base import Embedder, EmbedResult, InputType
from embedd_server.sinks.pgvector import PgVectorTable, VectorRow, encode_vectors
from embedd_server.sources.queries import count_rows, keyset_read
from embedd_server.sources.sql import qualified, quote_ident

log = structlog.get_logger(__name__)

EMPTY_TEXT = "nothing to embed: every embedding column of this row is NULL or empty"


@dataclass(frozen=True, slots=True)
class SourceRow:
    pk: str
    text: str
    metadata: str
    row_hash: str


@dataclass(slots=True)
class _Pending:
    rows: list[SourceRow]
    done: anyio.Event = field(default_factory=anyio.Event)
    result: EmbedResult | None = None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    last_pk: str | None
    rows_processed: int
    rows_total: int
    failures: list[tuple[str, str]]


# Persists a committed chunk's progress (fenced: raises LeaseLost when the task is not ours).
Checkpoint = Callable[[Progress], Awaitable[None]]


@dataclass
class BackfillJob:
    task: Task
    table: VectorTable
    embedder: Embedder
    reader: asyncpg.Connection[Any]
    writer: asyncpg.Connection[Any]
    checkpoint: Checkpoint
    chunk_rows: int = 1000
    inflight: int = 4
    maintenance_work_mem: str = ""
    rows_processed: int = 0
    rows_total: int = 0

    @property
    def spec(self) -> VectorTableSpec:
        return self.table.spec

    def target(self) -> PgVectorTable:
        return PgVectorTable(
            self.spec.target_schema, self.table.platform_vector_ref, self.spec.embedding_dimensions
        )

    async def run(self) -> int:
        """Fills the target; returns the number of vectors it holds at the end."""
        target = self.target()
        await target.create(self.writer, with_index=False)
        self.rows_total = int(await self.reader.fetchval(count_rows(self.spec)))
        resumed = self.task.last_processed_pk is not None
        self.rows_processed = self.task.rows_processed if resumed else 0
        # Load first, index after - into an empty table, or when resuming such a load.
        has_index = await target.has_hnsw(self.writer)
        bulk = (not resumed and await target.is_empty(self.writer)) or (resumed and not has_index)
        if bulk:
            await target.drop_hnsw(self.writer)
        log.info("backfill start", task_id=self.task.id, total=self.rows_total, resumed=resumed, bulk=bulk)
        await self._pipeline(target, start_after=self.task.last_processed_pk, upsert_all=not bulk)
        if not bulk:
            await self._delete_vanished(target)
        await target.create_hnsw(self.writer, self.maintenance_work_mem or None)
        await target.create_metadata_indexes(self.writer, self.spec.metadata_columns)
        return await target.count(self.writer)

    async def _delete_vanished(self, target: PgVectorTable) -> None:
        """Rows deleted from the source since the target was last filled."""
        pk = quote_ident(self.spec.primary_key_column)
        source = qualified(self.spec.source_schema, self.spec.source_table)
        await self.writer.execute(
            f"DELETE FROM {target.qualified} t WHERE NOT EXISTS"  # noqa: S608 - quoted identifiers
            f" (SELECT 1 FROM {source} s WHERE s.{pk}::text = t.pk_value)"
        )

    async def _pipeline(self, target: PgVectorTable, *, start_after: str | None, upsert_all: bool) -> None:
        chunks_send, chunks_recv = anyio.create_memory_object_stream[list[SourceRow]](1)
        pending_send, pending_recv = anyio.create_memory_object_stream[_Pending](self.inflight)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read, chunks_send, start_after)
            tg.start_soon(self._dispatch, tg, chunks_recv, pending_send)
            # After a resume only the first chunk can already be in the target (see module doc).
            tg.start_soon(self._write, target, pending_recv, upsert_all, start_after is not None)

    async def _read(self, send: MemoryObjectSendStream[list[SourceRow]], after: str | None) -> None:
        query = keyset_read(self.spec)
        async with send:
            while True:
                rows = await self.reader.fetch(query.sql, after, self.chunk_rows, *query.params)
                if not rows:
                    return
                await send.send([SourceRow(r["pk"], r["text"], r["metadata"], r["row_hash"]) for r in rows])
                after = rows[-1]["pk"]
                if len(rows) < self.chunk_rows:
                    return

    async def _dispatch(
        self,
        tg: TaskGroup,
        recv: MemoryObjectReceiveStream[list[SourceRow]],
        send: MemoryObjectSendStream[_Pending],
    ) -> None:
        async with recv, send:
            async for rows in recv:
                pending = _Pending(rows)
                await send.send(pending)  # waits while `inflight` chunks are outstanding
                tg.start_soon(self._embed, pending)

    async def _embed(self, pending: _Pending) -> None:
        texts = [r.text for r in pending.rows if r.text]
        try:
            pending.result = await self.embedder.embed(texts, InputType.DOCUMENT) if texts else None
        except Exception as exc:  # handed to the writer, which fails the pipeline in order
            pending.error = exc
        finally:
            pending.done.set()

    async def _write(
        self,
        target: PgVectorTable,
        recv: MemoryObjectReceiveStream[_Pending],
        upsert_all: bool,
        upsert_first: bool,
    ) -> None:
        upsert = upsert_all or upsert_first
        async with recv:
            async for pending in recv:
                await pending.done.wait()
                if pending.error is not None:
                    raise pending.error
                rows, failures = _vector_rows(pending.rows, pending.result)
                if rows:
                    await target.write(self.writer, rows, upsert=upsert)
                upsert = upsert_all
                self.rows_processed += len(pending.rows)
                progress = Progress(pending.rows[-1].pk, self.rows_processed, self.rows_total, failures)
                await self.checkpoint(progress)


def _vector_rows(
    rows: Sequence[SourceRow], result: EmbedResult | None
) -> tuple[list[VectorRow], list[tuple[str, str]]]:
    """Pairs source rows with their vectors; rows without text or rejected by the provider
    become failures (reported with the task, never written)."""
    failures: list[tuple[str, str]] = []
    out: list[VectorRow] = []
    embedded = [r for r in rows if r.text]
    failures += [(r.pk, EMPTY_TEXT) for r in rows if not r.text]
    if result is None:
        return out, failures
    encoded = encode_vectors(result.vectors)
    for i, row in enumerate(embedded):
        if i in result.failed:
            failures.append((row.pk, result.failed[i]))
            continue
        out.append(VectorRow(row.pk, encoded[i], row.text, row.metadata, row.row_hash))
    return out, failures
