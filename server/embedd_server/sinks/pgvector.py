"""Platform mode: vectors in a pgvector table in the user's own database.

The table is exactly the seed's (`pk_value TEXT PRIMARY KEY, embedding vector(N),
embedded_text TEXT, metadata JSONB, row_hash TEXT`) with an HNSW cosine index. Vectors go in
with binary COPY; a fresh load runs without the HNSW index and builds it after (about 10x
faster than inserting into an indexed table: docs/facts.md, "pgvector write costs").
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
from pgvector import Vector

from embedd_server.domain.vector_tables import (
    HALFVEC_MIN_DIMS,
    HNSW_MAX_HALFVEC_DIMS,
    HNSW_MAX_VECTOR_DIMS,
    ColumnSpec,
    index_name,
)
from embedd_server.providers.base import Vectors
from embedd_server.sources.sql import qualified, quote_ident, quote_literal

COLUMNS = ("pk_value", "embedding", "embedded_text", "metadata", "row_hash")


@dataclass(frozen=True, slots=True)
class VectorRow:
    pk_value: str
    embedding: bytes  # pgvector binary wire format, see encode_vectors
    embedded_text: str
    metadata: str  # JSON text, straight from the source query
    row_hash: str


def encode_vectors(vectors: Vectors) -> list[bytes]:
    """pgvector's binary format per row (dims, unused, big-endian float32), in one numpy pass."""
    n, dims = vectors.shape
    header = struct.pack(">HH", dims, 0)
    body = np.ascontiguousarray(vectors, dtype=">f4").tobytes()
    step = dims * 4
    return [header + body[i * step : (i + 1) * step] for i in range(n)]


