"""Re-backfill with an atomic swap: build `<ref>_swap` from the new spec while the live
table keeps serving, catch up with changes made meanwhile, index it, then swap the two in one
transaction and drop the old one. Queries never see a gap.

When only metadata columns changed, the live vectors are reused (joined in SQL by primary
key and text hash) instead of paying the provider again.

The swap is fenced and recoverable: inside the rename transaction, with both tables locked,
the lease is confirmed (and renewed) in the control plane, so a holder that lost its lease
never commits a swap; and the swapped-in table is marked with the spec it holds, so a holder
that dies between the rename and the control-plane update is finished by the next one (it
finds the mark and only records the swap) instead of building the table again.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

from embedd_server.domain.models import Task, VectorTable
from embedd_server.domain.vector_tables import VectorTableSpec, swap_marker
from embedd_server.engine.backfill import BackfillJob, Checkpoint
from embedd_server.engine.context import TableSession
from embedd_server.engine.sync import SyncJob
from embedd_server.sinks.pgvector import PgVectorTable
from embedd_server.sources.queries import count_rows, source_rows
from embedd_server.sources.sql import quote_ident, quote_literal

log = structlog.get_logger(__name__)

SWAP_LOCK_TIMEOUT = "2s"
SWAP_ATTEMPTS = 10


def same_vectors(old: VectorTableSpec, new: VectorTableSpec) -> bool:
    """True when the new spec would embed exactly the same text with the same model."""
    return (
        old.embedding_model == new.embedding_model
        and old.embedding_dimensions == new.embedding_dimensions
        and old.embedding_columns == new.embedding_columns
    )


@dataclasses.dataclass
class RebackfillJob:
    task: Task
    table: VectorTable
    spec: VectorTableSpec  # the new one
    session: TableSession
    checkpoint: Checkpoint
    confirm: Callable[[], Awaitable[None]]  # the lease is still ours (raises LeaseLost)
    chunk_rows: int = 1000
    inflight: int = 4
    maintenance_work_mem: str = ""

    @property
    def live(self) -> PgVectorTable:
        old = self.table.spec
        return PgVectorTable(old.target_schema, self.table.platform_vector_ref, old.embedding_dimensions)

    @property
    def swap(self) -> PgVectorTable:
        return PgVectorTable(
            self.spec.target_schema, f"{self.table.platform_vector_ref}_swap", self.spec.embedding_dimensions
        )

    def old(self) -> PgVectorTable:
        return PgVectorTable(
            self.spec.target_schema,
            f"{self.table.platform_vector_ref}_old",
            self.table.spec.embedding_dimensions,
        )

    async def run(self) -> tuple[int, int]:
        """Builds, swaps and cleans up; returns (vectors, source rows)."""
        writer = self.session.writer
        if await self.live.marker(writer) == swap_marker(self.spec):
            log.info("the swap committed before its holder stopped; recording it")
            await self.old().drop(writer)
            return await self._counts()
        swap = self.swap
        if same_vectors(self.table.spec, self.spec):
            await swap.create(writer, with_index=False)
            await self._seed_from_live()
        else:
            fill = BackfillJob(
                task=self.task,
                table=dataclasses.replace(self.table, spec=self.spec, platform_vector_ref=swap.name),
                embedder=self.session.embedder,
                reader=self.session.reader,
                writer=writer,
                checkpoint=self.checkpoint,
                chunk_rows=self.chunk_rows,
                inflight=self.inflight,
                maintenance_work_mem=self.maintenance_work_mem,
            )
            await fill.run()
        await self._catch_up()  # changes made while the swap table filled
        await swap.create_hnsw(writer, self.maintenance_work_mem or None)
        await swap.create_metadata_indexes(writer, self.spec.metadata_columns)
        await self._catch_up()  # the index build took a while too
        await self._swap_in()
        return await self._counts()

    async def _counts(self) -> tuple[int, int]:
        total = int(await self.session.reader.fetchval(count_rows(self.spec)))
        return await self.live_after_swap().count(self.session.writer), total

    def live_after_swap(self) -> PgVectorTable:
        return PgVectorTable(
            self.spec.target_schema, self.table.platform_vector_ref, self.spec.embedding_dimensions
        )

    async def _seed_from_live(self) -> None:
        """Copies live vectors whose text is unchanged into the swap table, in one statement."""
        rows, params = source_rows(self.spec)
        await self.session.writer.execute(
            f"INSERT INTO {self.swap.qualified} (pk_value, embedding, embedded_text, metadata, row_hash)"  # noqa: S608
            " SELECT src.pk, l.embedding, src.text, src.metadata, src.row_hash"
            f" FROM ({rows}) src JOIN {self.live.qualified} l"
            " ON l.pk_value = src.pk AND left(l.row_hash, 32) = left(src.row_hash, 32)"
            " ON CONFLICT (pk_value) DO NOTHING",
            *params,
        )

    async def _catch_up(self) -> None:
        await SyncJob(
            spec=self.spec,
            target=self.swap,
            embedder=self.session.embedder,
            reader=self.session.reader,
            writer=self.session.writer,
            chunk_rows=self.chunk_rows,
            full=True,
        ).run()

    async def _swap_in(self) -> None:
        """live -> `_old`, `_swap` -> live, in one transaction with a short lock timeout, retried:
        a query in flight on the live table delays the swap, never the other way round."""
        writer = self.session.writer
        ref = self.table.platform_vector_ref
        old = self.old()
        await old.drop(writer)  # a leftover of an interrupted earlier swap
        for attempt in range(1, SWAP_ATTEMPTS + 1):
            try:
                async with writer.transaction():
                    await writer.execute(f"SET LOCAL lock_timeout = {quote_literal(SWAP_LOCK_TIMEOUT)}")
                    await writer.execute(
                        f"ALTER TABLE {self.live.qualified} RENAME TO {quote_ident(old.name)}"
                    )
                    await writer.execute(f"ALTER TABLE {self.swap.qualified} RENAME TO {quote_ident(ref)}")
                    await self.live_after_swap().set_marker(writer, swap_marker(self.spec))
                    await self.confirm()  # last: a holder that lost its lease rolls back
                break
            except asyncpg.LockNotAvailableError:
                log.info("swap waiting for queries to finish", attempt=attempt)
                if attempt == SWAP_ATTEMPTS:
                    raise
                await asyncio.sleep(0.1 * attempt)
        await old.drop(writer)
