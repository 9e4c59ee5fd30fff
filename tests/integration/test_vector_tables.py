"""Vector tables: the seed's steps 4-5, catalog validation, the physical table, and - in both
modes (the `mode` fixture) - backfill to completion, tasks, progress streams, per-row
failures, deletion."""

from __future__ import annotations

import json
import re
from typing import Any

import asyncpg
import grpc
import pytest
from embedd.v1 import sync_pb2, task_pb2, values_pb2, vector_table_pb2
from embedd_server import app

from tests.conftest import PRODUCT_ROWS, UserDb
from tests.harness import Org, grpc_error, rest_error, wait_for
from tests.modes import StoreView, connection

SEED_COLUMNS = [
    {"name": "name", "role": "embedding", "ordinal": 1, "name_prefix": "Product: "},
    {"name": "description", "role": "embedding", "ordinal": 2, "name_prefix": "Description: "},
    {"name": "category", "role": "metadata", "filter_type": "keyword"},
    {"name": "price", "role": "metadata", "filter_type": "float"},
    {"name": "in_stock", "role": "metadata", "filter_type": "boolean"},
]


async def platform(org: Org, user_db: UserDb) -> tuple[str, str]:
    return await connection(org, user_db, "platform")


def seed_body(conn_id: str, emb_id: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "products-search",
        "connection_id": conn_id,
        "embedding_provider_id": emb_id,
        "source_table": "public.products",
        "primary_key_column": "id",
        "embedding_model": "local-lexical-384",
        "embedding_dimensions": 384,
        "mode": "platform",
        "columns": SEED_COLUMNS,
    }
    body.update(changes)
    return body


async def create_vt(org: Org, user_db: UserDb, mode: str = "platform", **changes: Any) -> dict[str, Any]:
    conn_id, emb_id = await connection(org, user_db, mode)
    r = await org.http("POST", "/v1/vector-tables", seed_body(conn_id, emb_id, mode=mode, **changes))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def wait_synced(
    org: Org, vt_id: str, within_s: float = 30.0, *, indexed: bool = True
) -> dict[str, Any]:
    """The sync status once the fill ended (synced, or error) - with its index built too,
    unless `indexed` is False (the table is synced, and queryable, before its index is)."""
    status: dict[str, Any] = {}

    async def ended() -> bool:
        status.clear()
        status.update((await org.http("GET", f"/v1/vector-tables/{vt_id}/sync/status")).json())
        building = status.get("index_status") == "building"
        return status["sync_status"] in ("synced", "error") and not (indexed and building)

    await wait_for(ended, within_s, what="the fill to end")
    return status


async def test_seed_step_4_shape_and_physical_table(org: Org, user_db: UserDb) -> None:
    made = await create_vt(org, user_db)
    assert made["id"].startswith("vt_")
    assert re.fullmatch(r"embedd_vt_[0-9a-f]{8}_products_search", made["platform_vector_ref"])
    expected = {
        "name": "products-search",
        "source_table": "public.products",
        "mode": "platform",
        "sync_status": "pending",
        "embedding_model": "local-lexical-384",
        "embedding_dimensions": 384,
        "columns": SEED_COLUMNS,
    }
    assert {k: made[k] for k in expected} == expected
    assert made["created_at"].endswith("Z")
    assert (await org.http("GET", f"/v1/vector-tables/{made['id']}")).json() == made
    listed = (await org.http("GET", "/v1/vector-tables")).json()["vector_tables"]
    assert [t["id"] for t in listed] == [made["id"]]

    conn = await asyncpg.connect(user_db.owner_dsn)
    try:
        cols = await conn.fetch(
            "SELECT column_name, data_type, udt_name FROM information_schema.columns"
            " WHERE table_name = $1 ORDER BY ordinal_position",
            made["platform_vector_ref"],
        )
        index = await conn.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE tablename = $1 AND indexdef LIKE '%hnsw%'",
            made["platform_vector_ref"],
        )
        typmod = await conn.fetchval(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = $1::regclass"
            " AND attname = 'embedding'",
            made["platform_vector_ref"],
        )
    finally:
        await conn.close()
    assert [(c["column_name"], c["udt_name"]) for c in cols] == [
        ("pk_value", "text"),
        ("embedding", "vector"),
        ("embedded_text", "text"),
        ("metadata", "jsonb"),
        ("row_hash", "text"),
    ]
    assert typmod == "vector(384)"
    assert index is not None and "vector_cosine_ops" in index  # 384 dims: docs/indexes.md


