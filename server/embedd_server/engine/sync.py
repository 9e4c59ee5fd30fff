"""One sync cycle: make a live vector store match its source again.

The store finds the differences (`VectorStore.changes`): platform mode compares every row's
hash inside the user's database in one query, managed mode compares the source's hashes with
the points' chunk by chunk; cdc mode looks only at rows past the cursor column, with a
periodic full comparison that finds deletes (and anything a late-committing transaction hid
from the cursor). A row whose text is unchanged but whose metadata changed is updated in
place, without calling the embedding provider.

Managed tables may carry a vector budget: at the budget, new rows are skipped (counted),
while updates and deletes are always applied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from embedd_server.domain.vector_tables import VectorTableSpec
from embedd_server.engine.backfill import embedded
from embedd_server.providers.base import Embedder, InputType
from embedd_server.sinks.base import Change, ChangeSet, VectorStore, same_text
from embedd_server.sources.reader import SourceReader


@dataclass
class SyncOutcome:
    inserted: int = 0
    reembedded: int = 0
    metadata_only: int = 0
    deleted: int = 0
    skipped: int = 0  # new rows over the vector budget
    failures: list[tuple[str, str]] = field(default_factory=list)
    cursor: str | None = None
    embedded_texts: int = 0

    @property
    def changed(self) -> int:
        return self.inserted + self.reembedded + self.metadata_only + self.deleted + len(self.failures)


@dataclass
class SyncJob:
    spec: VectorTableSpec
    store: VectorStore
    source: SourceReader
    embedder: Embedder
    cursor: str | None = None  # cdc: where the last cycle stopped
    full: bool = True  # compare every row (always in batch mode; the sweep in cdc mode)
    budget: int | None = None  # new vectors the store may still take; None: no limit

    async def run(self) -> SyncOutcome:
        outcome = SyncOutcome(cursor=self.cursor)
        reader = self.source.conn
        # A repeatable-read snapshot: the cursor high-water mark and the rows agree.
        async with reader.transaction(isolation="repeatable_read", readonly=True):
            if self.spec.sync_mode == "cdc":
                outcome.cursor = await self.source.max_cursor() or self.cursor
            full = self.full or self.spec.sync_mode != "cdc"
            async for changes in self.store.changes(self.source, since=self.cursor, full=full):
                await self._apply(changes, outcome)
        return outcome

    async def _apply(self, changes: list[Change], outcome: SyncOutcome) -> None:
        deleted = [c.pk for c in changes if c.deleted]
        live = [c for c in changes if c.row is not None]
        metadata_only = [c.row for c in live if c.row is not None and same_text(c.old_hash, c.row.row_hash)]
        changed_text = [c for c in live if c.row is not None and not same_text(c.old_hash, c.row.row_hash)]
        if self.budget is not None:
            new = [c for c in changed_text if c.old_hash is None]
            over = new[self.budget :] if len(new) > self.budget else []
            self.budget = max(self.budget - len(new), 0)
            if over:
                skipped = {c.pk for c in over}
                changed_text = [c for c in changed_text if c.pk not in skipped]
                outcome.skipped += len(over)
        rows = [c.row for c in changed_text if c.row is not None]
        with_text = [r for r in rows if r.text]
        result = None
        if with_text:
            result = await self.embedder.embed([r.text or "" for r in with_text], InputType.DOCUMENT)
            outcome.embedded_texts += len(with_text)
        batch, failures = embedded(rows, result)
        # A row that can no longer be embedded must not keep serving its old text's vector.
        await self.store.apply(
            ChangeSet(delete=deleted + [pk for pk, _ in failures], metadata=metadata_only, upsert=batch)
        )
        was_stored = {c.pk for c in changed_text if c.old_hash is not None}
        outcome.deleted += len(deleted)
        outcome.metadata_only += len(metadata_only)
        outcome.inserted += sum(1 for r in batch.rows if r.pk not in was_stored)
        outcome.reembedded += sum(1 for r in batch.rows if r.pk in was_stored)
        outcome.failures += failures


def cycle_counts(outcome: SyncOutcome) -> dict[str, int | bool]:
    """What the cycle did, as its event records it (`changed`: anything at all)."""
    return {
        "inserted": outcome.inserted,
        "reembedded": outcome.reembedded,
        "metadata_only": outcome.metadata_only,
        "deleted": outcome.deleted,
        "skipped": outcome.skipped,
        "failed": len(outcome.failures),
        "changed": bool(outcome.changed or outcome.skipped),
    }


def describe(outcome: SyncOutcome) -> str:
    return json.dumps(cycle_counts(outcome))
