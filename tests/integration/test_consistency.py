"""One transaction per state change, seen through the API: the interleavings that used to leave
the control plane wrong are forced with row locks (the test holds a lock, the RPC blocks on
it between its steps, the test looks), against a server of its own on a control plane of
its own with the engine off - so the test is the only one to see the half-done state."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
from embedd.v1 import connection_pb2, embedding_provider_pb2, sync_pb2, task_pb2, values_pb2, vector_table_pb2
from embedd_client import EmbeddClient
from embedd_server import app
from embedd_server.config import load_settings
from embedd_server.devtools.pg import LocalPostgres, create_database

from tests.conftest import UserDb
from tests.harness import (
    UNTHROTTLED,
    CountingRegistry,
    Org,
    counting,
    drop_control_plane,
    random_secret_key,
    rest_error,
    wait_for,
)
from tests.integration.test_vector_tables import create_vt, platform, wait_synced


async def fresh_control(pg: LocalPostgres) -> tuple[str, str]:
    name = f"control_{secrets.token_hex(4)}"
    await create_database(pg.superuser_dsn(), name, with_vector=False)
    return name, pg.superuser_dsn(name, direct=True)


@dataclass
class Plane:
    """A server with the engine off on a control plane of its own, a client, a control-plane
    connection for the test, and one vector table (with its physical table)."""

    svc: app.Service
    client: EmbeddClient
    dsn: str
    ctl: asyncpg.Connection[Any]
    vt: vector_table_pb2.VectorTable


@pytest.fixture
async def plane(pg: LocalPostgres, user_db: UserDb) -> AsyncIterator[Plane]:
    name, dsn = await fresh_control(pg)
    svc = await app.start(
        load_settings(
            database_url=dsn,
            grpc_host="127.0.0.1",
            grpc_port=0,
            secret_key=random_secret_key(),
            engine_enabled=False,
        )
    )
    org_id = await svc.orgs.create_org("consistency", requests_per_minute=UNTHROTTLED)
    _, key = await svc.orgs.create_api_key(org_id, "k", "full")
    client = EmbeddClient(f"127.0.0.1:{svc.port}", key)
    ctl = await asyncpg.connect(dsn)
    try:
        async with client:
            conn = await client.connections.CreateConnection(
                connection_pb2.CreateConnectionRequest(
                    provider=values_pb2.ConnectionProvider.postgresql,
                    name="src",
                    mode=values_pb2.Mode.platform,
                    credentials=connection_pb2.PostgresCredentials(**user_db.credentials()),  # type: ignore[arg-type]
                )
            )
            emb = await client.embedding_providers.CreateEmbeddingProvider(
                embedding_provider_pb2.CreateEmbeddingProviderRequest(
                    name="local",
                    provider=values_pb2.EmbeddingProviderType.local,
                    default_model="local-lexical-384",
                )
            )
            vt = await client.vector_tables.CreateVectorTable(
                vector_table_pb2.CreateVectorTableRequest(
                    vector_table=vector_table_pb2.VectorTable(
                        name=f"c-{secrets.token_hex(3)}",
                        connection_id=conn.id,
                        embedding_provider_id=emb.id,
                        source_table="public.products",
                        primary_key_column="id",
                        columns=[vector_table_pb2.Column(name="name", role=values_pb2.ColumnRole.embedding)],
                    )
                )
            )
            yield Plane(svc, client, dsn, ctl, vt)
    finally:
        await ctl.close()
        await svc.stop(1.0)
        await drop_control_plane(pg, name, user_db.owner_dsn)


async def _blocked_on_lock(ctl: asyncpg.Connection[Any], statement: str) -> bool:
    """Some backend waits on a lock while running `statement...` (the RPC reached that step)."""
    return bool(
        await ctl.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query ILIKE $1",
            statement + "%",
        )
    )


async def _row_locked(conn: asyncpg.Connection[Any], vt_id: str, mode: str) -> Any:
    """A transaction on `conn` holding the vector table's row lock in `mode`, until rolled back."""
    tx = conn.transaction()
    await tx.start()
    await conn.execute(f"SELECT 1 FROM vector_tables WHERE id = $1 FOR {mode}", vt_id)
    return tx


async def _physical_exists(user_db: UserDb, ref: str) -> bool:
    owner = await asyncpg.connect(user_db.owner_dsn)
    try:
        return bool(await owner.fetchval("SELECT to_regclass($1) IS NOT NULL", f'"{ref}"'))
    finally:
        await owner.close()


