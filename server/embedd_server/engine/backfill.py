"""The reconciler: make a vector store match its source table.

Stages run under one anyio task group joined by bounded memory streams, so back-pressure
bounds memory (at most `inflight` chunks embedded at once, one being written) and a failure
in any stage cancels the others:

    read (keyset chunks, text/metadata/hash in SQL) -> embed (several chunks in flight)
        -> write (in order: the store's write, then a checkpoint in the control plane)

The checkpoint is the last primary key whose chunk is written. The vectors live in the store
and the checkpoint in the control plane, so a crash can leave one chunk written but not
checkpointed: after a resume the first chunk is written as an upsert, which makes the repeat
harmless ("every source row exactly once"). The store is either kind (sinks/base.py).

A managed table may carry a vector budget (its organisation's tier): the fill stops where
the budget ends, and what it did not write is counted as skipped.

With `use_import` the chunks come with the vectors of the table's import (docs/import.md):
a row whose imported vector serves is written with it, and only the others are sent to the
provider.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio
import numpy as np
import structlog
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from embedd_server.domain.models import Task
from embedd_server.domain.vector_tables import VectorTableSpec
from embedd_server.providers.base import Embedder, EmbedResult, InputType
from embedd_server.sinks.base import Batch, SourceRow, VectorStore
from embedd_server.sources.reader import SourceReader

log = structlog.get_logger(__name__)

EMPTY_TEXT = "nothing to embed: every embedding column of this row is NULL or empty"


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
    rows_imported: int = 0


# Persists a committed chunk's progress (fenced: raises LeaseLost when the task is not ours).
Checkpoint = Callable[[Progress], Awaitable[None]]
# Records what the task is doing now: reading, embedding, writing, indexing or swapping
# (docs/watch.md; fenced like the checkpoint).
SetPhase = Callable[[str], Awaitable[None]]
# Every row is written (vectors, source rows, rows skipped over the budget): the live table is
# synced and queryable from here while its index builds.
Written = Callable[[int, int, int], Awaitable[None]]
# The index build's share done (0-1).
IndexProgress = Callable[[float], Awaitable[None]]
# How often a running index build's progress is read and reported.
INDEX_PROGRESS_S = 1.0


async def no_phase(phase: str) -> None:
    """For jobs nobody watches (benchmarks, tests of the pipeline)."""


class _BudgetSpent(Exception):
    """The vector budget is used up: the fill ends here (not a failure)."""


@dataclass
class BackfillJob:
    task: Task
    spec: VectorTableSpec
    store: VectorStore
    source: SourceReader
    embedder: Embedder
    checkpoint: Checkpoint
    chunk_rows: int = 1000
    inflight: int = 4
    maintenance_work_mem: str = ""
    set_phase: SetPhase = no_phase
    # Vectors this fill may still add (managed mode's tier); None: no limit.
    budget: int | None = None
    # Take vectors from the table's import where they serve (domain.vector_tables.import_applies).
    use_import: bool = False
    # The live table's fill (not a re-backfill's replacement): `written` makes it synced once
    # every row is written, then the index is built concurrently - sync cycles go on writing
    # and queries rank exactly meanwhile (docs/indexes.md) - reporting `index_progress`.
    written: Written | None = None
    index_progress: IndexProgress | None = None
    index_status: str = "ready"  # after run(): "ready", or "none" (too wide for an ANN index)
    rows_processed: int = 0
    rows_total: int = 0
    rows_skipped: int = 0
    rows_imported: int = 0

    async def run(self) -> int:
        """Fills the store; returns the number of vectors it holds at the end."""
        store = self.store
        await self.set_phase("reading")
        await store.create()
        self.rows_total = await self.source.count()
        resumed = self.task.last_processed_pk is not None
        self.rows_processed = self.task.rows_processed if resumed else 0
        self.rows_imported = self.task.rows_imported if resumed else 0
        # Load first, index after - into an empty store, or when resuming such a load.
        bulk = (not resumed and await store.is_empty()) or (resumed and not await store.has_index())
        if bulk:
            await store.drop_index()
        log.info("backfill start", task_id=self.task.id, total=self.rows_total, resumed=resumed, bulk=bulk)
        try:
            await self._pipeline(start_after=self.task.last_processed_pk, upsert_all=not bulk)
        except* _BudgetSpent:
            self.rows_skipped = max(self.rows_total - self.rows_processed, 0)
            log.warning("vector budget reached; the rest is skipped", skipped=self.rows_skipped)
        if not bulk:
            await store.remove_vanished(self.source)
        await self.set_phase("indexing")
        if self.written is None:
            await store.build_indexes(self.spec.columns, self.maintenance_work_mem or None)
        else:
            await self.written(await store.count(), self.rows_total, self.rows_skipped)
            await self._build_reporting(store)
        self.index_status = "ready" if await store.has_index() else "none"
        return await store.count()

    async def _build_reporting(self, store: VectorStore) -> None:
        """The concurrent index build, its progress read and reported every second."""

        async def report() -> None:
            while True:
                await anyio.sleep(INDEX_PROGRESS_S)
                done = await store.index_progress()
                if done is not None and self.index_progress is not None:
                    await self.index_progress(done)

        async with anyio.create_task_group() as tg:
            tg.start_soon(report)
            await store.build_indexes(self.spec.columns, self.maintenance_work_mem or None, concurrently=True)
            tg.cancel_scope.cancel()

    async def _pipeline(self, *, start_after: str | None, upsert_all: bool) -> None:
        chunks_send, chunks_recv = anyio.create_memory_object_stream[list[SourceRow]](1)
        pending_send, pending_recv = anyio.create_memory_object_stream[_Pending](self.inflight)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read, chunks_send, start_after)
            tg.start_soon(self._dispatch, tg, chunks_recv, pending_send)
            # After a resume only the first chunk can already be in the store (see module doc).
            tg.start_soon(self._write, pending_recv, upsert_all, start_after is not None)

    async def _read(self, send: MemoryObjectSendStream[list[SourceRow]], after: str | None) -> None:
        async with send:
            while True:
                rows = await self.source.chunk(after, self.chunk_rows, imported=self.use_import)
                if not rows:
                    return
                await send.send(rows)
                await self.set_phase("embedding")
                after = rows[-1].pk
                if len(rows) < self.chunk_rows:
                    return

    async def _dispatch(
        self,
        tg: TaskGroup,
        recv: MemoryObjectReceiveStream[list[SourceRow]],
        send: MemoryObjectSendStream[_Pending],
    ) -> None:
        outstanding: list[_Pending] = []
        async with recv, send:
            async for rows in recv:
                pending = _Pending(rows)
                await send.send(pending)  # waits while `inflight` chunks are outstanding
                tg.start_soon(self._embed, pending)
                outstanding = [p for p in outstanding if not p.done.is_set()] + [pending]
        for pending in outstanding:
            await pending.done.wait()
        await self.set_phase("writing")  # every row is embedded; the writer finishes

    async def _embed(self, pending: _Pending) -> None:
        texts = [r.text for r in pending.rows if r.text and r.imported is None]
        try:
            pending.result = await self.embedder.embed(texts, InputType.DOCUMENT) if texts else None
        except Exception as exc:  # handed to the writer, which fails the pipeline in order
            pending.error = exc
        finally:
            pending.done.set()

    async def _write(
        self, recv: MemoryObjectReceiveStream[_Pending], upsert_all: bool, upsert_first: bool
    ) -> None:
        upsert = upsert_all or upsert_first
        async with recv:
            async for pending in recv:
                await pending.done.wait()
                if pending.error is not None:
                    raise pending.error
                rows, batch, failures = self._within_budget(
                    pending.rows, *with_imported(pending.rows, pending.result)
                )
                if batch.rows:
                    await self.store.write(batch, upsert=upsert)
                upsert = upsert_all
                self.rows_processed += len(rows)
                self.rows_imported += sum(1 for r in batch.rows if r.imported is not None)
                await self.checkpoint(
                    Progress(rows[-1].pk, self.rows_processed, self.rows_total, failures, self.rows_imported)
                )
                if len(rows) < len(pending.rows):
                    raise _BudgetSpent

    def _within_budget(
        self, rows: list[SourceRow], batch: Batch, failures: list[tuple[str, str]]
    ) -> tuple[list[SourceRow], Batch, list[tuple[str, str]]]:
        """The chunk cut where the vector budget ends (rows after the cut are not processed)."""
        if self.budget is None or len(batch.rows) <= self.budget:
            if self.budget is not None:
                self.budget -= len(batch.rows)
            return rows, batch, failures
        keep = self.budget
        self.budget = 0
        if keep == 0:
            raise _BudgetSpent
        last = batch.rows[keep - 1].pk
        cut = next(i for i, r in enumerate(rows) if r.pk == last) + 1
        kept = {r.pk for r in rows[:cut]}
        part = Batch(batch.rows[:keep], batch.vectors[:keep])
        return rows[:cut], part, [(pk, why) for pk, why in failures if pk in kept]


def with_imported(
    rows: Sequence[SourceRow], result: EmbedResult | None
) -> tuple[Batch, list[tuple[str, str]]]:
    """`embedded`, where rows with an imported vector (and text) keep it and `result` holds
    the provider's vectors of the others with text, in order. The batch keeps the rows'
    order."""
    usable = {r.pk for r in rows if r.imported is not None and r.text}
    if not usable:
        return embedded(rows, result)
    batch, failures = embedded([r for r in rows if r.pk not in usable], result)
    fresh = dict(zip((r.pk for r in batch.rows), batch.vectors, strict=True))
    kept = [r for r in rows if r.pk in usable or r.pk in fresh]
    vectors = np.stack(
        [r.imported if r.imported is not None and r.pk in usable else fresh[r.pk] for r in kept]
    )
    return Batch(kept, vectors.astype(np.float32, copy=False)), failures


def embedded(rows: Sequence[SourceRow], result: EmbedResult | None) -> tuple[Batch, list[tuple[str, str]]]:
    """Pairs source rows with their vectors; rows without text or rejected by the provider
    become failures (reported with the task, never written)."""
    failures = [(r.pk, EMPTY_TEXT) for r in rows if not r.text]
    with_text = [r for r in rows if r.text]
    if result is None:
        return Batch([], np.zeros((0, 0), dtype=np.float32)), failures
    keep = [i for i in range(len(with_text)) if i not in result.failed]
    failures += [(with_text[i].pk, result.failed[i]) for i in sorted(result.failed)]
    return Batch([with_text[i] for i in keep], result.vectors[keep]), failures
