"""Continuous sync, pause/resume and re-backfill with an atomic swap, in both modes (the
`mode` fixture), against a real PostgreSQL and a real Qdrant: what users see after they
change their source rows."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import grpc
import numpy as np
from embedd.v1 import query_pb2
from embedd_server import app

from tests.conftest import ITEM_ROWS, UserDb
from tests.harness import Org, counting, rest_error, wait_for
from tests.integration.test_vector_tables import wait_synced
from tests.modes import StoreView, connection

ROWS = ITEM_ROWS


COLUMNS = [
    {"name": "title", "role": "embedding", "ordinal": 1, "name_prefix": "Title: "},
    {"name": "body", "role": "embedding", "ordinal": 2},
    {"name": "price", "role": "metadata", "filter_type": "float"},
]


def table_body(conn_id: str, emb_id: str, table: str, **extra: Any) -> dict[str, Any]:
    """A vector table over the test's `source` table, synced every second."""
    return {
        "name": table,
        "connection_id": conn_id,
        "embedding_provider_id": emb_id,
        "source_table": table,
        "primary_key_column": "id",
        "columns": COLUMNS,
        "sync_interval_seconds": 1,
        **extra,
    }


async def synced_table(
    org: Org, user_db: UserDb, table: str, mode: str = "platform", **extra: Any
) -> dict[str, Any]:
    conn_id, emb_id = await connection(org, user_db, mode)
    r = await org.http("POST", "/v1/vector-tables", table_body(conn_id, emb_id, table, **extra))
    assert r.status_code == 200, r.text
    vt = r.json()
    assert (await org.http("POST", f"/v1/vector-tables/{vt['id']}/backfill")).status_code == 200
    assert (await wait_synced(org, vt["id"]))["sync_status"] == "synced"
    return vt  # type: ignore[no-any-return]


async def status_is(org: Org, vt_id: str, expected: str) -> bool:
    return bool(
        (await org.http("GET", f"/v1/vector-tables/{vt_id}/sync/status")).json()["sync_status"] == expected
    )


async def test_inserts_updates_deletes_are_reflected(
    org: Org, user_db: UserDb, service: app.Service, mode: str, source: tuple[str, asyncpg.Connection[Any]]
) -> None:
    table, owner = source
    vt = await synced_table(org, user_db, table, mode)
    view = StoreView(service, user_db, vt)
    before = await view.rows()
    await owner.execute(
        f"INSERT INTO {table} (id, title, body, price) VALUES (1001, 'new thing', 'fresh', 5)"
    )
    await owner.execute(f"UPDATE {table} SET body = 'rewritten body' WHERE id = 7")
    await owner.execute(f"DELETE FROM {table} WHERE id = 9")

    async def reflected() -> bool:
        now = await view.rows()
        return "1001" in now and "9" not in now and now["7"].text.endswith("rewritten body")

    await wait_for(reflected)
    now = await view.rows()
    assert len(now) == ROWS and now["1001"].text == "Title: new thing\nfresh"
    assert now["1001"].metadata == {"title": "new thing", "body": "fresh", "price": 5.0}
    assert not np.allclose(now["7"].vector, before["7"].vector)
    assert np.array_equal(now["8"].vector, before["8"].vector)  # untouched rows stay as they are
    status = (await org.http("GET", f"/v1/vector-tables/{vt['id']}/sync/status")).json()
    assert status["synced_rows"] == status["total_rows"] == ROWS and status["staleness_secs"] <= 5


async def test_metadata_only_change_makes_no_provider_call(
    org: Org, user_db: UserDb, service: app.Service, mode: str, source: tuple[str, asyncpg.Connection[Any]]
) -> None:
    table, owner = source
    vt = await synced_table(org, user_db, table, mode)
    view = StoreView(service, user_db, vt)
    before = await view.rows()
    with counting(service) as counted:
        await owner.execute(f"UPDATE {table} SET price = 999.5 WHERE id <= 20")

        async def reflected() -> bool:
            rows = await view.rows()
            return all(rows[str(i)].metadata["price"] == 999.5 for i in range(1, 21))

        await wait_for(reflected)
        assert counted.texts == 0
        assert np.array_equal((await view.rows())["20"].vector, before["20"].vector)
        await owner.execute(f"UPDATE {table} SET title = 'renamed' WHERE id = 3")
        await wait_for(lambda: view.has_text("3", "Title: renamed"))
        assert counted.texts == 1  # exactly the row whose text changed


async def _no_cycle_running(control_dsn: str, vt_id: str) -> bool:
    conn = await asyncpg.connect(control_dsn)
    try:
        return bool(
            await conn.fetchval("SELECT sync_lease_owner IS NULL FROM vector_tables WHERE id = $1", vt_id)
        )
    finally:
        await conn.close()