async def test_a_rebackfill_task_is_never_visible_before_its_spec(plane: Plane) -> None:
    """Before the fix the task was committed first: a worker claiming it in between found no
    pending spec, completed it as a no-op, and the table stayed pending_rebackfill forever."""
    locker = await asyncpg.connect(plane.dsn)
    try:
        tx = await _row_locked(locker, plane.vt.id, "NO KEY UPDATE")  # UPDATE waits; FK checks pass
        update = asyncio.ensure_future(
            plane.client.vector_tables.UpdateVectorTable(
                vector_table_pb2.UpdateVectorTableRequest(
                    vector_table=vector_table_pb2.VectorTable(
                        id=plane.vt.id,
                        columns=[
                            vector_table_pb2.Column(
                                name="name", role=values_pb2.ColumnRole.embedding, name_prefix="Item: "
                            )
                        ],
                    )
                )
            )
        )
        # The transaction blocks at its first write of the row: the task's INSERT, whose event
        # trigger takes the table's next sequence (migration 0010), before the UPDATE.
        await wait_for(lambda: _blocked_on_lock(plane.ctl, "INSERT INTO tasks"), what="the update to block")
        claimable = await plane.ctl.fetchval(
            "SELECT count(*) FROM tasks WHERE target_id = $1 AND status = 'pending'", plane.vt.id
        )
        assert claimable == 0, "the re-backfill task was claimable before the spec it builds was written"
        await tx.rollback()
        updated = await update
    finally:
        await locker.close()
    assert updated.sync_status == values_pb2.SyncStatus.pending_rebackfill
    row = await plane.ctl.fetchrow(
        "SELECT v.pending_spec IS NOT NULL AS pending, count(t.id) AS tasks FROM vector_tables v"
        " LEFT JOIN tasks t ON t.target_id = v.id AND t.task_type = 'rebackfill'"
        " WHERE v.id = $1 GROUP BY v.id",
        plane.vt.id,
    )
    assert (row["pending"], row["tasks"]) == (True, 1)
    # One transaction wrote both (the lock above is taken first by the task's own INSERT, so
    # it no longer tells): the task's first event and the spec's status change share an xmin.
    written = await plane.ctl.fetch(
        "SELECT xmin::text AS tx FROM vector_table_events WHERE vector_table_id = $1"
        " AND ((kind = 'progress' AND payload->>'task_type' = 'rebackfill'"
        "       AND payload->>'status' = 'pending')"
        "   OR (kind = 'status_change' AND payload->>'status' = 'pending_rebackfill'))",
        plane.vt.id,
    )
    assert len(written) == 2 and len({r["tx"] for r in written}) == 1, written


async def test_delete_ends_the_row_and_its_tasks_before_it_drops_the_vectors(
    plane: Plane, user_db: UserDb
) -> None:
    """Before the fix the physical table was dropped first: a task claimed before the row went
    re-created it, an orphan nobody would ever drop."""
    ref = plane.vt.platform_vector_ref
    await plane.ctl.execute(
        "INSERT INTO tasks (id, org_id, env_id, task_type, target_id)"
        " SELECT 'task_' || md5(random()::text), org_id, env_id, 'backfill', id"
        " FROM vector_tables WHERE id = $1",
        plane.vt.id,
    )
    locker = await asyncpg.connect(plane.dsn)
    try:
        tx = await _row_locked(locker, plane.vt.id, "KEY SHARE")  # the row's DELETE waits
        delete = asyncio.ensure_future(
            plane.client.vector_tables.DeleteVectorTable(
                vector_table_pb2.DeleteVectorTableRequest(vector_table_id=plane.vt.id, drop_vectors=True)
            )
        )
        await wait_for(
            lambda: _blocked_on_lock(plane.ctl, "DELETE FROM vector_tables"), what="the delete to block"
        )
        # the row (and a claimable task) still exist, so the vectors must too
        assert await _physical_exists(user_db, ref), (
            "the vectors were dropped while the row could still be claimed"
        )
        await tx.rollback()
        done = await delete
    finally:
        await locker.close()
    assert done.deleted and done.vectors_dropped
    assert not await plane.ctl.fetchval("SELECT count(*) FROM tasks WHERE target_id = $1", plane.vt.id)
    assert not await _physical_exists(user_db, ref)