def _bad(**changes: Any) -> dict[str, Any]:
    return changes


CATALOG_ERRORS: list[tuple[str, dict[str, Any], int, str, str]] = [
    ("missing table", _bad(source_table="public.nope"), 403, "source_table_access_denied", ""),
    ("pk missing", _bad(primary_key_column="sku"), 400, "validation_error", "primary_key_column"),
    ("pk not unique", _bad(primary_key_column="category"), 400, "validation_error", "primary_key_column"),
    (
        "unknown column",
        _bad(columns=[*SEED_COLUMNS, {"name": "colour", "role": "metadata", "filter_type": "keyword"}]),
        400,
        "validation_error",
        "columns[5].name",
    ),
    (
        "filter type does not fit",
        _bad(columns=[*SEED_COLUMNS[:3], {"name": "price", "role": "metadata", "filter_type": "boolean"}]),
        400,
        "validation_error",
        "columns[3].filter_type",
    ),
    ("no embedding column", _bad(columns=SEED_COLUMNS[2:]), 400, "validation_error", "columns"),
    ("bad dimensions", _bad(embedding_dimensions=1536), 400, "validation_error", "embedding_dimensions"),
    (
        "unknown model",
        _bad(embedding_model="text-embedding-3-small"),
        400,
        "validation_error",
        "embedding_model",
    ),
    ("bad source name", _bad(source_table="a.b.c"), 400, "validation_error", "source_table"),
    ("empty name", _bad(name=""), 400, "validation_error", "name"),
    ("mode mismatch", _bad(mode="managed"), 400, "validation_error", "mode"),
    ("cdc without cursor", _bad(sync_mode="cdc"), 400, "validation_error", "cursor_column"),
    (
        "duplicate ordinal",
        _bad(columns=[{**SEED_COLUMNS[0]}, {**SEED_COLUMNS[1], "ordinal": 1}]),
        400,
        "validation_error",
        "columns[1].ordinal",
    ),
]


@pytest.mark.parametrize(
    ("case", "changes", "status", "code", "field"), CATALOG_ERRORS, ids=[c[0] for c in CATALOG_ERRORS]
)
async def test_create_validation(
    org: Org, user_db: UserDb, case: str, changes: dict[str, Any], status: int, code: str, field: str
) -> None:
    conn_id, emb_id = await platform(org, user_db)
    got_status, got_code, err = rest_error(
        await org.http("POST", "/v1/vector-tables", seed_body(conn_id, emb_id, **changes))
    )
    assert (got_status, got_code) == (status, code), err
    if field:
        assert field in [d["field"] for d in err["details"]], err
    assert (await org.http("GET", "/v1/vector-tables")).json()["vector_tables"] == []


async def test_filter_type_error_lists_what_fits(org: Org, user_db: UserDb) -> None:
    conn_id, emb_id = await platform(org, user_db)
    cols = [*SEED_COLUMNS[:3], {"name": "price", "role": "metadata", "filter_type": "boolean"}]
    _, _, err = rest_error(
        await org.http("POST", "/v1/vector-tables", seed_body(conn_id, emb_id, columns=cols))
    )
    assert "numeric" in err["message"] and "float" in err["message"]


async def test_unreadable_table_is_403_with_the_grant(org: Org, user_db: UserDb) -> None:
    conn = await asyncpg.connect(user_db.owner_dsn)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS secrets_tbl (id int PRIMARY KEY, body text)")
    finally:
        await conn.close()
    conn_id, emb_id = await platform(org, user_db)
    status, code, err = rest_error(
        await org.http(
            "POST",
            "/v1/vector-tables",
            seed_body(
                conn_id, emb_id, source_table="secrets_tbl", columns=[{"name": "body", "role": "embedding"}]
            ),
        )
    )
    assert (status, code) == (403, "source_table_access_denied")
    assert 'GRANT SELECT ON TABLE "public"."secrets_tbl" TO "embedd_user"' in err["message"]


