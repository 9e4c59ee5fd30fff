"""Continuous sync, pause/resume and re-backfill with an atomic swap, against a real
PostgreSQL: what users see after they change their source rows."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import numpy as np
import pytest
from embedd_server import app

from tests.conftest import UserDb
from tests.harness import Org, counting, rest_error, wait_for
from tests.integration.test_vector_tables import platform

ROWS = 200


@pytest.fixture
async def source(user_db: UserDb) -> AsyncIterator[tuple[str, asyncpg.Connection[Any]]]:
    """A fresh source table `items_<hex>` owned by the test, and an owner connection to it."""
    name = f"items_{secrets.token_hex(3)}"
    conn = await asyncpg.connect(user_db.owner_dsn)
    await conn.execute(
        f"CREATE TABLE {name} (id int PRIMARY KEY, title text, body text, price numeric(8,2),"
        " updated_at timestamptz NOT NULL DEFAULT now());"
        f"INSERT INTO {name} SELECT g, 'item ' || g, 'body of item ' || g, g"
        f" FROM generate_series(1, {ROWS}) g;"
        f"GRANT SELECT ON {name} TO embedd_user;"
    )
    try:
        yield name, conn
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {name}")
        await conn.close()


COLUMNS = [
    {"name": "title", "role": "embedding", "ordinal": 1, "name_prefix": "Title: "},
    {"name": "body", "role": "embedding", "ordinal": 2},
    {"name": "price", "role": "metadata", "filter_type": "float"},
]


async def synced_table(org: Org, user_db: UserDb, table: str, **extra: Any) -> dict[str, Any]:
    conn_id, emb_id = await platform(org, user_db)
    body = {
        "name": table,
        "connection_id": conn_id,
        "embedding_provider_id": emb_id,
        "source_table": table,
        "primary_key_column": "id",
        "columns": COLUMNS,
        "sync_interval_seconds": 1,
        **extra,
    }
    r = await org.http("POST", "/v1/vector-tables", body)
    assert r.status_code == 200, r.text
    vt = r.json()
    assert (await org.http("POST", f"/v1/vector-tables/{vt['id']}/backfill")).status_code == 200
    await wait_for(lambda: status_is(org, vt["id"], "synced"), what="the backfill")
    return vt  # type: ignore[no-any-return]


async def status_is(org: Org, vt_id: str, expected: str) -> bool:
    return bool(
        (await org.http("GET", f"/v1/vector-tables/{vt_id}/sync/status")).json()["sync_status"] == expected
    )


async def vectors(conn: asyncpg.Connection[Any], ref: str) -> dict[str, asyncpg.Record]:
    return {r["pk_value"]: r for r in await conn.fetch(f'SELECT * FROM "{ref}"')}


async def test_inserts_updates_deletes_are_reflected(
    org: Org, user_db: UserDb, source: tuple[str, asyncpg.Connection[Any]]
) -> None:
    table, owner = source
    vt = await synced_table(org, user_db, table)
    ref = vt["platform_vector_ref"]
    before = await vectors(owner, ref)
    await owner.execute(
        f"INSERT INTO {table} (id, title, body, price) VALUES (1001, 'new thing', 'fresh', 5)"
    )
    await owner.execute(f"UPDATE {table} SET body = 'rewritten body' WHERE id = 7")
    await owner.execute(f"DELETE FROM {table} WHERE id = 9")

    async def reflected() -> bool:
        now = await vectors(owner, ref)
        return "1001" in now and "9" not in now and now["7"]["embedded_text"].endswith("rewritten body")

    await wait_for(reflected)
    now = await vectors(owner, ref)
    assert now["1001"]["embedded_text"] == "Title: new thing\nfresh"
    assert now["7"]["embedding"] != before["7"]["embedding"]
    assert now["8"]["embedding"] == before["8"]["embedding"]  # untouched rows stay as they are
    status = (await org.http("GET", f"/v1/vector-tables/{vt['id']}/sync/status")).json()
    assert status["synced_rows"] == status["total_rows"] == ROWS and status["staleness_secs"] <= 5


async def test_metadata_only_change_makes_no_provider_call(
    org: Org, user_db: UserDb, service: app.Service, source: tuple[str, asyncpg.Connection[Any]]
) -> None:
    table, owner = source
    vt = await synced_table(org, user_db, table)
    ref = vt["platform_vector_ref"]
    with counting(service) as counted:
        await owner.execute(f"UPDATE {table} SET price = 999.5 WHERE id <= 20")

        async def reflected() -> bool:
            row = await owner.fetchrow(f"SELECT metadata FROM \"{ref}\" WHERE pk_value = '20'")
            return bool(row and '"price": 999.5' in row["metadata"])

        await wait_for(reflected)
        assert counted.texts == 0
        await owner.execute(f"UPDATE {table} SET title = 'renamed' WHERE id = 3")
        await wait_for(lambda: _has_text(owner, ref, "3", "Title: renamed"))
        assert counted.texts == 1  # exactly the row whose text changed


async def _has_text(conn: asyncpg.Connection[Any], ref: str, pk: str, prefix: str) -> bool:
    text = await conn.fetchval(f'SELECT embedded_text FROM "{ref}" WHERE pk_value = $1', pk)
    return bool(text and text.startswith(prefix))


async def _no_cycle_running(control_dsn: str, vt_id: str) -> bool:
    conn = await asyncpg.connect(control_dsn)
    try:
        return bool(
            await conn.fetchval("SELECT sync_lease_owner IS NULL FROM vector_tables WHERE id = $1", vt_id)
        )
    finally:
        await conn.close()


async def test_pause_and_resume(
    org: Org, user_db: UserDb, control_dsn: str, source: tuple[str, asyncpg.Connection[Any]]
) -> None:
    table, owner = source
    vt = await synced_table(org, user_db, table)
    # A second table on the same source keeps syncing: the witness that cycles ran meanwhile.
    witness = (await synced_table(org, user_db, table, name=f"{table}-witness"))["platform_vector_ref"]
    ref, vt_id = vt["platform_vector_ref"], vt["id"]
    r = await org.http("POST", f"/v1/vector-tables/{vt_id}/sync/pause")
    assert r.status_code == 200
    body = r.json()
    assert body["vector_table_id"] == vt_id and body["sync_status"] == "paused" and body["message"]
    status, code, _ = rest_error(await org.http("POST", f"/v1/vector-tables/{vt_id}/sync/pause"))
    assert (status, code) == (409, "sync_already_paused")
    # a cycle already running when the pause landed may finish first
    await wait_for(lambda: _no_cycle_running(control_dsn, vt_id), what="the running cycle to end")
    for n in (1, 2):  # two cycles of the witness: more than two polls of the scheduler
        await owner.execute(f"UPDATE {table} SET title = 'while paused {n}' WHERE id = 5")
        await wait_for(lambda n=n: _has_text(owner, witness, "5", f"Title: while paused {n}"), what="a cycle")
    assert not await _has_text(owner, ref, "5", "Title: while paused")
    assert await status_is(org, vt_id, "paused")
    r = await org.http("POST", f"/v1/vector-tables/{vt_id}/sync/resume")
    assert r.status_code == 200 and r.json()["sync_status"] == "synced"
    await wait_for(lambda: _has_text(owner, ref, "5", "Title: while paused 2"))
    status, code, _ = rest_error(await org.http("POST", f"/v1/vector-tables/{vt_id}/sync/resume"))
    assert (status, code) == (409, "sync_not_paused")


async def test_errors_are_reported_and_recover_by_themselves(
    org: Org, user_db: UserDb, source: tuple[str, asyncpg.Connection[Any]]
) -> None:
    table, owner = source
    vt = await synced_table(org, user_db, table)
    await owner.execute(f"REVOKE SELECT ON {table} FROM embedd_user")
    await wait_for(lambda: status_is(org, vt["id"], "error"))
    status = (await org.http("GET", f"/v1/vector-tables/{vt['id']}/sync/status")).json()
    assert "permission denied" in status["last_error"] and status["last_error_at"]
    await owner.execute(f"GRANT SELECT ON {table} TO embedd_user")
    await wait_for(lambda: status_is(org, vt["id"], "synced"))
    status = (await org.http("GET", f"/v1/vector-tables/{vt['id']}/sync/status")).json()
    assert "last_error" not in status


async def test_cdc_mode_with_a_cursor_column(
    org: Org, user_db: UserDb, source: tuple[str, asyncpg.Connection[Any]]
) -> None:
    table, owner = source
    vt = await synced_table(org, user_db, table, sync_mode="cdc", cursor_column="updated_at")
    assert vt["sync_mode"] == "cdc" and vt["cursor_column"] == "updated_at"
    ref = vt["platform_vector_ref"]
    await owner.execute(
        f"UPDATE {table} SET title = 'cdc change', updated_at = now() + interval '1 second' WHERE id = 11"
    )
    await owner.execute(
        f"INSERT INTO {table} (id, title, body, price, updated_at)"
        " VALUES (2002, 'cdc new', 'b', 1, now() + interval '1 second')"
    )
    await wait_for(lambda: _has_text(owner, ref, "11", "Title: cdc change"))
    await wait_for(lambda: _has_text(owner, ref, "2002", "Title: cdc new"))
    await owner.execute(f"DELETE FROM {table} WHERE id = 12")  # found by the periodic sweep

    async def gone() -> bool:
        return not await owner.fetchval(f"SELECT count(*) FROM \"{ref}\" WHERE pk_value = '12'")

    await wait_for(gone)


async def test_rebackfill_swaps_atomically_under_a_query_loop(
    org: Org, user_db: UserDb, source: tuple[str, asyncpg.Connection[Any]]
) -> None:
    table, owner = source
    vt = await synced_table(org, user_db, table)
    ref, vt_id = vt["platform_vector_ref"], vt["id"]
    probe = np.random.default_rng(1).standard_normal(384).astype(np.float32)
    literal = "[" + ",".join(f"{x:.5f}" for x in probe) + "]"
    stop = asyncio.Event()
    stats = {"queries": 0, "failed": 0, "empty": 0}
    errors: list[str] = []

    async def query_loop() -> None:
        # No statement cache: the swap renames tables under running queries.
        conn = await asyncpg.connect(user_db.owner_dsn, statement_cache_size=0)
        try:
            while not stop.is_set():
                try:
                    rows = await conn.fetch(
                        f'SELECT pk_value FROM "{ref}" ORDER BY embedding <=> $1::vector LIMIT 10', literal
                    )
                    stats["queries"] += 1
                    stats["empty"] += not rows
                except asyncpg.PostgresError as exc:
                    stats["failed"] += 1
                    errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0)
        finally:
            await conn.close()

    loop = asyncio.create_task(query_loop())
    columns = [{**COLUMNS[0], "name_prefix": "Item: "}, *COLUMNS[1:]]
    r = await org.http("PUT", f"/v1/vector-tables/{vt_id}", {"columns": columns})
    assert r.status_code == 200, r.text
    assert r.json()["sync_status"] == "pending_rebackfill"
    assert r.json()["columns"][0]["name_prefix"] == "Item: "
    tasks = (await org.http("GET", f"/v1/tasks?target_id={vt_id}")).json()["tasks"]
    assert tasks[0]["task_type"] == "rebackfill"
    status, code, _ = rest_error(await org.http("POST", f"/v1/vector-tables/{vt_id}/backfill"))
    assert (status, code) == (409, "backfill_in_progress")
    await wait_for(lambda: status_is(org, vt_id, "synced"))
    after_swap = stats["queries"]
    await wait_for(lambda: stats["queries"] >= after_swap + 20, what="queries on the swapped-in table")
    stop.set()
    await loop
    assert stats["queries"] > 20 and stats["failed"] == 0 and stats["empty"] == 0, (stats, errors[:3])
    now = await vectors(owner, ref)
    assert len(now) == ROWS and now["1"]["embedded_text"] == "Item: item 1\nbody of item 1"
    leftovers = await owner.fetchval(
        "SELECT count(*) FROM pg_class WHERE relname IN ($1, $2)", f"{ref}_swap", f"{ref}_old"
    )
    assert leftovers == 0
    task = (await org.http("GET", f"/v1/tasks/{tasks[0]['id']}")).json()
    assert task["status"] == "completed"


async def test_metadata_column_change_reuses_the_vectors(
    org: Org, user_db: UserDb, service: app.Service, source: tuple[str, asyncpg.Connection[Any]]
) -> None:
    table, owner = source
    vt = await synced_table(org, user_db, table)
    ref = vt["platform_vector_ref"]
    before = await vectors(owner, ref)
    with counting(service) as counted:
        columns = [*COLUMNS, {"name": "updated_at", "role": "metadata", "filter_type": "datetime"}]
        r = await org.http("PATCH", f"/v1/vector-tables/{vt['id']}?update_mask=columns", {"columns": columns})
        assert r.status_code == 200, r.text
        await wait_for(lambda: status_is(org, vt["id"], "synced"))
        assert counted.texts == 0
    now = await vectors(owner, ref)
    assert len(now) == ROWS and now["1"]["embedding"] == before["1"]["embedding"]
    assert '"updated_at"' in now["1"]["metadata"]


async def test_update_validation(
    org: Org, user_db: UserDb, source: tuple[str, asyncpg.Connection[Any]]
) -> None:
    table, _ = source
    vt = await synced_table(org, user_db, table)
    status, code, err = rest_error(
        await org.http(
            "PATCH", f"/v1/vector-tables/{vt['id']}?update_mask=source_table", {"source_table": "x"}
        )
    )
    assert (status, code) == (400, "validation_error") and err["details"][0][
        "field"
    ] == "update_mask.source_table"
    status, code, err = rest_error(
        await org.http(
            "PUT", f"/v1/vector-tables/{vt['id']}", {"columns": [{"name": "nope", "role": "embedding"}]}
        )
    )
    assert (status, code) == (400, "validation_error") and err["details"][0]["field"] == "columns[0].name"
    r = await org.http(
        "PUT", f"/v1/vector-tables/{vt['id']}", {"name": "renamed", "sync_interval_seconds": 5}
    )
    assert r.status_code == 200 and r.json()["name"] == "renamed" and r.json()["sync_status"] == "synced"
    assert r.json()["sync_interval_seconds"] == 5


async def test_update_mask_paths_need_a_value(
    org: Org, user_db: UserDb, source: tuple[str, asyncpg.Connection[Any]]
) -> None:
    """Before the fix `update_mask=sync_mode` with no value stored `unspecified`."""
    table, _ = source
    vt = await synced_table(org, user_db, table)
    for path, body in (
        ("sync_mode", {}),
        ("sync_mode", {"sync_mode": "unspecified"}),
        ("embedding_model", {}),
        ("columns", {"columns": []}),
        ("name", {"name": "  "}),
    ):
        status, code, err = rest_error(
            await org.http("PATCH", f"/v1/vector-tables/{vt['id']}?update_mask={path}", body)
        )
        assert (status, code) == (400, "validation_error"), (path, err)
        assert err["details"][0]["field"] == path and "has no value" in err["details"][0]["description"]
    status, code, err = rest_error(
        await org.http("PATCH", f"/v1/vector-tables/{vt['id']}?update_mask=colour", {"name": "x"})
    )
    assert (status, code) == (400, "validation_error") and err["details"][0]["field"] == "update_mask.colour"
    got = (await org.http("GET", f"/v1/vector-tables/{vt['id']}")).json()
    assert got["sync_mode"] == "batch" and got["name"] == vt["name"]


async def test_a_shorter_interval_applies_at_once(
    org: Org, user_db: UserDb, source: tuple[str, asyncpg.Connection[Any]]
) -> None:
    """Before the fix a table on a 60 s interval patched to 1 s waited out the 60 s first."""
    table, owner = source
    vt = await synced_table(org, user_db, table, sync_interval_seconds=60)
    r = await org.http(
        "PATCH",
        f"/v1/vector-tables/{vt['id']}?update_mask=sync_interval_seconds",
        {"sync_interval_seconds": 1},
    )
    assert r.status_code == 200 and r.json()["sync_interval_seconds"] == 1, r.text
    await owner.execute(f"UPDATE {table} SET title = 'soon' WHERE id = 4")
    await wait_for(
        lambda: _has_text(owner, vt["platform_vector_ref"], "4", "Title: soon"), 10, what="a cycle"
    )