async def test_a_failed_start_closes_what_it_made(pg: LocalPostgres, user_db: UserDb) -> None:
    """The listener, the pool, the HTTP session: a start that fails at binding its port (a
    later step) leaves no connection to the control plane behind."""
    name, dsn = await fresh_control(pg)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    watcher = await asyncpg.connect(pg.superuser_dsn())

    async def connections() -> int:
        return int(await watcher.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", name))

    try:
        settings = load_settings(
            database_url=dsn,
            grpc_host="127.0.0.1",
            grpc_port=taken.getsockname()[1],
            secret_key=random_secret_key(),
        )
        with pytest.raises(RuntimeError):
            await app.start(settings)
        await wait_for(lambda: _is(connections(), 0), 5, what="the control-plane connections to close")
    finally:
        taken.close()
        await watcher.close()
        await drop_control_plane(pg, name, user_db.owner_dsn)


async def _is(value: Any, expected: int) -> bool:
    return bool(await value == expected)


# -- through the session's server --------------------------------------------------------------


async def test_tasks_are_scoped_by_environment(org: Org, user_db: UserDb) -> None:
    made = await create_vt(org, user_db)
    task = (await org.http("POST", f"/v1/vector-tables/{made['id']}/backfill")).json()
    staging = (await org.http("POST", "/v1/environments", {"name": "staging"})).json()["id"]
    status, code, _ = rest_error(
        await org.http("GET", f"/v1/tasks/{task['task_id']}", environment_id=staging)
    )
    assert (status, code) == (404, "task_not_found")
    assert (await org.http("GET", "/v1/tasks", environment_id=staging)).json()["tasks"] == []
    listed = (await org.http("GET", f"/v1/tasks?target_id={made['id']}", environment_id=staging)).json()
    assert listed["tasks"] == []
    async with org.client(environment_id=staging) as c:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in c.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task["task_id"])):
                pass
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # and in its own environment, all of it
    assert (await org.http("GET", f"/v1/tasks/{task['task_id']}")).status_code == 200
    assert [t["id"] for t in (await org.http("GET", "/v1/tasks")).json()["tasks"]] == [task["task_id"]]
    await wait_synced(org, made["id"])


async def test_staleness_is_never_negative_whatever_the_clocks(
    org: Org, user_db: UserDb, control_dsn: str
) -> None:
    """A replica whose clock runs ahead wrote last_synced_at (before the fix the replica
    answering subtracted its own clock and failed with internal_error)."""
    made = await create_vt(org, user_db)
    await org.http("POST", f"/v1/vector-tables/{made['id']}/backfill")
    await wait_synced(org, made["id"])
    await org.http("POST", f"/v1/vector-tables/{made['id']}/sync/pause")  # no cycle rewrites it
    ctl = await asyncpg.connect(control_dsn)
    try:
        await ctl.execute(
            "UPDATE vector_tables SET last_synced_at = clock_timestamp() + interval '1 hour' WHERE id = $1",
            made["id"],
        )
        r = await org.http("GET", f"/v1/vector-tables/{made['id']}/sync/status")
        assert r.status_code == 200, r.text
        assert r.json()["staleness_secs"] == 0
        await ctl.execute(
            "UPDATE vector_tables SET last_synced_at = clock_timestamp() - interval '90 seconds'"
            " WHERE id = $1",
            made["id"],
        )
        assert (
            90
            <= (await org.http("GET", f"/v1/vector-tables/{made['id']}/sync/status")).json()["staleness_secs"]
            < 120
        )
    finally:
        await ctl.close()


async def test_duplicate_ordinals_are_rejected_and_explicit_ones_honoured(org: Org, user_db: UserDb) -> None:
    dup = [
        {"name": "name", "role": "embedding", "ordinal": 1},
        {"name": "description", "role": "embedding", "ordinal": 1},
    ]
    conn_id, emb_id = await platform(org, user_db)
    status, code, err = rest_error(await org.http("POST", "/v1/vector-tables", _body(conn_id, emb_id, dup)))
    assert (status, code) == (400, "validation_error")
    assert err["details"][0]["field"] == "columns[1].ordinal"
    assert "'name' and 'description'" in err["details"][0]["description"]
    # an implicit ordinal comes after the explicit ones: description first, as asked
    mixed = [
        {"name": "name", "role": "embedding"},
        {"name": "description", "role": "embedding", "ordinal": 1},
    ]
    r = await org.http("POST", "/v1/vector-tables", _body(conn_id, emb_id, mixed))
    assert r.status_code == 200, r.text
    made = r.json()
    assert [(c["name"], c["ordinal"]) for c in made["columns"]] == [("name", 2), ("description", 1)]
    await org.http("POST", f"/v1/vector-tables/{made['id']}/backfill")
    await wait_synced(org, made["id"])
    owner = await asyncpg.connect(user_db.owner_dsn)
    try:
        row = await owner.fetchrow(
            f'SELECT v.embedded_text, p.name, p.description FROM "{made["platform_vector_ref"]}" v'
            " JOIN products p ON p.id::text = v.pk_value LIMIT 1"
        )
    finally:
        await owner.close()
    assert row["embedded_text"] == f"{row['description']}\n{row['name']}"


