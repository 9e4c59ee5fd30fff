"""One sync cycle: make a live (indexed) vector table match its source again.

Batch mode compares every row's hash inside the user's database (one query; when nothing
changed nothing is shipped). cdc mode reads rows past the cursor column, with a periodic full
comparison that finds deletes (and anything a late-committing transaction hid from the
cursor). A row whose text is unchanged but whose metadata changed is updated in place,
without calling the embedding provider.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from embedd_server.domain.vector_tables import VectorTableSpec
from embedd_server.engine.backfill import EMPTY_TEXT
from embedd_server.providers.base import Embedder, InputType
from embedd_server.sinks.pgvector import PgVectorTable, VectorRow, encode_vectors
from embedd_server.sources.queries import diff_all, diff_since, max_cursor

_TEXT_HASH = 32  # row_hash = md5(text) || md5(metadata): the first half is the text's


@dataclass
class SyncOutcome:
    inserted: int = 0
    reembedded: int = 0
    metadata_only: int = 0
    deleted: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    cursor: str | None = None
    embedded_texts: int = 0

    @property
    def changed(self) -> int:
        return self.inserted + self.reembedded + self.metadata_only + self.deleted + len(self.failures)


@dataclass
class SyncJob:
    spec: VectorTableSpec
    target: PgVectorTable
    embedder: Embedder
    reader: asyncpg.Connection[Any]
    writer: asyncpg.Connection[Any]
    chunk_rows: int = 1000
    cursor: str | None = None  # cdc: where the last cycle stopped
    full: bool = True  # compare every row (always in batch mode; the sweep in cdc mode)

    async def run(self) -> SyncOutcome:
        outcome = SyncOutcome(cursor=self.cursor)
        # A repeatable-read snapshot: the cursor high-water mark and the rows agree.
        async with self.reader.transaction(isolation="repeatable_read", readonly=True):
            if self.spec.sync_mode == "cdc":
                outcome.cursor = await self.reader.fetchval(max_cursor(self.spec)) or self.cursor
            if self.full or self.spec.sync_mode != "cdc":
                query = diff_all(self.spec, self.target.qualified)
                args: tuple[object, ...] = query.params
            else:
                query = diff_since(self.spec, self.target.qualified)
                args = (*query.params, self.cursor)
            cursor = await self.reader.cursor(query.sql, *args)
            while rows := await cursor.fetch(self.chunk_rows):
                await self._apply(rows, outcome)
        return outcome

    async def _apply(self, rows: Sequence[asyncpg.Record], outcome: SyncOutcome) -> None:
        deleted = [r["pk"] for r in rows if r["deleted"]]
        live = [r for r in rows if not r["deleted"]]
        metadata_only = [
            r for r in live if r["old_hash"] and r["old_hash"][:_TEXT_HASH] == r["row_hash"][:_TEXT_HASH]
        ]
        changed_text = [r for r in live if r not in metadata_only]
        embeddable = [r for r in changed_text if r["text"]]
        failures = [(r["pk"], EMPTY_TEXT) for r in changed_text if not r["text"]]
        vectors: list[VectorRow] = []
        if embeddable:
            result = await self.embedder.embed([r["text"] for r in embeddable], InputType.DOCUMENT)
            outcome.embedded_texts += len(embeddable)
            encoded = encode_vectors(result.vectors)
            for i, r in enumerate(embeddable):
                if i in result.failed:
                    failures.append((r["pk"], result.failed[i]))
                else:
                    vectors.append(VectorRow(r["pk"], encoded[i], r["text"], r["metadata"], r["row_hash"]))
        # A row that can no longer be embedded must not keep serving its old text's vector.
        drop = deleted + [pk for pk, _ in failures]
        async with self.writer.transaction():
            if drop:
                await self.writer.execute(
                    f"DELETE FROM {self.target.qualified} WHERE pk_value = ANY($1::text[])",  # noqa: S608
                    drop,
                )
            if metadata_only:
                await self.writer.execute(
                    f"UPDATE {self.target.qualified} t SET metadata = u.metadata::jsonb,"  # noqa: S608
                    " row_hash = u.row_hash FROM unnest($1::text[], $2::text[], $3::text[])"
                    " AS u(pk_value, metadata, row_hash) WHERE t.pk_value = u.pk_value",
                    [r["pk"] for r in metadata_only],
                    [r["metadata"] for r in metadata_only],
                    [r["row_hash"] for r in metadata_only],
                )
            if vectors:
                await self.target.write(self.writer, vectors, upsert=True)
        outcome.deleted += len(deleted)
        outcome.metadata_only += len(metadata_only)
        outcome.inserted += sum(1 for r in embeddable if not r["old_hash"])
        outcome.reembedded += sum(1 for r in embeddable if r["old_hash"])
        outcome.failures += failures


def describe(outcome: SyncOutcome) -> str:
    return json.dumps(
        {
            "inserted": outcome.inserted,
            "reembedded": outcome.reembedded,
            "metadata_only": outcome.metadata_only,
            "deleted": outcome.deleted,
            "failed": len(outcome.failures),
        }
    )