async def test_pause_and_resume(
    org: Org,
    user_db: UserDb,
    service: app.Service,
    control_dsn: str,
    mode: str,
    source: tuple[str, asyncpg.Connection[Any]],
) -> None:
    table, owner = source
    vt = await synced_table(org, user_db, table, mode)
    # A second table on the same source keeps syncing: the witness that cycles ran meanwhile.
    witness = StoreView(
        service, user_db, await synced_table(org, user_db, table, mode, name=f"{table}-witness")
    )
    view, vt_id = StoreView(service, user_db, vt), vt["id"]
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
        await wait_for(lambda n=n: witness.has_text("5", f"Title: while paused {n}"), what="a cycle")
    assert not await view.has_text("5", "Title: while paused")
    assert await status_is(org, vt_id, "paused")
    r = await org.http("POST", f"/v1/vector-tables/{vt_id}/sync/resume")
    assert r.status_code == 200 and r.json()["sync_status"] == "synced"
    await wait_for(lambda: view.has_text("5", "Title: while paused 2"))
    status, code, _ = rest_error(await org.http("POST", f"/v1/vector-tables/{vt_id}/sync/resume"))
    assert (status, code) == (409, "sync_not_paused")


async def test_errors_are_reported_and_recover_by_themselves(
    org: Org, user_db: UserDb, mode: str, source: tuple[str, asyncpg.Connection[Any]]
) -> None:
    table, owner = source
    vt = await synced_table(org, user_db, table, mode)
    await owner.execute(f"REVOKE SELECT ON {table} FROM embedd_user")
    await wait_for(lambda: status_is(org, vt["id"], "error"))
    status = (await org.http("GET", f"/v1/vector-tables/{vt['id']}/sync/status")).json()
    assert "permission denied" in status["last_error"] and status["last_error_at"]
    await owner.execute(f"GRANT SELECT ON {table} TO embedd_user")
    await wait_for(lambda: status_is(org, vt["id"], "synced"))
    status = (await org.http("GET", f"/v1/vector-tables/{vt['id']}/sync/status")).json()
    assert "last_error" not in status


async def test_cdc_mode_with_a_cursor_column(
    org: Org, user_db: UserDb, service: app.Service, mode: str, source: tuple[str, asyncpg.Connection[Any]]
) -> None:
    table, owner = source
    vt = await synced_table(org, user_db, table, mode, sync_mode="cdc", cursor_column="updated_at")
    assert vt["sync_mode"] == "cdc" and vt["cursor_column"] == "updated_at"
    view = StoreView(service, user_db, vt)
    await owner.execute(
        f"UPDATE {table} SET title = 'cdc change', updated_at = now() + interval '1 second' WHERE id = 11"
    )
    await owner.execute(
        f"INSERT INTO {table} (id, title, body, price, updated_at)"
        " VALUES (2002, 'cdc new', 'b', 1, now() + interval '1 second')"
    )
    await wait_for(lambda: view.has_text("11", "Title: cdc change"))
    await wait_for(lambda: view.has_text("2002", "Title: cdc new"))
    await owner.execute(f"DELETE FROM {table} WHERE id = 12")  # found by the periodic sweep

    async def gone() -> bool:
        return "12" not in await view.rows()

    await wait_for(gone)


class QueryLoop:
    """Queries a vector table without pause until stopped: through the service (gRPC, either
    mode) and, in platform mode, straight on the pgvector table as a user's own SQL would.
    Counts queries, failures and empty pages."""

    def __init__(self, org: Org, user_db: UserDb, vt: dict[str, Any]) -> None:
        self._org, self._dsn, self._vt = org, user_db.owner_dsn, vt
        self.stop = asyncio.Event()
        self.stats = {"queries": 0, "failed": 0, "empty": 0, "sql_queries": 0}
        self.errors: list[str] = []

    def _count(self, rows: int, key: str = "queries") -> None:
        self.stats[key] += 1
        self.stats["empty"] += not rows

    async def _service(self) -> None:
        request = query_pb2.QueryVectorTableRequest(
            vector_table_id=self._vt["id"], query="item body", limit=10
        )
        async with self._org.client() as c:
            while not self.stop.is_set():
                try:
                    self._count(len((await c.query.QueryVectorTable(request)).results))
                except grpc.aio.AioRpcError as exc:
                    self.stats["failed"] += 1
                    self.errors.append(f"{exc.code()}: {exc.details()}")

    async def _sql(self) -> None:
        probe = np.random.default_rng(1).standard_normal(384).astype(np.float32)
        literal = "[" + ",".join(f"{x:.5f}" for x in probe) + "]"
        ref = self._vt["platform_vector_ref"]
        # No statement cache: the swap renames tables under running queries.
        conn = await asyncpg.connect(self._dsn, statement_cache_size=0)
        try:
            while not self.stop.is_set():
                try:
                    rows = await conn.fetch(
                        f'SELECT pk_value FROM "{ref}" ORDER BY embedding <=> $1::vector LIMIT 10', literal
                    )
                    self._count(len(rows), "sql_queries")
                except asyncpg.PostgresError as exc:
                    self.stats["failed"] += 1
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0)
        finally:
            await conn.close()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._service())
            if self._vt["mode"] == "platform":
                tg.create_task(self._sql())