def _body(conn_id: str, emb_id: str, columns: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": f"o-{secrets.token_hex(3)}",
        "connection_id": conn_id,
        "embedding_provider_id": emb_id,
        "source_table": "public.products",
        "primary_key_column": "id",
        "columns": columns,
    }


# -- the engine: a holder whose task was claimed again stops -----------------------------------


async def test_a_worker_whose_task_was_claimed_again_stops_at_once(
    pg: LocalPostgres, user_db: UserDb
) -> None:
    """The lease lapsed and the task was claimed again under the *same owner string* (before
    the fix, fencing by owner alone let both runs write): the old run's renewal is refused,
    it is cancelled, and not one more checkpoint of it lands."""
    name, dsn = await fresh_control(pg)
    source = f"lease_src_{secrets.token_hex(3)}"
    owner = await asyncpg.connect(user_db.owner_dsn)
    await owner.execute(
        f"CREATE TABLE {source} (id int PRIMARY KEY, name text);"
        f"INSERT INTO {source} SELECT g, 'item ' || g FROM generate_series(1, 5000) g;"
        f"GRANT SELECT ON {source} TO embedd_user;"
    )
    svc = await app.start(
        load_settings(
            database_url=dsn,
            grpc_host="127.0.0.1",
            grpc_port=0,
            secret_key=random_secret_key(),
            engine_chunk_rows=20,
            engine_inflight_chunks=1,
            engine_lease_s=0.9,  # renewed every 0.3 s
        ),
        embedders=CountingRegistry,
    )
    ctl = await asyncpg.connect(dsn)
    ref = ""
    try:
        org_id = await svc.orgs.create_org("lease", requests_per_minute=UNTHROTTLED)
        _, key = await svc.orgs.create_api_key(org_id, "k", "full")
        org = Org(org_id, key, key, f"127.0.0.1:{svc.port}", None)  # type: ignore[arg-type]
        with counting(svc, delay_s=0.01):  # slow: the fill outlasts the test
            async with org.client() as c:
                vt_id, ref = await _grpc_table(c, user_db, source)
                task = await c.sync.BackfillVectorTable(
                    sync_pb2.BackfillVectorTableRequest(vector_table_id=vt_id)
                )
            await wait_for(lambda: _processed(ctl, task.task_id, 200), 20, what="200 rows")
            assert svc.worker is not None and task.task_id in svc.worker.running_tasks
            # what a new claim by the same owner string does: a new epoch
            await ctl.execute("UPDATE tasks SET lease_epoch = lease_epoch + 1 WHERE id = $1", task.task_id)
            at_claim = await ctl.fetchval("SELECT rows_processed FROM tasks WHERE id = $1", task.task_id)
            await wait_for(
                lambda: task.task_id not in svc.worker.running_tasks, 5, what="the old run to stop"
            )
            after = await ctl.fetchrow("SELECT * FROM tasks WHERE id = $1", task.task_id)
        assert after["rows_processed"] == at_claim and after["status"] == "running"
        assert after["lease_owner"] == svc.worker.owner  # the new holder's, untouched by the old run
    finally:
        await ctl.close()
        await svc.stop(1.0)
        await drop_control_plane(pg, name, user_db.owner_dsn)
        for table in (ref, f"{ref}_swap", source):
            if table:
                await owner.execute(f'DROP TABLE IF EXISTS "{table}"')
        await owner.close()


async def _processed(ctl: asyncpg.Connection[Any], task_id: str, rows: int) -> bool:
    return bool(await ctl.fetchval("SELECT rows_processed >= $2 FROM tasks WHERE id = $1", task_id, rows))


async def _grpc_table(c: EmbeddClient, user_db: UserDb, source: str) -> tuple[str, str]:
    conn = await c.connections.CreateConnection(
        connection_pb2.CreateConnectionRequest(
            provider=values_pb2.ConnectionProvider.postgresql,
            name="src",
            mode=values_pb2.Mode.platform,
            credentials=connection_pb2.PostgresCredentials(**user_db.credentials()),  # type: ignore[arg-type]
        )
    )
    emb = await c.embedding_providers.CreateEmbeddingProvider(
        embedding_provider_pb2.CreateEmbeddingProviderRequest(
            name="local", provider=values_pb2.EmbeddingProviderType.local, default_model="local-lexical-384"
        )
    )
    vt = await c.vector_tables.CreateVectorTable(
        vector_table_pb2.CreateVectorTableRequest(
            vector_table=vector_table_pb2.VectorTable(
                name="lease",
                connection_id=conn.id,
                embedding_provider_id=emb.id,
                source_table=source,
                primary_key_column="id",
                columns=[vector_table_pb2.Column(name="name", role=values_pb2.ColumnRole.embedding)],
            )
        )
    )
    return vt.id, vt.platform_vector_ref
