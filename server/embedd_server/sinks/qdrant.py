"""Managed mode: a vector table's vectors in a Qdrant collection behind a stable alias.

Layout (docs/managed-mode.md):
- the alias is the vector table's ref (`embedd_vt_<8 hex>_<slug>`, shown as
  `managed_collection`); it points at a versioned collection `<ref>_v<N>`. Queries and sync
  use the alias; a re-backfill fills `<ref>_v<N+1>` and swaps the alias to it in one atomic
  alias update, then drops the old collection.
- a point per source row: id = uuid5 of the table's ref and the primary key (Qdrant ids are
  integers or UUIDs only), payload `{"pk", "metadata", "text", "row_hash"}` where `metadata`
  is the row's metadata object (every mapped column, JSON null for NULL) - the same object
  platform mode stores.
- a payload index per filterable metadata column, of the matching type; HNSW is built after a
  bulk load (`m = 0` while loading), as Qdrant's bulk-upload guidance says.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from qdrant_client.http import models

from embedd_server.domain.filters import Node
from embedd_server.domain.vector_tables import ColumnSpec, VectorTableSpec
from embedd_server.providers.base import Vectors
from embedd_server.sinks.base import (
    Batch,
    Change,
    ChangeSet,
    Confirm,
    Hit,
    Source,
    SourceRow,
    VectorStore,
    same_text,
)
from embedd_server.sinks.qdrant_backend import QdrantBackend
from embedd_server.sinks.qdrant_filters import METADATA, field_key, to_qdrant

# Points per upsert request and pages of scrolls (Qdrant's guidance: 64-256 per batch).
WRITE_BATCH = 256
PAGE = 1000
HNSW_M = 16

_INDEX_TYPES = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "boolean": models.PayloadSchemaType.BOOL,
    "datetime": models.PayloadSchemaType.DATETIME,
}


def collection_name(ref: str, version: int) -> str:
    return f"{ref}_v{version}"


def point_namespace(ref: str) -> uuid.UUID:
    """The UUID namespace of a table's point ids: id = uuid5(namespace, primary key)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"embedd:{ref}")