async def test_rebackfill_swaps_atomically_under_a_query_loop(
    org: Org, user_db: UserDb, service: app.Service, mode: str, source: tuple[str, asyncpg.Connection[Any]]
) -> None:
    table, owner = source
    vt = await synced_table(org, user_db, table, mode)
    vt_id = vt["id"]
    view = StoreView(service, user_db, vt)
    queries = QueryLoop(org, user_db, vt)
    loop = asyncio.create_task(queries.run())
    await wait_for(lambda: queries.stats["queries"] >= 5, what="queries before the change")
    columns = [{**COLUMNS[0], "name_prefix": "Item: "}, *COLUMNS[1:]]
    r = await org.http("PUT", f"/v1/vector-tables/{vt_id}", {"columns": columns})
    assert r.status_code == 200, r.text
    assert r.json()["sync_status"] == "pending_rebackfill"
    assert r.json()["columns"][0]["name_prefix"] == "Item: "
    tasks = (await org.http("GET", f"/v1/tasks?target_id={vt_id}")).json()["tasks"]
    assert tasks[0]["task_type"] == "rebackfill"
    status, code, _ = rest_error(await org.http("POST", f"/v1/vector-tables/{vt_id}/backfill"))
    assert (status, code) == (409, "backfill_in_progress")
    assert (await wait_synced(org, vt_id))["sync_status"] == "synced"
    after_swap = queries.stats["queries"]
    await wait_for(
        lambda: queries.stats["queries"] >= after_swap + 20, what="queries on the swapped-in table"
    )
    queries.stop.set()
    await loop
    stats = queries.stats
    assert stats["queries"] > 20 and stats["failed"] == 0 and stats["empty"] == 0, (stats, queries.errors[:3])
    now = await view.rows()
    assert len(now) == ROWS and now["1"].text == "Item: item 1\nbody of item 1"
    # Queries answer from the swapped-in table (platform mode: through statements prepared
    # before the swap, which PostgreSQL analyses again by name).
    r = await org.http(
        "POST", f"/v1/vector-tables/{vt_id}/query", {"query": "item", "include_embedded_text": True}
    )
    assert r.status_code == 200 and r.json()["results"], r.text
    assert all(hit["embedded_text"].startswith("Item: ") for hit in r.json()["results"])
    if mode == "platform":
        leftovers = await owner.fetchval(
            "SELECT count(*) FROM pg_class WHERE relname IN ($1, $2)", f"{view.ref}_swap", f"{view.ref}_old"
        )
        assert leftovers == 0 and stats["sql_queries"] > 20
    else:  # the next collection behind the alias; the old one dropped
        assert await view.collections() == [f"{view.ref}_v2"]
        assert await view.alias_target() == f"{view.ref}_v2"
    task = (await org.http("GET", f"/v1/tasks/{tasks[0]['id']}")).json()
    assert task["status"] == "completed"


async def test_metadata_column_change_reuses_the_vectors(
    org: Org, user_db: UserDb, service: app.Service, mode: str, source: tuple[str, asyncpg.Connection[Any]]
) -> None:
    table, _ = source
    vt = await synced_table(org, user_db, table, mode)
    view = StoreView(service, user_db, vt)
    before = await view.rows()
    with counting(service) as counted:
        columns = [*COLUMNS, {"name": "updated_at", "role": "metadata", "filter_type": "datetime"}]
        r = await org.http("PATCH", f"/v1/vector-tables/{vt['id']}?update_mask=columns", {"columns": columns})
        assert r.status_code == 200, r.text
        assert (await wait_synced(org, vt["id"]))["sync_status"] == "synced"
        assert counted.texts == 0
    now = await view.rows()
    # the same vector (Qdrant normalises what it stores for cosine: equal up to float32 rounding)
    assert len(now) == ROWS and np.allclose(now["1"].vector, before["1"].vector, atol=1e-7)
    assert "updated_at" in now["1"].metadata


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
    org: Org, user_db: UserDb, service: app.Service, source: tuple[str, asyncpg.Connection[Any]]
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
    view = StoreView(service, user_db, vt)
    await wait_for(lambda: view.has_text("4", "Title: soon"), 10, what="a cycle")