def _encode_vector(value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return Vector(value).to_binary()  # type: ignore[arg-type]


async def register_vector_codec(conn: asyncpg.Connection[Any]) -> None:
    """The `vector` codec on this connection, taking pre-encoded bytes (see encode_vectors)."""
    schema = await conn.fetchval(
        "SELECT n.nspname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
        " WHERE t.typname = 'vector'"
    )
    await conn.set_type_codec(
        "vector",
        schema=schema,
        encoder=_encode_vector,
        decoder=Vector.from_binary,
        format="binary",
    )


def metadata_expression(column: ColumnSpec) -> str | None:
    """The typed SQL expression of a metadata value: what the filter compiler compares and the
    btree indexes cover (the two must stay identical). None: not indexable."""
    key = f"(metadata->>{quote_literal(column.name)})"
    match column.filter_type:
        case "keyword":
            return key
        case "integer":
            return f"({key}::bigint)"
        case "float":
            return f"({key}::float8)"
        case "boolean":
            return f"({key}::boolean)"
    return None  # datetime casts are not immutable; they are compared without an index


class PgVectorTable:
    """One physical vector table (`schema.name`) in the user's database."""

    def __init__(self, schema: str, name: str, dimensions: int, *, halfvec: bool = False) -> None:
        self.schema = schema
        self.name = name
        self.dimensions = dimensions
        self.qualified = qualified(schema, name)
        # HNSW over halfvec where the spec chose it (VectorTableSpec.hnsw_halfvec) and the
        # vectors are wide enough for it to pay, and always above 2,000 dimensions: pgvector
        # indexes `vector` only up to there.
        self.halfvec = (halfvec and dimensions >= HALFVEC_MIN_DIMS) or dimensions > HNSW_MAX_VECTOR_DIMS

    def vector_expression(self) -> str:
        """What the HNSW index covers; queries must order by the same expression."""
        if self.halfvec:
            return f"(embedding::halfvec({self.dimensions}))"
        return "embedding"

    async def create(self, conn: asyncpg.Connection[Any], *, with_index: bool = True) -> None:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.qualified} ("
            " pk_value TEXT PRIMARY KEY,"
            f" embedding vector({self.dimensions}),"
            " embedded_text TEXT,"
            " metadata JSONB DEFAULT '{}',"
            " row_hash TEXT)"
        )
        if with_index:
            await self.create_hnsw(conn)

    def _index_name(self, kind: str) -> str:
        """Unique per creation: a re-backfill swaps tables under their names, and index names
        are schema-wide, so indexes are found by table and definition, never by name."""
        return index_name(self.name, f"{secrets.token_hex(3)}_{kind}")

    async def indexes(self, conn: asyncpg.Connection[Any]) -> list[tuple[str, str, bool]]:
        """(qualified name, definition, is primary key) of this table's valid indexes (a
        concurrent build that was interrupted leaves an invalid one: `drop_invalid`)."""
        rows = await conn.fetch(
            "SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS def,"
            " i.indisprimary AS pk FROM pg_index i WHERE i.indrelid = to_regclass($1) AND i.indisvalid",
            self.qualified,
        )
        return [(r["name"], r["def"], r["pk"]) for r in rows]

    async def drop_invalid(self, conn: asyncpg.Connection[Any]) -> None:
        """Drops what an interrupted CREATE INDEX CONCURRENTLY left: an index marked invalid,
        which queries never use and a new build would collide with."""
        for r in await conn.fetch(
            "SELECT i.indexrelid::regclass::text AS name FROM pg_index i"
            " WHERE i.indrelid = to_regclass($1) AND NOT i.indisvalid",
            self.qualified,
        ):
            await conn.execute(f"DROP INDEX IF EXISTS {r['name']}")

    async def has_hnsw(self, conn: asyncpg.Connection[Any]) -> bool:
        return any("USING hnsw" in d for _, d, _ in await self.indexes(conn))

    async def create_hnsw(
        self,
        conn: asyncpg.Connection[Any],
        maintenance_work_mem: str | None = None,
        *,
        concurrently: bool = False,
    ) -> None:
        """The HNSW index; `concurrently` while sync cycles write the table (CREATE INDEX
        CONCURRENTLY: writes go on during the build; it cannot run in a transaction block, so
        the memory setting is the session's for the build, then reset)."""
        if self.dimensions > HNSW_MAX_HALFVEC_DIMS or await self.has_hnsw(conn):
            return  # too wide for HNSW even as halfvec (queries scan exactly), or built already
        ops = "halfvec_cosine_ops" if self.halfvec else "vector_cosine_ops"
        create = (
            f"CREATE INDEX {'CONCURRENTLY ' if concurrently else ''}{quote_ident(self._index_name('hnsw'))}"
            f" ON {self.qualified} USING hnsw ({self.vector_expression()} {ops})"
        )
        if not concurrently:
            async with conn.transaction():
                if maintenance_work_mem:
                    await conn.execute(
                        f"SET LOCAL maintenance_work_mem = {quote_literal(maintenance_work_mem)}"
                    )
                await conn.execute(create)
            return
        await self.drop_invalid(conn)
        if maintenance_work_mem:
            await conn.execute(f"SET maintenance_work_mem = {quote_literal(maintenance_work_mem)}")
        try:
            await conn.execute(create)
        finally:
            if maintenance_work_mem:
                await conn.execute("RESET maintenance_work_mem")

    async def index_progress(self, conn: asyncpg.Connection[Any]) -> float | None:
        """The share done of an index build running on this table (any session), None when
        none runs. pg_stat_progress_create_index counts each phase of a concurrent build from
        zero, so the phases are weighted in their order: building 90 %, validating 9 %, and
        the last waits (for older transactions to end) at 99 %."""
        row = await conn.fetchrow(
            "SELECT phase, tuples_done, tuples_total, blocks_done, blocks_total"
            " FROM pg_stat_progress_create_index WHERE relid = to_regclass($1)",
            self.qualified,
        )
        if row is None:
            return None
        phase: str = row["phase"]
        share = 0.0
        for done, total in (
            (row["tuples_done"], row["tuples_total"]),
            (row["blocks_done"], row["blocks_total"]),
        ):
            if total:
                share = min(float(done) / float(total), 1.0)
                break
        if phase.startswith("building index"):
            return 0.9 * share
        if phase.startswith("index validation"):
            return 0.9 + 0.09 * share
        if phase == "waiting for writers before validation":
            return 0.9
        if phase in ("initializing", "waiting for writers before build"):
            return 0.0
        return 0.99

    async def drop_hnsw(self, conn: asyncpg.Connection[Any]) -> None:
        for name, definition, _ in await self.indexes(conn):
            if "USING hnsw" in definition:
                await conn.execute(f"DROP INDEX IF EXISTS {name}")

    async def create_metadata_indexes(
        self, conn: asyncpg.Connection[Any], columns: Sequence[ColumnSpec], *, concurrently: bool = False
    ) -> None:
        """Btree expression indexes on filterable metadata: selective filters then read only the
        rows they select and rank them exactly (recall 1.0: docs/facts.md, "Query paths").
        Rebuilt from scratch (cheap), so a resumed or repeated fill never leaves a stale one;
        `concurrently` while sync cycles write the table."""
        how = "CONCURRENTLY " if concurrently else ""
        if concurrently:
            await self.drop_invalid(conn)
        for name, definition, is_pk in await self.indexes(conn):
            if not is_pk and "USING hnsw" not in definition:
                await conn.execute(f"DROP INDEX {how}IF EXISTS {name}")
        for i, column in enumerate(columns):
            expr = metadata_expression(column)
            if expr is not None:
                await conn.execute(
                    f"CREATE INDEX {how}{quote_ident(self._index_name(f'm{i}'))} ON {self.qualified} ({expr})"
                )

    async def is_empty(self, conn: asyncpg.Connection[Any]) -> bool:
        return not await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {self.qualified})")

    async def count(self, conn: asyncpg.Connection[Any]) -> int:
        return int(await conn.fetchval(f"SELECT count(*) FROM {self.qualified}"))

    async def marker(self, conn: asyncpg.Connection[Any]) -> str | None:
        """The table's comment (see domain.vector_tables.swap_marker); None without one."""
        value: str | None = await conn.fetchval(
            "SELECT obj_description(to_regclass($1), 'pg_class')", self.qualified
        )
        return value

    async def set_marker(self, conn: asyncpg.Connection[Any], text: str) -> None:
        await conn.execute(f"COMMENT ON TABLE {self.qualified} IS {quote_literal(text)}")

    async def exists(self, conn: asyncpg.Connection[Any]) -> bool:
        return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", self.qualified))

    async def write(self, conn: asyncpg.Connection[Any], rows: Sequence[VectorRow], *, upsert: bool) -> None:
        """Binary COPY of `rows`. With `upsert`, through a staging table so that rows already
        present (a chunk re-read after a crash, a sync update) replace the old ones."""
        records = [(r.pk_value, r.embedding, r.embedded_text, r.metadata, r.row_hash) for r in rows]
        if not upsert:
            await conn.copy_records_to_table(
                self.name, schema_name=self.schema, records=records, columns=COLUMNS
            )
            return
        # One staging table per shape: every vector table has the seed's columns, and only
        # the dimensions differ, so a connection that writes several targets (a re-backfill's
        # live and swap tables) stages each in a table of its own shape.
        stage = f"embedd_stage_{int(self.dimensions)}"
        async with conn.transaction():
            await conn.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {self.qualified}) ON COMMIT DELETE ROWS"
            )
            await conn.copy_records_to_table(stage, records=records, columns=COLUMNS)
            await conn.execute(
                f"INSERT INTO {self.qualified} SELECT * FROM {stage}"
                " ON CONFLICT (pk_value) DO UPDATE SET embedding = EXCLUDED.embedding,"
                " embedded_text = EXCLUDED.embedded_text, metadata = EXCLUDED.metadata,"
                " row_hash = EXCLUDED.row_hash"
            )

    async def drop(self, conn: asyncpg.Connection[Any]) -> None:
        await conn.execute(f"DROP TABLE IF EXISTS {self.qualified}")
