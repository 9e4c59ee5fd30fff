"""The ANN index as a phase of its own (docs/indexes.md): a table is synced and answers queries
once every row is written, sync cycles go on during the index build, and the index is built
concurrently; an interrupted concurrent build leaves nothing a later one trips over."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import numpy as np
import pytest
from embedd_server import app
from embedd_server.sinks.pgvector import PgVectorTable, encode_vectors, register_vector_codec
from embedd_server.sinks.pgvector_filters import CompiledFilter
from embedd_server.sinks.pgvector_search import PgVectorSearch, run_search

from tests.conftest import PRODUCT_ROWS, UserDb
from tests.harness import Org, wait_for
from tests.integration.test_vector_tables import SEED_COLUMNS, create_vt, wait_synced
from tests.modes import StoreView

_RENAMED = [{**SEED_COLUMNS[0], "name_prefix": "Item: "}, *SEED_COLUMNS[1:]]


async def _status(org: Org, vt_id: str) -> dict[str, Any]:
    return (await org.http("GET", f"/v1/vector-tables/{vt_id}/sync/status")).json()  # type: ignore[no-any-return]


async def _valid_hnsw(conn: asyncpg.Connection[Any], ref: str) -> bool:
    return await PgVectorTable("public", ref, 384).has_hnsw(conn)  # valid indexes only


async def test_a_table_is_queryable_and_syncs_while_its_index_builds(
    org: Org, user_db: UserDb, service: app.Service
) -> None:
    made = await create_vt(org, user_db, sync_interval_seconds=1)
    ref = made["platform_vector_ref"]
    # A transaction with an old snapshot holds every CREATE INDEX CONCURRENTLY at its last
    # wait ("waiting for old snapshots"): the build cannot finish while it is open.
    blocker = await asyncpg.connect(user_db.owner_dsn)
    owner = await asyncpg.connect(user_db.owner_dsn)
    original = await owner.fetchval("SELECT description FROM products WHERE id = 17")
    try:
        tx = blocker.transaction(isolation="repeatable_read")
        await tx.start()
        await blocker.fetchval("SELECT count(*) FROM products")
        task = (await org.http("POST", f"/v1/vector-tables/{made['id']}/backfill")).json()
        status = await wait_synced(org, made["id"], indexed=False)
        assert status["sync_status"] == "synced" and status["synced_rows"] == PRODUCT_ROWS
        assert status["index_status"] == "building" and 0 <= status.get("index_progress", 0) <= 1
        running = (await org.http("GET", f"/v1/tasks/{task['task_id']}")).json()
        assert running["status"] == "running" and running["phase"] == "indexing"
        assert not await _valid_hnsw(owner, ref)

        async def built_and_waiting() -> bool:  # the build is done; CIC waits for the blocker
            got = (await org.http("GET", f"/v1/tasks/{task['task_id']}")).json()
            return bool(got["progress"].get("phase_progress", 0) >= 0.99)

        await wait_for(built_and_waiting, what="the task's phase progress")
        index_progress = (await _status(org, made["id"]))["index_progress"]
        assert 0.99 <= index_progress < 1, index_progress
        # A fill, or a change that needs one, is refused meanwhile, saying why and for how long.
        for method, path, body in (
            ("POST", f"/v1/vector-tables/{made['id']}/backfill", None),
            ("PATCH", f"/v1/vector-tables/{made['id']}?update_mask=columns", {"columns": _RENAMED}),
        ):
            refused = await org.http(method, path, body)
            error = refused.json()["error"]
            assert refused.status_code == 409 and error["code"] == "backfill_in_progress", refused.text
            assert "index is being built" in error["message"] and task["task_id"] in error["message"]
        # Queries answer meanwhile (exactly: there is no index to use).
        r = await org.http(
            "POST", f"/v1/vector-tables/{made['id']}/query", {"query": "warm jacket", "limit": 5}
        )
        assert r.status_code == 200 and len(r.json()["results"]) == 5
        # Paused and resumed meanwhile, the table is synced again - not backfilling.
        assert (await org.http("POST", f"/v1/vector-tables/{made['id']}/sync/pause")).status_code == 200
        assert (await org.http("POST", f"/v1/vector-tables/{made['id']}/sync/resume")).status_code == 200
        assert (await _status(org, made["id"]))["sync_status"] == "synced"
        # And sync cycles apply changes during the build.
        await owner.execute("UPDATE products SET description = 'changed while indexing' WHERE id = 17")
        view = StoreView(service, user_db, made)
        await wait_for(
            lambda: _text_ends(view, "17", "changed while indexing"),
            what="the update applied during the build",
        )
        assert (await _status(org, made["id"]))["index_status"] == "building"
        await tx.rollback()
        final = await wait_synced(org, made["id"])
        assert final["index_status"] == "ready" and "index_progress" not in final
        assert await _valid_hnsw(owner, ref)
        done = (await org.http("GET", f"/v1/tasks/{task['task_id']}")).json()
        assert done["status"] == "completed"
    finally:
        await owner.execute("UPDATE products SET description = $1 WHERE id = 17", original)
        await blocker.close()
        await owner.close()


async def _text_ends(view: StoreView, pk: str, suffix: str) -> bool:
    text = await view.text(pk)
    return bool(text and text.endswith(suffix))


async def test_an_interrupted_concurrent_build_is_dropped_and_built_again(user_db: UserDb) -> None:
    """A CREATE INDEX CONCURRENTLY that is cancelled (its holder killed) leaves an invalid
    index behind; the next build drops it and builds a valid one."""
    table = PgVectorTable("public", "embedd_vt_cic_probe", 4)
    owner = await asyncpg.connect(user_db.owner_dsn)
    builder = await asyncpg.connect(user_db.owner_dsn)
    blocker = await asyncpg.connect(user_db.owner_dsn)
    try:
        await table.create(owner, with_index=False)
        await owner.execute(
            f"INSERT INTO {table.qualified} (pk_value, embedding, embedded_text, metadata, row_hash)"
            " SELECT g::text, '[1,2,3,4]', 't', '{}', 'h' FROM generate_series(1, 50) g"
        )
        tx = blocker.transaction(isolation="repeatable_read")
        await tx.start()
        await blocker.fetchval("SELECT 1")
        build = asyncio.create_task(table.create_hnsw(builder, concurrently=True))
        pid = builder.get_server_pid()

        async def waiting() -> bool:
            return bool(
                await owner.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_progress_create_index WHERE pid = $1)", pid
                )
            )

        await wait_for(waiting, what="the concurrent build to start")
        await owner.execute("SELECT pg_cancel_backend($1)", pid)
        with contextlib.suppress(asyncpg.QueryCanceledError):  # the build's own end: cancelled
            await build
        await tx.rollback()
        invalid = await owner.fetchval(
            "SELECT count(*) FROM pg_index WHERE indrelid = to_regclass($1) AND NOT indisvalid",
            table.qualified,
        )
        assert invalid == 1 and not await table.has_hnsw(owner)
        await table.create_hnsw(owner, concurrently=True)
        assert await table.has_hnsw(owner)
        remaining = await owner.fetchval(
            "SELECT count(*) FROM pg_index WHERE indrelid = to_regclass($1) AND NOT indisvalid",
            table.qualified,
        )
        assert remaining == 0
    finally:
        await blocker.close()
        await builder.close()
        await table.drop(owner)
        await owner.close()


@pytest.mark.parametrize("halfvec", [True, False])
async def test_queries_order_by_the_expression_the_index_covers(user_db: UserDb, halfvec: bool) -> None:
    """New tables index `embedding::halfvec(d)` (docs/indexes.md), tables made before index the
    vector: either way the HNSW query path is an index scan, and its scores are the exact
    cosine of the stored vectors (the index only orders the candidates)."""
    table = PgVectorTable("public", f"embedd_vt_kind_probe_{int(halfvec)}", 1024, halfvec=halfvec)
    assert table.halfvec is halfvec
    owner = await asyncpg.connect(user_db.owner_dsn)
    try:
        await register_vector_codec(owner)
        await table.create(owner, with_index=False)
        rng = np.random.default_rng(7)
        vectors = rng.normal(size=(500, 1024)).astype(np.float32)
        await owner.executemany(
            f"INSERT INTO {table.qualified} (pk_value, embedding, embedded_text, metadata, row_hash)"
            " VALUES ($1, $2, 't', '{}', 'h')",
            [(str(i), v) for i, v in enumerate(encode_vectors(vectors))],
        )
        await table.create_hnsw(owner, concurrently=True)
        (definition,) = [d for _, d, _ in await table.indexes(owner) if "USING hnsw" in d]
        assert ("halfvec_cosine_ops" in definition) is halfvec, definition
        query = vectors[3]
        statement = PgVectorSearch(table).hnsw(
            encode_vectors(query.reshape(1, -1))[0], CompiledFilter("TRUE"), 5, False
        )
        async with owner.transaction():
            await owner.execute("SET LOCAL enable_seqscan = off")
            plan = "\n".join(r[0] for r in await owner.fetch("EXPLAIN " + statement.sql, *statement.params))
            hits = await run_search(owner, statement)
        assert "Index Scan using" in plan and "_hnsw" in plan, plan
        assert hits[0].pk == "3" and len(hits) == 5  # halfvec: 35 candidates, re-ranked, 5 kept
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        exact = vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
        for hit in hits:
            assert abs(hit.score - float(exact[int(hit.pk)])) < 1e-5
    finally:
        await table.drop(owner)
        await owner.close()
