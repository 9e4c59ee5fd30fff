"""What the engine needs from a vector store, whichever one holds the vectors.

Two stores implement `VectorStore`: `sinks.pgvector.PgVectorStore` (platform mode: a pgvector
table in the user's own database) and `sinks.qdrant.QdrantStore` (managed mode: a Qdrant
collection behind an alias). Backfill, sync, re-backfill and query talk only to this protocol;
one behavioural test suite runs against both.

A row's identity is the source primary key as text (`pk`); its `row_hash` (below) says
whether it changed. Vectors travel as float32 numpy rows, L2-normalised by the embedder;
each store encodes them its own way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from embedd_server.domain.filters import Node
from embedd_server.domain.vector_tables import ColumnSpec, VectorTableSpec
from embedd_server.providers.base import Vectors

# row_hash = md5(embedded text) || md5(the mapped columns' raw values), 64 hex characters,
# computed in the source database (sources/queries.py). The first half alone tells a text
# change (re-embed) from a metadata-only change (update in place, no provider call).
TEXT_HASH_CHARS = 32


def same_text(old_hash: str | None, new_hash: str) -> bool:
    """True when two row hashes have the same embedded text."""
    return old_hash is not None and old_hash[:TEXT_HASH_CHARS] == new_hash[:TEXT_HASH_CHARS]


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One source row as the source query composes it: the text to embed, the metadata
    object (JSON text) and the change hash."""

    pk: str
    text: str | None
    metadata: str
    row_hash: str
    # A vector made before, read from the table's import (L2-normalised); None: embed the text.
    imported: Vectors | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Batch:
    """Rows to store with their vectors (`vectors[i]` belongs to `rows[i]`)."""

    rows: Sequence[SourceRow]
    vectors: Vectors


@dataclass(frozen=True, slots=True)
class Change:
    """A difference between the source and the store: a new or changed row (`old_hash` None
    for a new one), or a deleted key (`row` None)."""

    pk: str
    row: SourceRow | None
    old_hash: str | None

    @property
    def deleted(self) -> bool:
        return self.row is None


@dataclass(frozen=True, slots=True)
class ChangeSet:
    """What one sync step applies, atomically where the store can (pgvector: one transaction)."""

    delete: Sequence[str] = ()
    metadata: Sequence[SourceRow] = ()  # same text: only metadata and row_hash change
    upsert: Batch | None = None


@dataclass(frozen=True, slots=True)
class Hit:
    pk: str
    score: float  # cosine similarity
    metadata: dict[str, Any]  # the stored metadata object
    embedded_text: str | None


class Source(Protocol):
    """The user's source table, as the stores' diffs need it (sources.reader.SourceReader)."""

    def hashes(self, *, since: str | None = None) -> AsyncIterator[list[tuple[str, str]]]:
        """(pk, row_hash) of every row (or of rows with cursor >= `since`), in key order."""
        ...

    async def rows(self, keys: Sequence[str]) -> list[SourceRow]:
        """The rows with these keys that still exist."""
        ...

    async def existing(self, keys: Sequence[str]) -> set[str]:
        """Which of these keys still exist."""
        ...


# Confirms that the job's lease is still its own (raises LeaseLost when not).
Confirm = Callable[[], Awaitable[None]]


class VectorStore(Protocol):
    """One vector table's vectors: a pgvector table or a Qdrant collection."""

    @property
    def ref(self) -> str:
        """Where the vectors live, as users see it (table name, collection alias)."""
        ...

    async def create(self) -> None:
        """Creates the (empty) table or collection if missing; idempotent."""
        ...

    async def drop(self) -> None:
        """Drops the vectors and every leftover of a re-backfill; idempotent."""
        ...

    async def count(self) -> int: ...

    async def is_empty(self) -> bool: ...

    async def has_index(self) -> bool:
        """Whether the ANN index is built (a fresh load runs without it)."""
        ...

    async def drop_index(self) -> None:
        """Before a bulk load into an empty store: the ANN index is built after."""
        ...

    async def build_indexes(
        self, columns: Sequence[ColumnSpec], maintenance_work_mem: str | None, *, concurrently: bool = False
    ) -> None:
        """The ANN index and the metadata indexes of the filterable columns; `concurrently`
        when sync cycles may write the store meanwhile (the live table after a fill)."""
        ...

    async def index_progress(self) -> float | None:
        """The share done (0-1) of an index build running now; None when none runs or the
        store cannot tell."""
        ...

    async def write(self, batch: Batch, *, upsert: bool) -> None:
        """Stores rows. Without `upsert` the keys must be new (a fresh load)."""
        ...

    async def apply(self, changes: ChangeSet) -> None:
        """Deletes, metadata-only updates and upserts of one sync step."""
        ...

    def changes(self, source: Source, *, since: str | None, full: bool) -> AsyncIterator[list[Change]]:
        """What differs between `source` and the store: every row (`full`), or only rows past
        the cdc cursor `since` (no deletes then)."""
        ...

    async def remove_vanished(self, source: Source) -> int:
        """Deletes stored keys whose source row is gone; returns how many."""
        ...

    async def search(
        self, vector: Vectors, where: Node, limit: int, *, include_text: bool, rows_hint: int
    ) -> list[Hit]:
        """The `limit` nearest rows passing `where`, best first. `rows_hint` is the table's
        size as the control plane knows it (small tables are searched exactly)."""
        ...

    # -- re-backfill: a replacement is built beside the live store, then swapped in ----------

    def replacement(self, spec: VectorTableSpec) -> VectorStore:
        """The store a re-backfill to `spec` fills while this one keeps serving."""
        ...

    def promoted(self) -> VectorStore:
        """(On a replacement.) The store it is once swapped in: the live one."""
        ...

    async def swapped(self) -> bool:
        """(On a replacement.) Whether it already serves as the live store: a swap that
        committed before its holder stopped, to be recorded rather than rebuilt."""
        ...

    async def reuse_vectors(self, live: VectorStore, source: Source) -> None:
        """(On a replacement.) Copies the live vectors of rows whose embedded text is
        unchanged, so a change of metadata columns calls no provider."""
        ...

    async def swap_in(self, replacement: VectorStore, confirm: Confirm) -> None:
        """Makes `replacement` the live store atomically (queries never see a gap), after
        `confirm` says the lease is still ours; then drops what it replaced."""
        ...

    async def after_swap(self) -> None:
        """(On the new live store.) Drops what a swap left behind."""
        ...
