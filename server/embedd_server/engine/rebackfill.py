"""Re-backfill with an atomic swap: build a replacement store from the new spec while the
live one keeps serving, catch up with changes made meanwhile, index it, then swap it in and
drop the old one. Queries never see a gap. What a replacement and a swap are is the store's
business (platform: `<ref>_swap` and a rename in one transaction; managed: the next versioned
collection and one atomic alias update).

When only metadata columns changed, the live vectors are reused instead of paying the
provider again.

The swap is fenced and recoverable: the lease is confirmed as part of it, so a holder that
lost its lease never commits a swap; and a replacement that already serves (its holder died
between the swap and the control-plane update) is recorded by the next holder, not rebuilt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

import structlog

from embedd_server.domain.models import Task
from embedd_server.domain.vector_tables import VectorTableSpec
from embedd_server.engine.backfill import BackfillJob, Checkpoint, SetPhase, no_phase
from embedd_server.engine.batch_backfill import Waiting
from embedd_server.engine.sync import SyncJob
from embedd_server.providers.base import Embedder
from embedd_server.sinks.base import VectorStore
from embedd_server.sources.reader import SourceReader

log = structlog.get_logger(__name__)


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
    live_spec: VectorTableSpec
    spec: VectorTableSpec  # the new one
    live: VectorStore
    source: SourceReader  # reads the source with the new spec's columns
    embedder: Embedder
    checkpoint: Checkpoint
    confirm: Callable[[], Awaitable[None]]  # the lease is still ours (raises LeaseLost)
    use_import: bool = False  # take vectors from the import where they serve (BackfillJob)
    # Fills the replacement through the provider's batch API instead (engine/batch_backfill.py):
    # Waiting until it is done, then the catch-up and the swap follow in that step.
    batch_fill: Callable[[VectorStore], Awaitable[Waiting | None]] | None = None
    chunk_rows: int = 1000
    inflight: int = 4
    maintenance_work_mem: str = ""
    # Vectors the new store may take (managed mode's tier); None: no limit.
    budget: int | None = None
    rows_skipped: int = 0
    set_phase: SetPhase = no_phase
    index_status: str = "ready"  # after run(): the swapped-in store's ("none": too wide for one)

    async def run(self) -> tuple[int, int] | Waiting:
        """Builds, swaps and cleans up; returns (vectors, source rows), or how long to wait
        for a batch fill."""
        replacement = self.live.replacement(self.spec)
        if await replacement.swapped():
            log.info("the swap committed before its holder stopped; recording it")
            await replacement.promoted().after_swap()
            return await replacement.promoted().count(), await self.source.count()
        if same_vectors(self.live_spec, self.spec):
            await replacement.create()
            await replacement.reuse_vectors(self.live, self.source)
        elif self.batch_fill is not None:
            waiting = await self.batch_fill(replacement)
            if waiting is not None:
                return waiting
        else:
            fill = BackfillJob(
                task=self.task,
                spec=self.spec,
                store=replacement,
                source=self.source,
                embedder=self.embedder,
                checkpoint=self.checkpoint,
                use_import=self.use_import,
                chunk_rows=self.chunk_rows,
                inflight=self.inflight,
                maintenance_work_mem=self.maintenance_work_mem,
                budget=self.budget,
                set_phase=self.set_phase,
            )
            await fill.run()
            self.budget = fill.budget
        await self.set_phase("swapping")
        await self._catch_up(replacement)  # changes made while the replacement filled
        await replacement.build_indexes(self.spec.columns, self.maintenance_work_mem or None)
        await self._catch_up(replacement)  # the index build took a while too
        await self.live.swap_in(replacement, self.confirm)
        live = replacement.promoted()
        self.index_status = "ready" if await live.has_index() else "none"
        return await live.count(), await self.source.count()

    async def _catch_up(self, replacement: VectorStore) -> None:
        job = SyncJob(
            spec=self.spec, store=replacement, source=self.source, embedder=self.embedder, budget=self.budget
        )
        outcome = await job.run()
        self.budget = job.budget
        # A full diff: the rows over the budget, as the replacement ends up
        self.rows_skipped = outcome.skipped
