"""Bring your own vectors (docs/import.md), in both modes: a backfill takes the vectors of the
table's `embedding_import` and calls the provider only for rows without one; the result
answers queries exactly like a table embedded from scratch; misfits are a 400 at create."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import numpy as np
import pytest
from embedd.v1 import query_pb2, values_pb2, vector_table_pb2
from embedd_server import app
from embedd_server.providers.local import lexical_vector
from pgvector.asyncpg import register_vector

from tests.conftest import UserDb
from tests.harness import Org, counting, grpc_error, rest_error, task_ended
from tests.modes import connection

ROWS = 10_000
STALE = 100  # rows of the separate table whose recorded text is not the row's any more
MODES = ["platform", "managed"]
WORDS = ["alpine", "fleece", "jacket", "trail", "boot", "wool", "sock", "tent", "stove", "lamp", "rope"]
COLUMNS = [
    {"name": "name", "role": "embedding", "ordinal": 1, "name_prefix": "Product: "},
    {"name": "description", "role": "embedding", "ordinal": 2},
    {"name": "price", "role": "metadata", "filter_type": "float"},
]
# Filters that select at most 5,000 rows: ranked exactly (an unfiltered query of a platform
# table walks its HNSW graph, which two builds of the same vectors do not share).
QUERIES: list[dict[str, Any]] = [
    {"query": "warm wool sock", "limit": 10, "filters": {"price": {"lte": 40}}},
    {"query": "alpine tent 42", "limit": 5, "filters": {"price": {"gte": 50, "lt": 90}}},
    {
        "query": "trail lamp rope",
        "limit": 20,
        "include_embedded_text": True,
        "filters": {"price": {"in": [3, 7]}},
    },
]


def row_text(i: int) -> tuple[str, str, str]:
    """(name, description, the text the vector table embeds): distinct for every row."""
    name = f"{WORDS[i % len(WORDS)]} {WORDS[(i * 7) % len(WORDS)]} {i}"
    description = f"{WORDS[(i * 3) % len(WORDS)]} for {WORDS[(i * 5) % len(WORDS)]} trips"
    return name, description, f"Product: {name}\n{description}"


@pytest.fixture(scope="module")
async def gear(user_db: UserDb) -> AsyncIterator[str]:
    """`public.gear` with a vector(384) column holding each row's vector (as local-lexical-384
    makes it), and `public.gear_vectors`: the same vectors as halfvec(384) in a separate table
    with the text they were made from - stale for the first STALE rows - and NULL for the
    last one."""
    conn = await asyncpg.connect(user_db.owner_dsn)
    try:
        await register_vector(conn)
        await conn.execute(
            "DROP TABLE IF EXISTS gear, gear_vectors;"
            "CREATE TABLE gear (id bigint PRIMARY KEY, name text, description text, price float8,"
            " embedding vector(384), note text, tiny vector(3), loose vector);"
            "CREATE TABLE gear_vectors (gear_id bigint PRIMARY KEY, vec halfvec(384), made_from text);"
        )
        records, separate = [], []
        for i in range(1, ROWS + 1):
            name, description, text = row_text(i)
            vector = lexical_vector(text)
            records.append((i, name, description, float(i % 97), vector))
            made_from = f"old text {i}" if i <= STALE else text
            separate.append((i, None if i == ROWS else vector.astype(np.float16), made_from))
        await conn.copy_records_to_table(
            "gear", records=records, columns=["id", "name", "description", "price", "embedding"]
        )
        await conn.executemany(
            "INSERT INTO gear_vectors VALUES ($1, $2::real[]::halfvec, $3)",
            [(i, None if v is None else v.astype(np.float32).tolist(), t) for i, v, t in separate],
        )
        await conn.execute("GRANT SELECT ON gear, gear_vectors TO embedd_user")
        yield "public.gear"
        await conn.execute("DROP TABLE gear, gear_vectors")
    finally:
        await conn.close()


def body(conn_id: str, emb_id: str, name: str, **changes: Any) -> dict[str, Any]:
    return {
        "name": name,
        "connection_id": conn_id,
        "embedding_provider_id": emb_id,
        "source_table": "public.gear",
        "primary_key_column": "id",
        "embedding_model": "local-lexical-384",
        "embedding_dimensions": 384,
        "columns": COLUMNS,
        **changes,
    }


async def fill(org: Org, vt_id: str) -> dict[str, Any]:
    """Backfills and waits; the completed task."""
    r = await org.http("POST", f"/v1/vector-tables/{vt_id}/backfill")
    assert r.status_code == 200, r.text
    task = await task_ended(org, r.json()["task_id"], 120, what="the backfill")
    assert task["status"] == "completed", task
    return task


async def results(org: Org, vt_id: str, query: dict[str, Any]) -> list[tuple[str, float, Any]]:
    r = await org.http("POST", f"/v1/vector-tables/{vt_id}/query", query)
    assert r.status_code == 200, r.text
    return [(h["id"], h["score"], h.get("embedded_text")) for h in r.json()["results"]]


def assert_same(got: list[tuple[str, float, Any]], expected: list[tuple[str, float, Any]]) -> None:
    """The same hits: the same scores in order, and the same rows at each score (rows of one
    score may come in any order; at the page's last score the page may cut a tie anywhere)."""
    np.testing.assert_allclose([s for _, s, _ in got], [s for _, s, _ in expected], atol=1e-5)
    cut = round(expected[-1][1], 4)

    def by_score(hits: list[tuple[str, float, Any]]) -> dict[float, set[tuple[str, Any]]]:
        groups: dict[float, set[tuple[str, Any]]] = {}
        for pk, score, text in hits:
            if round(score, 4) != cut:
                groups.setdefault(round(score, 4), set()).add((pk, text))
        return groups

    assert by_score(got) == by_score(expected)


async def stored_vectors(service: app.Service, user_db: UserDb, vt: dict[str, Any]) -> dict[str, Any]:
    """pk -> stored vector, read from the store itself."""
    if vt["mode"] == "platform":
        conn = await asyncpg.connect(user_db.owner_dsn)
        try:
            rows = await conn.fetch(
                f'SELECT pk_value, embedding::real[] AS v FROM "{vt["platform_vector_ref"]}"'
            )
        finally:
            await conn.close()
        return {r["pk_value"]: np.asarray(r["v"], dtype=np.float32) for r in rows}
    assert service.qdrant is not None
    out: dict[str, Any] = {}
    offset = None
    while True:
        points, offset = await service.qdrant.call(
            "scroll",
            vt["managed_collection"],
            limit=1000,
            offset=offset,
            with_payload=["pk"],
            with_vectors=True,
        )
        out.update({p.payload["pk"]: np.asarray(p.vector, dtype=np.float32) for p in points})
        if offset is None:
            return out


async def test_imported_vectors_cost_no_provider_call_and_answer_like_fresh_ones(
    org: Org, user_db: UserDb, gear: str, service: app.Service
) -> None:
    """10,000 rows with vectors: imported in both modes with no provider call, they are the
    vectors a fill from scratch stores and answer queries the same."""
    tables: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        conn_id, emb_id = await connection(org, user_db, mode)
        made = await org.http(
            "POST",
            "/v1/vector-tables",
            body(conn_id, emb_id, f"imported-{mode}", embedding_import={"column": "embedding"}),
        )
        assert made.status_code == 200, made.text
        assert made.json()["embedding_import"] == {
            "column": "embedding",
            "embedding_model": "local-lexical-384",
            "embedding_dimensions": 384,
        }
        tables[mode] = made.json()
        if mode == "platform":
            fresh = await org.http("POST", "/v1/vector-tables", body(conn_id, emb_id, "fresh"))
            assert fresh.status_code == 200, fresh.text
            with counting(service) as calls:
                await fill(org, fresh.json()["id"])
            assert calls.texts == ROWS  # from scratch: every row through the provider
    for mode, vt in tables.items():
        with counting(service) as calls:
            task = await fill(org, vt["id"])
        assert calls.texts == 0, f"{mode}: imported rows must not reach the provider"
        assert task["progress"]["rows_imported"] == ROWS and task["progress"]["rows_processed"] == ROWS
        status = (await org.http("GET", f"/v1/vector-tables/{vt['id']}/sync/status")).json()
        assert (status["synced_rows"], status["rows_imported"]) == (ROWS, ROWS)
    theirs = await stored_vectors(service, user_db, fresh.json())
    for vt in tables.values():
        ours = await stored_vectors(service, user_db, vt)
        assert ours.keys() == theirs.keys() and len(ours) == ROWS
        np.testing.assert_allclose(
            np.stack([ours[k] for k in theirs]), np.stack(list(theirs.values())), atol=1e-6
        )
    for query in QUERIES:
        expected = await results(org, fresh.json()["id"], query)
        assert len(expected) == query["limit"]
        for vt in tables.values():
            assert_same(await results(org, vt["id"], query), expected)


async def test_a_separate_table_with_the_text_each_vector_was_made_from(
    org: Org, user_db: UserDb, gear: str, service: app.Service
) -> None:
    """A halfvec column of another table, keyed by the same key: rows whose recorded text is
    not theirs any more, or that have no vector, are embedded; the rest are imported. Over
    gRPC."""
    conn_id, emb_id = await connection(org, user_db, "platform")
    spec = vector_table_pb2.VectorTable(
        name="separate",
        connection_id=conn_id,
        embedding_provider_id=emb_id,
        source_table="public.gear",
        primary_key_column="id",
        embedding_model="local-lexical-384",
        columns=[
            vector_table_pb2.Column(
                name="name", role=values_pb2.ColumnRole.embedding, name_prefix="Product: "
            ),
            vector_table_pb2.Column(name="description", role=values_pb2.ColumnRole.embedding),
        ],
        embedding_import=vector_table_pb2.EmbeddingImport(
            column="vec", table="public.gear_vectors", key_column="gear_id", text_column="made_from"
        ),
    )
    async with org.client() as c:
        vt = await c.vector_tables.CreateVectorTable(
            vector_table_pb2.CreateVectorTableRequest(vector_table=spec)
        )
        assert (
            vt.embedding_import.table == "public.gear_vectors"
            and vt.embedding_import.text_column == "made_from"
        )
        with counting(service) as calls:
            task = await fill(org, vt.id)
        assert calls.texts == STALE + 1  # the stale rows and the one without a vector
        assert task["progress"]["rows_imported"] == ROWS - STALE - 1
        hits = await c.query.QueryVectorTable(
            query_pb2.QueryVectorTableRequest(vector_table_id=vt.id, query=row_text(4242)[2], limit=1)
        )
    # halfvec keeps about three significant digits: the row's own text still ranks it first
    assert hits.results[0].id == "4242" and hits.results[0].score > 0.999


IMPORT_ERRORS: list[tuple[str, dict[str, Any], int, str, str]] = [
    ("dimensions", {"column": "tiny"}, 400, "import_dimensions_mismatch", "embedding_import.column"),
    (
        "declared dimensions",
        {"column": "embedding", "embedding_dimensions": 1536},
        400,
        "import_dimensions_mismatch",
        "embedding_import.embedding_dimensions",
    ),
    ("not a vector", {"column": "note"}, 400, "import_column_not_vector", "embedding_import.column"),
    ("no size", {"column": "loose"}, 400, "import_column_not_vector", "embedding_import.column"),
    ("unknown column", {"column": "nope"}, 400, "validation_error", "embedding_import.column"),
    (
        "model",
        {"column": "embedding", "embedding_model": "text-embedding-3-small"},
        400,
        "import_model_mismatch",
        "embedding_import.embedding_model",
    ),
    (
        "key not unique",
        {"column": "vec", "table": "public.gear_vectors", "key_column": "made_from"},
        400,
        "validation_error",
        "embedding_import.key_column",
    ),
    (
        "text column type",
        {"column": "embedding", "text_column": "price"},
        400,
        "validation_error",
        "embedding_import.text_column",
    ),
    ("missing table", {"column": "vec", "table": "public.nope"}, 403, "source_table_access_denied", ""),
    (
        "key without table",
        {"column": "embedding", "key_column": "id"},
        400,
        "validation_error",
        "embedding_import.key_column",
    ),
]


@pytest.mark.parametrize(
    ("case", "imp", "status", "code", "field"), IMPORT_ERRORS, ids=[c[0] for c in IMPORT_ERRORS]
)
@pytest.mark.parametrize("mode", MODES)
async def test_an_import_that_does_not_fit_is_refused_at_create(
    org: Org,
    user_db: UserDb,
    gear: str,
    mode: str,
    case: str,
    imp: dict[str, Any],
    status: int,
    code: str,
    field: str,
) -> None:
    conn_id, emb_id = await connection(org, user_db, mode)
    got_status, got_code, err = rest_error(
        await org.http("POST", "/v1/vector-tables", body(conn_id, emb_id, "bad", embedding_import=imp))
    )
    assert (got_status, got_code) == (status, code), err
    if field:
        assert field in [d["field"] for d in err["details"]], err
    if case == "no size":
        assert "ALTER TABLE" in err["message"] and "vector(384)" in err["message"]
    assert (await org.http("GET", "/v1/vector-tables")).json()["vector_tables"] == []  # nothing half-made


async def test_a_dimension_mismatch_over_grpc(org: Org, user_db: UserDb, gear: str) -> None:
    conn_id, emb_id = await connection(org, user_db, "platform")
    spec = vector_table_pb2.VectorTable(
        name="bad",
        connection_id=conn_id,
        embedding_provider_id=emb_id,
        source_table="public.gear",
        primary_key_column="id",
        embedding_model="local-lexical-384",
        columns=[vector_table_pb2.Column(name="name", role=values_pb2.ColumnRole.embedding)],
        embedding_import=vector_table_pb2.EmbeddingImport(column="tiny"),
    )
    async with org.client() as c:
        code, reason, violations, message = await grpc_error(
            c.vector_tables.CreateVectorTable(vector_table_pb2.CreateVectorTableRequest(vector_table=spec))
        )
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "import_dimensions_mismatch")
    assert [f for f, _ in violations] == ["embedding_import.column"]
    assert "3-dimension" in message and "384" in message
