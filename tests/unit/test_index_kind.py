"""Which expression a platform table's HNSW index covers (docs/indexes.md): halfvec for tables
made now, the vector itself for tables made before - read from the stored spec, unchanged."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from embedd_server.domain.vector_tables import ColumnSpec, VectorTableSpec, swap_marker
from embedd_server.sinks.pgvector import PgVectorTable

SPEC = VectorTableSpec(
    source_schema="public",
    source_table="items",
    primary_key_column="id",
    embedding_model="local-lexical-384",
    embedding_dimensions=384,
    columns=(ColumnSpec("title", "embedding"),),
)


def test_new_tables_index_halfvec_and_keep_it_through_the_control_plane() -> None:
    assert SPEC.hnsw_halfvec
    assert VectorTableSpec.from_json(SPEC.to_json()) == SPEC


def test_a_spec_stored_before_indexes_the_vector_and_hashes_as_before() -> None:
    stored = SPEC.to_json()
    del stored["hnsw_halfvec"]  # what a server before this change stored
    old = VectorTableSpec.from_json(json.loads(json.dumps(stored)))
    assert not old.hnsw_halfvec
    assert old.to_json() == stored  # re-stored as it was
    digest = hashlib.sha256(json.dumps(stored, sort_keys=True).encode()).hexdigest()[:16]
    assert swap_marker(old) == f"embedd swap {digest}"  # a swap it made is still recognised
    assert dataclasses.replace(old, sync_interval_seconds=5).hnsw_halfvec is False  # an update keeps it


def test_the_indexed_expression() -> None:
    wide = PgVectorTable("public", "t", 1536, halfvec=True)
    assert wide.vector_expression() == "(embedding::halfvec(1536))"
    assert PgVectorTable("public", "t", 1536).vector_expression() == "embedding"  # a table made before
    # narrow vectors keep the vector index: it recalled more at 384 for no gain in build time
    assert PgVectorTable("public", "t", 384, halfvec=True).vector_expression() == "embedding"
    assert PgVectorTable("public", "t", 1023, halfvec=True).vector_expression() == "embedding"
    assert PgVectorTable("public", "t", 1024, halfvec=True).halfvec
    # above pgvector's 2,000-dimension limit for `vector`, halfvec whatever the spec says
    assert PgVectorTable("public", "t", 3072).vector_expression() == "(embedding::halfvec(3072))"