async def test_unknown_references_are_404_and_a_mode_must_match_its_connection(
    org: Org, user_db: UserDb
) -> None:
    conn_id, emb_id = await platform(org, user_db)
    status, code, _ = rest_error(await org.http("POST", "/v1/vector-tables", seed_body("conn_nope", emb_id)))
    assert (status, code) == (404, "connection_not_found")
    status, code, _ = rest_error(await org.http("POST", "/v1/vector-tables", seed_body(conn_id, "emb_nope")))
    assert (status, code) == (404, "embedding_provider_not_found")
    managed = await org.http(
        "POST",
        "/v1/providers/postgresql/connections",
        {"name": "m", "mode": "managed", "credentials": user_db.credentials()},
    )
    status, code, err = rest_error(
        await org.http("POST", "/v1/vector-tables", seed_body(managed.json()["id"], emb_id, mode="platform"))
    )
    assert (status, code) == (400, "validation_error") and "connection's mode" in err["message"]
    body = seed_body(managed.json()["id"], emb_id, mode="managed")
    made = await org.http("POST", "/v1/vector-tables", body)
    assert made.status_code == 200, made.text
    body = made.json()
    # Managed: the vectors live in a Qdrant collection, shown by its alias; no table in the user's database.
    assert body["mode"] == "managed" and body["platform_vector_ref"] == ""
    assert body["managed_collection"].startswith("embedd_vt_")


