"""A managed table's vector budget (its organisation's tier) for writers that cannot stop
themselves at it: a batch-API fill learns its rows' vectors from the provider's output files,
batch after batch, so the budget is applied where they are written. BackfillJob and SyncJob
apply it themselves (they also skip the provider call for rows past it)."""

from __future__ import annotations

from typing import Any, cast

from embedd_server.sinks.base import Batch, VectorStore


class BudgetedStore:
    """`store`, taking at most `budget` more vectors through `write`; rows past it are not
    written (the next sync cycle stores them once the budget allows). Everything else is the
    store's own."""

    def __init__(self, store: VectorStore, budget: int) -> None:
        self._store = store
        self.budget = budget

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def write(self, batch: Batch, *, upsert: bool) -> None:
        keep = min(len(batch.rows), self.budget)
        self.budget -= keep
        if keep:
            await self._store.write(Batch(batch.rows[:keep], batch.vectors[:keep]), upsert=upsert)


def within_budget(store: VectorStore, budget: int | None) -> VectorStore:
    return store if budget is None else cast(VectorStore, BudgetedStore(store, budget))