class QdrantStore:
    """One vector table's collection (`version`), served under the alias `ref`."""

    def __init__(
        self,
        backend: QdrantBackend,
        ref: str,
        dimensions: int,
        version: int = 1,
        *,
        confirm: Confirm | None = None,
    ) -> None:
        self._qd = backend
        self._ref = ref
        self.dimensions = dimensions
        self.version = version
        # Qdrant has no conditional writes: a job confirms its lease before each one, so a
        # holder that lost it stops at its next write (and a late write is an upsert of the
        # source as read, which the next diff corrects by its hash).
        self._confirm = confirm
        self.collection = collection_name(ref, version)
        self._namespace = point_namespace(ref)

    @property
    def ref(self) -> str:
        return self._ref

    def point_id(self, pk: str) -> str:
        """Deterministic: the same row always lands on the same point (upserts are idempotent)."""
        return str(uuid.uuid5(self._namespace, pk))

    # -- lifecycle ---------------------------------------------------------------------------

    async def create(self) -> None:
        """The collection (HNSW deferred: m = 0 until `build_indexes`), and the alias if it
        does not exist yet (a re-backfill's collection gets it only at the swap)."""
        if not await self._qd.call("collection_exists", self.collection):
            await self._qd.call(
                "create_collection",
                self.collection,
                vectors_config=models.VectorParams(size=self.dimensions, distance=models.Distance.COSINE),
                hnsw_config=models.HnswConfigDiff(m=0),
            )
        if await self._alias_target() is None:
            await self._set_alias(self.collection)

    async def drop(self) -> None:
        """Drops the alias and every collection of this table (the live one and leftovers)."""
        if await self._alias_target() is not None:
            await self._qd.call(
                "update_collection_aliases",
                [models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self._ref))],
            )
        for name in await self._collections():
            await self._qd.call("delete_collection", name)

    async def _collections(self) -> list[str]:
        listed = await self._qd.call("get_collections")
        prefix = f"{self._ref}_v"
        return [
            c.name
            for c in listed.collections
            if c.name.startswith(prefix) and c.name[len(prefix) :].isdigit()
        ]

    async def _alias_target(self) -> str | None:
        aliases = await self._qd.call("get_aliases")
        return next((a.collection_name for a in aliases.aliases if a.alias_name == self._ref), None)

    async def _set_alias(self, collection: str) -> None:
        """Points the alias at `collection` in one atomic alias update."""
        ops: list[Any] = []
        if await self._alias_target() is not None:
            ops.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self._ref)))
        ops.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=collection, alias_name=self._ref)
            )
        )
        await self._qd.call("update_collection_aliases", ops)

    # -- re-backfill ---------------------------------------------------------------------------

    def replacement(self, spec: VectorTableSpec) -> QdrantStore:
        """The collection of the spec's version, filled while this one keeps serving."""
        return QdrantStore(
            self._qd, self._ref, spec.embedding_dimensions, spec.store_version, confirm=self._confirm
        )

    def promoted(self) -> QdrantStore:
        """The same collection, served under the alias."""
        return self

    async def swapped(self) -> bool:
        """Whether the alias points at this store's collection (a swap already happened)."""
        return await self._alias_target() == self.collection

    async def swap_in(self, replacement: VectorStore, confirm: Confirm) -> None:
        """The alias moves to `replacement` in one atomic alias update (queries never see a
        gap); then every other collection of the table is dropped."""
        assert isinstance(replacement, QdrantStore) and replacement.ref == self._ref
        await confirm()
        await self._set_alias(replacement.collection)
        await replacement.after_swap()

    async def after_swap(self) -> None:
        for name in await self._collections():
            if name != self.collection:
                await self._qd.call("delete_collection", name)

    async def reuse_vectors(self, live: VectorStore, source: Source) -> None:
        """Copies the live vectors of rows whose embedded text is unchanged (a re-backfill that
        changed only metadata columns): no provider call for them."""
        assert isinstance(live, QdrantStore)
        offset: Any = None
        while True:
            points, offset = await self._qd.call(
                "scroll",
                live.ref,
                limit=PAGE,
                offset=offset,
                with_payload=["pk", "row_hash"],
                with_vectors=True,
            )
            old = {p.payload["pk"]: (p.payload["row_hash"], p.vector) for p in points if p.payload}
            fresh = [r for r in await source.rows(list(old)) if same_text(old[r.pk][0], r.row_hash)]
            if fresh:
                await self._upsert(fresh, [old[r.pk][1] for r in fresh])
            if offset is None:
                return

    # -- contents ------------------------------------------------------------------------------

    async def count(self) -> int:
        result = await self._qd.call("count", self.collection, exact=True)
        return int(result.count)

    async def is_empty(self) -> bool:
        return await self.count() == 0

    async def has_index(self) -> bool:
        info = await self._qd.call("get_collection", self.collection)
        return bool(info.config.hnsw_config.m)

    async def drop_index(self) -> None:
        await self._qd.call("update_collection", self.collection, hnsw_config=models.HnswConfigDiff(m=0))

    async def index_progress(self) -> float | None:
        return None  # Qdrant optimises in the background and publishes no share done

    async def build_indexes(
        self, columns: Sequence[ColumnSpec], maintenance_work_mem: str | None, *, concurrently: bool = False
    ) -> None:
        # Qdrant keeps taking writes while it builds (`concurrently` is how it always works).
        for column in columns:
            schema = _INDEX_TYPES.get(column.filter_type or "")
            if column.role == "metadata" and schema is not None:
                await self._qd.call(
                    "create_payload_index",
                    self.collection,
                    field_name=field_key(column.name),
                    field_schema=schema,
                )
        await self._qd.call("update_collection", self.collection, hnsw_config=models.HnswConfigDiff(m=HNSW_M))

    async def write(self, batch: Batch, *, upsert: bool) -> None:
        # Deterministic ids make every write an upsert: a chunk written twice is harmless.
        if self._confirm is not None:
            await self._confirm()
        await self._upsert(list(batch.rows), [v.tolist() for v in batch.vectors])

    async def _upsert(self, rows: Sequence[SourceRow], vectors: Sequence[Any]) -> None:
        for start in range(0, len(rows), WRITE_BATCH):
            part = rows[start : start + WRITE_BATCH]
            await self._qd.call(
                "upsert",
                self.collection,
                models.Batch(
                    ids=[self.point_id(r.pk) for r in part],
                    vectors=list(vectors[start : start + WRITE_BATCH]),
                    payloads=[point_payload(r) for r in part],
                ),
            )

    async def apply(self, changes: ChangeSet) -> None:
        """Deletes, metadata-only updates (the payload, no vector) and upserts. Each is
        idempotent, so a crash between them is repaired by the next cycle's diff."""
        if self._confirm is not None:
            await self._confirm()
        if changes.delete:
            await self._delete(changes.delete)
        if changes.metadata:
            await self._qd.call(
                "batch_update_points",
                self.collection,
                [
                    models.SetPayloadOperation(
                        set_payload=models.SetPayload(
                            payload={METADATA: json.loads(r.metadata), "row_hash": r.row_hash},
                            points=[self.point_id(r.pk)],
                        )
                    )
                    for r in changes.metadata
                ],
            )
        if changes.upsert is not None and changes.upsert.rows:
            await self._upsert(list(changes.upsert.rows), [v.tolist() for v in changes.upsert.vectors])

    async def _delete(self, keys: Sequence[str]) -> None:
        ids: list[Any] = [self.point_id(k) for k in keys]
        await self._qd.call("delete", self.collection, points_selector=models.PointIdsList(points=ids))

    # -- diff ----------------------------------------------------------------------------------

    async def changes(self, source: Source, *, since: str | None, full: bool) -> AsyncIterator[list[Change]]:
        """Source hashes in key order, compared chunk by chunk with the stored points (looked up
        by their deterministic ids); only rows that differ are read in full. With `full`, a
        second pass over the stored keys finds deleted rows."""
        async for chunk in source.hashes(since=None if full else since):
            stored = await self._stored_hashes([pk for pk, _ in chunk])
            differ = [pk for pk, h in chunk if stored.get(pk) != h]
            if differ:
                rows = await source.rows(differ)
                yield [Change(r.pk, r, stored.get(r.pk)) for r in rows]
        if full:
            async for keys in self._keys():
                gone = set(keys) - await source.existing(list(keys))
                if gone:
                    yield [Change(pk, None, keys[pk]) for pk in sorted(gone)]

    async def _stored_hashes(self, keys: Sequence[str]) -> dict[str, str]:
        points = await self._qd.call(
            "retrieve", self.collection, ids=[self.point_id(k) for k in keys], with_payload=["pk", "row_hash"]
        )
        return {p.payload["pk"]: p.payload["row_hash"] for p in points if p.payload}

    async def _keys(self) -> AsyncIterator[dict[str, str]]:
        """Stored keys (with their hashes), a page at a time."""
        offset: Any = None
        while True:
            points, offset = await self._qd.call(
                "scroll", self.collection, limit=PAGE, offset=offset, with_payload=["pk", "row_hash"]
            )
            yield {p.payload["pk"]: p.payload["row_hash"] for p in points if p.payload}
            if offset is None:
                return

    async def remove_vanished(self, source: Source) -> int:
        removed = 0
        async for keys in self._keys():
            gone = set(keys) - await source.existing(list(keys))
            if gone:
                await self._delete(sorted(gone))
                removed += len(gone)
        return removed

    # -- search --------------------------------------------------------------------------------

    async def search(
        self, vector: Vectors, where: Node, limit: int, *, include_text: bool, rows_hint: int
    ) -> list[Hit]:
        fields = ["pk", METADATA, "text"] if include_text else ["pk", METADATA]
        result = await self._qd.call(
            "query_points",
            self._ref,
            query=vector.tolist(),
            query_filter=to_qdrant(where),
            limit=limit,
            with_payload=fields,
        )
        return [
            Hit(
                p.payload["pk"],
                float(p.score),
                p.payload[METADATA],
                p.payload.get("text") if include_text else None,
            )
            for p in result.points
            if p.payload
        ]


def point_payload(row: SourceRow) -> dict[str, Any]:
    """What a point carries besides its vector (module doc)."""
    return {"pk": row.pk, METADATA: json.loads(row.metadata), "text": row.text, "row_hash": row.row_hash}