async def test_create_over_grpc_reports_violations(org: Org, user_db: UserDb) -> None:
    conn_id, emb_id = await platform(org, user_db)
    async with org.client() as c:
        code, reason, violations, _ = await grpc_error(
            c.vector_tables.CreateVectorTable(
                vector_table_pb2.CreateVectorTableRequest(
                    vector_table=vector_table_pb2.VectorTable(
                        name="x",
                        connection_id=conn_id,
                        embedding_provider_id=emb_id,
                        source_table="public.products",
                        primary_key_column="id",
                        columns=[
                            vector_table_pb2.Column(name="category", role=values_pb2.ColumnRole.metadata)
                        ],
                    )
                )
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and reason == "validation_error"
        assert ("columns", "needs at least one column with role 'embedding'") in violations
        made = await c.vector_tables.CreateVectorTable(
            vector_table_pb2.CreateVectorTableRequest(
                vector_table=vector_table_pb2.VectorTable(
                    name="g",
                    connection_id=conn_id,
                    embedding_provider_id=emb_id,
                    source_table="products",
                    primary_key_column="id",
                    columns=[
                        vector_table_pb2.Column(name="name", role=values_pb2.ColumnRole.embedding),
                        vector_table_pb2.Column(name="price", role=values_pb2.ColumnRole.metadata),
                    ],
                )
            )
        )
    vt = made
    assert (
        vt.embedding_model == "local-lexical-384" and vt.embedding_dimensions == 384
    )  # the provider's default
    assert (
        vt.columns[0].ordinal == 1 and vt.columns[1].filter_type == values_pb2.FilterType.float
    )  # from the catalog
    assert vt.source_table == "public.products" and vt.sync_mode == values_pb2.SyncMode.batch


async def test_backfill_end_to_end(org: Org, user_db: UserDb, service: app.Service, mode: str) -> None:
    made = await create_vt(org, user_db, mode)
    r = await org.http("POST", f"/v1/vector-tables/{made['id']}/backfill")
    assert r.status_code == 200, r.text
    task = r.json()
    assert set(task) == {"task_id", "task_type", "target_id", "status", "created_at"}
    assert task["task_id"].startswith("task_") and task["task_type"] == "backfill"
    assert task["target_id"] == made["id"] and task["status"] == "pending"

    status = await wait_synced(org, made["id"])
    assert status["sync_status"] == "synced"
    assert status["synced_rows"] == status["total_rows"] == PRODUCT_ROWS
    assert status["rows_pending"] == 0 and status["last_synced_at"].endswith("Z")
    assert status["staleness_secs"] >= 0 and "last_error" not in status
    raw = (await org.http("GET", f"/v1/vector-tables/{made['id']}/sync/status")).text
    # Counts are doubles in the proto; JSON prints whole ones as the seed does, no fraction.
    assert f'"synced_rows":{PRODUCT_ROWS},"total_rows":{PRODUCT_ROWS},' in raw, raw

    got = (await org.http("GET", f"/v1/tasks/{task['task_id']}")).json()
    assert got["id"] == task["task_id"] and "task_id" not in got
    assert got["status"] == "completed" and got["attempts"] == 1
    assert got["progress"]["rows_processed"] == PRODUCT_ROWS and got["progress"]["rows_failed"] == 0
    listed = (await org.http("GET", f"/v1/tasks?target_id={made['id']}")).json()["tasks"]
    assert [t["id"] for t in listed] == [task["task_id"]]

    # Every source row exactly once, with the seed's text and metadata.
    stored = await StoreView(service, user_db, made).rows()
    conn = await asyncpg.connect(user_db.owner_dsn)
    try:
        products = {
            str(r["id"]): r
            for r in await conn.fetch("SELECT id, name, description, category, price, in_stock FROM products")
        }
        ref = made["platform_vector_ref"]
        indexes = [
            r["indexdef"]
            for r in await conn.fetch("SELECT indexdef FROM pg_indexes WHERE tablename = $1", ref)
        ]
    finally:
        await conn.close()
    assert set(stored) == set(products)
    for pk, row in stored.items():
        p = products[pk]
        assert row.text == f"Product: {p['name']}\nDescription: {p['description']}"
        assert row.metadata == {
            "name": p["name"],
            "description": p["description"],
            "category": p["category"],
            "price": float(p["price"]),
            "in_stock": p["in_stock"],
        }
    if mode == "platform":
        assert any("hnsw" in d for d in indexes)
        assert any("metadata ->> 'category'" in d for d in indexes)
    else:  # no table in the user's database; the collection's HNSW is on again after the load
        assert indexes == [] and ref == ""
        assert service.qdrant is not None
        info = await service.qdrant.call("get_collection", made["managed_collection"])
        assert info.config.hnsw_config.m == 16 and info.points_count == PRODUCT_ROWS


async def test_second_backfill_while_one_is_queued_is_409(
    org: Org, user_db: UserDb, control_dsn: str
) -> None:
    made = await create_vt(org, user_db)
    conn = await asyncpg.connect(control_dsn)
    try:  # a task held by another (live) process
        await conn.execute(
            "INSERT INTO tasks (id, org_id, env_id, task_type, target_id, status, lease_owner,"
            " lease_expires_at) SELECT 'task_held' || $1, $2, env_id, 'backfill', $1, 'running',"
            " 'elsewhere', now() + interval '1 hour' FROM vector_tables WHERE id = $1",
            made["id"],
            org.org_id,
        )
        status, code, err = rest_error(await org.http("POST", f"/v1/vector-tables/{made['id']}/backfill"))
        assert (status, code) == (409, "backfill_in_progress") and "/v1/tasks" in err["message"]
        async with org.client() as c:
            gcode, reason, _, _ = await grpc_error(
                c.sync.BackfillVectorTable(sync_pb2.BackfillVectorTableRequest(vector_table_id=made["id"]))
            )
        assert gcode == grpc.StatusCode.FAILED_PRECONDITION and reason == "backfill_in_progress"
    finally:
        await conn.execute("DELETE FROM tasks WHERE id = 'task_held' || $1", made["id"])
        await conn.close()


async def test_rows_without_text_are_reported_not_hidden(org: Org, user_db: UserDb, mode: str) -> None:
    conn = await asyncpg.connect(user_db.owner_dsn)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS notes; CREATE TABLE notes (id int PRIMARY KEY, title text, body text);"
            "INSERT INTO notes SELECT g, CASE WHEN g % 10 = 0 THEN NULL ELSE 'note ' || g END,"
            " CASE WHEN g % 10 = 0 THEN NULL ELSE 'body ' || g END FROM generate_series(1, 100) g;"
            "GRANT SELECT ON notes TO embedd_user;"
        )
    finally:
        await conn.close()
    cols = [{"name": "title", "role": "embedding"}, {"name": "body", "role": "embedding"}]
    made = await create_vt(org, user_db, mode, name="notes", source_table="notes", columns=cols)
    task = (await org.http("POST", f"/v1/vector-tables/{made['id']}/backfill")).json()
    status = await wait_synced(org, made["id"])
    assert status["sync_status"] == "synced" and status["synced_rows"] == 90 and status["total_rows"] == 100
    got = (await org.http("GET", f"/v1/tasks/{task['task_id']}")).json()
    assert got["status"] == "completed" and got["progress"]["rows_failed"] == 10
    assert sorted(int(f["pk_value"]) for f in got["failures"]) == list(range(10, 101, 10))
    assert "NULL" in got["failures"][0]["error"]


async def test_watch_streams_progress_over_rest_and_grpc(org: Org, user_db: UserDb, mode: str) -> None:
    made = await create_vt(org, user_db, mode)
    task = (await org.http("POST", f"/v1/vector-tables/{made['id']}/backfill")).json()
    lines = []
    async with org.rest.stream("GET", f"/v1/tasks/{task['task_id']}/watch", headers=org.headers()) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line.strip():
                lines.append(json.loads(line))
    assert lines[-1]["done"] is True and lines[-1]["task"]["status"] == "completed"
    assert all(not m["done"] for m in lines[:-1])
    assert lines[-1]["task"]["progress"]["rows_processed"] == PRODUCT_ROWS
    async with org.client() as c:
        events = [e async for e in c.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task["task_id"]))]
    assert len(events) == 1 and events[0].done and events[0].task.status == values_pb2.TaskStatus.completed
    status, code, _ = rest_error(await org.http("GET", "/v1/tasks/task_nope"))
    assert (status, code) == (404, "task_not_found")


