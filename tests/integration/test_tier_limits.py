"""Tier limits (managed mode only): the table limit at create, and the vector budget that a
backfill stops at and that sync honours for inserts, never for updates and deletes."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from embedd.v1 import values_pb2, vector_table_pb2
from embedd_server import app
from embedd_server.domain.tiers import TIERS

from tests.conftest import PRODUCT_ROWS, UserDb
from tests.fakes.providers import FakeOpenAI
from tests.harness import UNTHROTTLED, Org, delete_vector_tables, grpc_error, rest_error, wait_for
from tests.integration.test_batch_backfill import FAST, KEY, backfill, make_table
from tests.integration.test_sync import ROWS, table_body
from tests.integration.test_vector_tables import seed_body, wait_synced
from tests.modes import StoreView, connection

FREE = TIERS["free"]


@pytest.fixture
async def free_org(service: app.Service, rest: httpx.AsyncClient) -> AsyncIterator[Org]:
    """An organisation on the free tier (with a request limit that never throttles a test)."""
    org_id = await service.orgs.create_org(
        f"free-{secrets.token_hex(4)}", tier="free", requests_per_minute=UNTHROTTLED
    )
    _, key = await service.orgs.create_api_key(org_id, "full", "full")
    _, read_key = await service.orgs.create_api_key(org_id, "reader", "read_only")
    made = Org(org_id, key, read_key, f"127.0.0.1:{service.port}", rest)
    yield made
    await delete_vector_tables(made.grpc_target, key)


async def _create(org: Org, conn_id: str, emb_id: str, mode: str, name: str) -> httpx.Response:
    return await org.http("POST", "/v1/vector-tables", seed_body(conn_id, emb_id, mode=mode, name=name))


async def test_managed_tables_stop_at_the_tier_limit(free_org: Org, user_db: UserDb) -> None:
    managed = await connection(free_org, user_db, "managed")
    platform = await connection(free_org, user_db, "platform")
    # Platform tables never count: the vectors live in the user's database.
    for n in range(FREE.max_tables + 1):
        assert (await _create(free_org, *platform, "platform", f"p{n}")).status_code == 200
    # The last places, asked for concurrently: exactly as many as are left succeed.
    first = await _create(free_org, *managed, "managed", "m0")
    assert first.status_code == 200, first.text
    racing = await asyncio.gather(*(_create(free_org, *managed, "managed", f"m{n}") for n in range(1, 6)))
    assert sorted(r.status_code for r in racing) == [200] * (FREE.max_tables - 1) + [403] * (
        6 - FREE.max_tables
    )
    status, code, err = rest_error(await _create(free_org, *managed, "managed", "one-too-many"))
    assert (status, code) == (403, "tier_limit_reached")
    assert "'free' tier allows 3 managed vector tables" in err["message"] and "platform" in err["message"]
    async with free_org.client() as c:
        request = vector_table_pb2.CreateVectorTableRequest(
            vector_table=vector_table_pb2.VectorTable(
                name="grpc-too",
                connection_id=managed[0],
                embedding_provider_id=managed[1],
                source_table="public.products",
                primary_key_column="id",
                columns=[vector_table_pb2.Column(name="name", role=values_pb2.ColumnRole.embedding)],
            )
        )
        gcode, reason, _, _ = await grpc_error(c.vector_tables.CreateVectorTable(request))
    assert (gcode, reason) == (grpc.StatusCode.PERMISSION_DENIED, "tier_limit_reached")
    # Nothing half-made: no collection for the refused tables, and a freed place can be taken.
    listed = (await free_org.http("GET", "/v1/vector-tables?limit=100")).json()["vector_tables"]
    made = [t for t in listed if t["mode"] == "managed"]
    assert len(made) == FREE.max_tables
    assert (await free_org.http("DELETE", f"/v1/vector-tables/{made[0]['id']}")).status_code == 200
    assert (await _create(free_org, *managed, "managed", "again")).status_code == 200


async def _set_synced_rows(control_dsn: str, vt_id: str, rows: int) -> None:
    conn = await asyncpg.connect(control_dsn)
    try:
        await conn.execute("UPDATE vector_tables SET synced_rows = $2 WHERE id = $1", vt_id, rows)
    finally:
        await conn.close()


async def _status(org: Org, vt_id: str) -> dict[str, Any]:
    return (await org.http("GET", f"/v1/vector-tables/{vt_id}/sync/status")).json()  # type: ignore[no-any-return]


async def test_the_vector_budget_skips_new_rows_only(
    free_org: Org,
    user_db: UserDb,
    service: app.Service,
    control_dsn: str,
    source: tuple[str, asyncpg.Connection[Any]],
) -> None:
    table, owner = source
    conn_id, emb_id = await connection(free_org, user_db, "managed")
    platform = await connection(free_org, user_db, "platform")
    # Another managed table holds all but 150 of the organisation's vectors (never synced, so
    # the number stays); a platform table's vectors do not count, however many.
    other = (await _create(free_org, conn_id, emb_id, "managed", "other")).json()
    assert FREE.max_vectors is not None
    await _set_synced_rows(control_dsn, other["id"], FREE.max_vectors - 150)
    big_platform = (await _create(free_org, *platform, "platform", "big")).json()
    await _set_synced_rows(control_dsn, big_platform["id"], 10 * FREE.max_vectors)

    vt = (await free_org.http("POST", "/v1/vector-tables", table_body(conn_id, emb_id, table))).json()
    task = (await free_org.http("POST", f"/v1/vector-tables/{vt['id']}/backfill")).json()
    status = await wait_synced(free_org, vt["id"])
    # The fill stopped at the budget: 150 stored, the rest counted and explained.
    view = StoreView(service, user_db, vt)
    assert len(await view.rows()) == 150
    assert status["sync_status"] == "synced" and status["synced_rows"] == 150
    assert (
        status["total_rows"] == ROWS and status["rows_skipped"] == ROWS - 150 and status["rows_pending"] == 0
    )
    assert "50 source rows are not stored" in status["warning"] and "'free' tier" in status["warning"]
    got = (await free_org.http("GET", f"/v1/tasks/{task['task_id']}")).json()
    assert got["status"] == "completed" and got["progress"]["rows_skipped"] == ROWS - 150

    # Sync at the budget: updates and deletes apply, inserts are skipped.
    await owner.execute(f"UPDATE {table} SET title = 'changed' WHERE id = 3")
    await owner.execute(f"DELETE FROM {table} WHERE id = 4")
    await owner.execute(f"INSERT INTO {table} (id, title, body, price) VALUES (5000, 'new', 'b', 1)")

    async def applied() -> bool:
        rows = await view.rows()
        return "4" not in rows and await view.has_text("3", "Title: changed")

    await wait_for(applied, what="the update and the delete")
    # The delete freed one place, which the first new row in key order takes (row 151).
    await wait_for(lambda: _skipped_is(free_org, vt["id"], ROWS - 150), what="the skipped count")
    assert "5000" not in await view.rows()

    # Budget freed: sync stores the skipped rows by itself, and the warning goes.
    await _set_synced_rows(control_dsn, other["id"], 0)
    await wait_for(lambda: _skipped_is(free_org, vt["id"], 0), what="the skipped rows to be stored")
    rows = await view.rows()
    assert len(rows) == ROWS and "5000" in rows and "4" not in rows
    assert "warning" not in await _status(free_org, vt["id"])


async def _skipped_is(org: Org, vt_id: str, expected: int) -> bool:
    return bool((await _status(org, vt_id)).get("rows_skipped", 0) == expected)


async def test_a_batch_api_fill_stops_at_the_vector_budget(
    free_org: Org, user_db: UserDb, service: app.Service, control_dsn: str
) -> None:
    """The batch fill cannot cut its provider's output files short, so the budget is applied
    where it writes (engine/budget.py); the rows past it are counted as skipped."""
    async with FakeOpenAI(api_key=KEY, **FAST) as fake:  # type: ignore[arg-type]
        vt = await make_table(free_org, user_db, fake, "managed", embedding_strategy="batch")
        other = (
            await _create(free_org, vt["connection_id"], vt["embedding_provider_id"], "managed", "o")
        ).json()
        assert FREE.max_vectors is not None
        await _set_synced_rows(control_dsn, other["id"], FREE.max_vectors - 150)
        task = await backfill(free_org, vt["id"])
    assert task["status"] == "completed" and task["progress"]["rows_skipped"] == PRODUCT_ROWS - 150
    assert len(await StoreView(service, user_db, vt).rows()) == 150
    status = await _status(free_org, vt["id"])
    assert status["rows_skipped"] == PRODUCT_ROWS - 150 and "warning" in status