async def test_delete_keeps_or_drops_the_vectors(org: Org, user_db: UserDb) -> None:
    kept = await create_vt(org, user_db, name="kept")
    dropped = await create_vt(org, user_db, name="dropped")
    r = await org.http("DELETE", f"/v1/vector-tables/{kept['id']}")
    assert r.json() == {"id": kept["id"], "deleted": True, "vectors_dropped": False}
    r = await org.http("DELETE", f"/v1/vector-tables/{dropped['id']}?drop_vectors=true")
    assert r.json() == {"id": dropped["id"], "deleted": True, "vectors_dropped": True}
    conn = await asyncpg.connect(user_db.owner_dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", kept["platform_vector_ref"])
        assert not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", dropped["platform_vector_ref"])
    finally:
        await conn.close()
    status, code, _ = rest_error(await org.http("GET", f"/v1/vector-tables/{kept['id']}"))
    assert (status, code) == (404, "vector_table_not_found")


async def test_managed_delete_drops_the_collection(org: Org, user_db: UserDb, service: app.Service) -> None:
    """Managed vectors are the service's, not the user's: they always go with the table."""
    made = await create_vt(org, user_db, "managed", name="gone")
    assert (await org.http("POST", f"/v1/vector-tables/{made['id']}/backfill")).status_code == 200
    assert (await wait_synced(org, made["id"]))["sync_status"] == "synced"
    view = StoreView(service, user_db, made)
    assert await view.collections() == [f"{view.ref}_v1"] and await view.alias_target() == f"{view.ref}_v1"
    r = await org.http("DELETE", f"/v1/vector-tables/{made['id']}")
    assert r.json() == {"id": made["id"], "deleted": True, "vectors_dropped": True}
    assert await view.collections() == [] and await view.alias_target() is None
