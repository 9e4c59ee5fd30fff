"""Backfill under failure: a killed server resumes from its checkpoint with every row exactly
once, and two servers on one control plane never process the same task."""

from __future__ import annotations

import contextlib
import secrets
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from embedd.v1 import (
    connection_pb2,
    embedding_provider_pb2,
    sync_pb2,
    task_pb2,
    values_pb2,
    vector_table_pb2,
)
from embedd_client import EmbeddClient
from embedd_server import app
from embedd_server.config import load_settings
from embedd_server.devtools.pg import LocalPostgres, create_database
from embedd_server.devtools.serverproc import ServerProcess, create_org, new_secret_key
from qdrant_client import QdrantClient

from tests.conftest import UserDb
from tests.harness import UNTHROTTLED, Counter, CountingRegistry, counting, drop_control_plane, wait_for

BIG_ROWS = 20_000


@pytest.fixture(scope="module")
async def big_table(user_db: UserDb) -> AsyncIterator[str]:
    conn = await asyncpg.connect(user_db.owner_dsn)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS big_products (id bigint PRIMARY KEY, name text, description text);"
            "TRUNCATE big_products;"
            f"INSERT INTO big_products SELECT g, 'item ' || g, 'a thing numbered ' || g"
            f" FROM generate_series(1, {BIG_ROWS}) g;"
            "GRANT SELECT ON big_products TO embedd_user;"
        )
        yield "public.big_products"
        await conn.execute("DROP TABLE big_products")
    finally:
        await conn.close()


@pytest.fixture
async def control(pg: LocalPostgres, user_db: UserDb) -> AsyncIterator[str]:
    """A control plane of the test's own (its servers are the only ones to see its tasks).
    Afterwards the vector tables it made are dropped from the user's database, and it goes."""
    name = f"control_{secrets.token_hex(4)}"
    await create_database(pg.superuser_dsn(), name, with_vector=False)
    yield pg.superuser_dsn(name)
    await drop_control_plane(pg, name, user_db.owner_dsn)


async def make_table(
    client: EmbeddClient, user_db: UserDb, source: str, name: str, mode: str = "platform"
) -> str:
    conn = await client.connections.CreateConnection(
        connection_pb2.CreateConnectionRequest(
            provider=values_pb2.ConnectionProvider.postgresql,
            name="src",
            mode=values_pb2.Mode.Value.Value(mode),
            credentials=connection_pb2.PostgresCredentials(**user_db.credentials()),  # type: ignore[arg-type]
        )
    )
    emb = await client.embedding_providers.CreateEmbeddingProvider(
        embedding_provider_pb2.CreateEmbeddingProviderRequest(
            name="local", provider=values_pb2.EmbeddingProviderType.local, default_model="local-lexical-384"
        )
    )
    vt = await client.vector_tables.CreateVectorTable(
        vector_table_pb2.CreateVectorTableRequest(
            vector_table=vector_table_pb2.VectorTable(
                name=name,
                connection_id=conn.id,
                embedding_provider_id=emb.id,
                source_table=source,
                primary_key_column="id",
                columns=[
                    vector_table_pb2.Column(name="name", role=values_pb2.ColumnRole.embedding),
                    vector_table_pb2.Column(name="description", role=values_pb2.ColumnRole.embedding),
                ],
            )
        )
    )
    return vt.id


async def assert_exactly_once(user_db: UserDb, ref: str, source: str) -> None:
    conn = await asyncpg.connect(user_db.owner_dsn)
    try:
        total = await conn.fetchval(f"SELECT count(*) FROM {source}")
        row = await conn.fetchrow(
            f"SELECT count(*) AS n, count(DISTINCT pk_value) AS distinct_n,"
            f' count(*) FILTER (WHERE embedding IS NULL) AS no_vector FROM "{ref}"'
        )
        missing = await conn.fetchval(
            f"SELECT count(*) FROM {source} s"
            f' WHERE NOT EXISTS (SELECT 1 FROM "{ref}" v WHERE v.pk_value = s.id::text)'
        )
    finally:
        await conn.close()
    assert (row["n"], row["distinct_n"], row["no_vector"], missing) == (total, total, 0, 0)


def assert_exactly_once_in_qdrant(path: Path, alias: str, source_keys: set[str]) -> None:
    """Managed mode, read from the embedded Qdrant's folder once no server holds it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # local mode's warning about collections over 20,000 points
        client = QdrantClient(path=str(path))
    try:
        keys: list[str] = []
        offset: Any = None
        while True:
            points, offset = client.scroll(
                alias, limit=5000, offset=offset, with_payload=["pk"], with_vectors=True
            )
            keys += [p.payload["pk"] for p in points if p.payload and p.vector is not None]
            if offset is None:
                break
    finally:
        client.close()
    assert (len(keys), set(keys)) == (len(source_keys), source_keys)


async def _processed(ctl: asyncpg.Connection[Any], task_id: str, rows: int) -> bool:
    return bool(await ctl.fetchval("SELECT rows_processed >= $2 FROM tasks WHERE id = $1", task_id, rows))


async def test_killed_server_resumes_from_its_checkpoint(
    user_db: UserDb, big_table: str, control: str, mode: str, tmp_path: Path
) -> None:
    key = new_secret_key()
    # Small chunks and a short lease: many checkpoints to die between, a quick takeover. Managed
    # mode: the embedded Qdrant's folder passes from the killed server to the next one.
    settings = {"engine_chunk_rows": "20", "engine_inflight_chunks": "2", "engine_lease_s": "2"}
    if mode == "managed":
        settings["qdrant_path"] = str(tmp_path / "qdrant")
    first = ServerProcess(control, key, **settings).start()
    second: ServerProcess | None = None
    try:
        api_key = create_org(control, key)
        async with EmbeddClient(f"127.0.0.1:{first.port}", api_key) as c:
            vt_id = await make_table(c, user_db, big_table, "crash", mode)
            task = await c.sync.BackfillVectorTable(
                sync_pb2.BackfillVectorTableRequest(vector_table_id=vt_id)
            )
        ctl = await asyncpg.connect(control)
        try:
            await wait_for(lambda: _processed(ctl, task.task_id, 2000), 10, what="2,000 rows")
            first.kill()  # SIGKILL: no goodbye, the lease just lapses
            at_kill = await ctl.fetchrow("SELECT * FROM tasks WHERE id = $1", task.task_id)
            ref = await ctl.fetchval("SELECT platform_vector_ref FROM vector_tables WHERE id = $1", vt_id)
        finally:
            await ctl.close()
        assert at_kill["status"] == "running", "the backfill finished before the kill; make BIG_ROWS larger"
        assert 0 < at_kill["rows_processed"] < BIG_ROWS
        second = ServerProcess(control, key, **settings).start()
        async with EmbeddClient(f"127.0.0.1:{second.port}", api_key) as c:
            async for event in c.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id)):
                if event.done:
                    final = event.task
                    break
        assert final.status == values_pb2.TaskStatus.completed, final
        assert final.attempts == 2 and final.progress.rows_processed == BIG_ROWS
        if mode == "platform":
            await assert_exactly_once(user_db, ref, big_table)
        else:
            second.stop()  # it holds the folder
            assert_exactly_once_in_qdrant(tmp_path / "qdrant", ref, {str(n) for n in range(1, BIG_ROWS + 1)})
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def test_two_servers_never_process_the_same_task(user_db: UserDb, control: str) -> None:
    key = new_secret_key()
    counts: list[Counter] = []
    services: list[app.Service] = []
    scope = contextlib.ExitStack()
    for _ in range(2):
        svc = await app.start(
            load_settings(
                database_url=control,
                grpc_host="127.0.0.1",
                grpc_port=0,
                secret_key=key,
                engine_max_tasks=1,
                engine_chunk_rows=50,
            ),
            embedders=CountingRegistry,
        )
        services.append(svc)
        counts.append(scope.enter_context(counting(svc, delay_s=0.002)))  # slowed: let the other in
    try:
        org_id = await services[0].orgs.create_org("two", requests_per_minute=UNTHROTTLED)
        _, api_key = await services[0].orgs.create_api_key(org_id, "k", "full")
        async with EmbeddClient(f"127.0.0.1:{services[0].port}", api_key) as c:
            vt_ids = [await make_table(c, user_db, "public.products", f"t{i}") for i in range(6)]
            tasks = [
                await c.sync.BackfillVectorTable(sync_pb2.BackfillVectorTableRequest(vector_table_id=v))
                for v in vt_ids
            ]
            for task in tasks:
                async for event in c.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id)):
                    if event.done:
                        assert event.task.status == values_pb2.TaskStatus.completed
                        assert event.task.attempts == 1  # claimed once, by one process
                        break
        rows = 500 * len(vt_ids)
        done = [c.texts for c in counts]
        assert sum(done) == rows, done  # no row embedded twice
        assert done[0] > 0 and done[1] > 0, done  # both processes took work
    finally:
        scope.close()
        for svc in services:
            await svc.stop(1.0)


async def test_crash_during_rebackfill_keeps_the_live_table_serving(
    user_db: UserDb, big_table: str, control: str
) -> None:
    key = new_secret_key()
    settings = {"engine_chunk_rows": "50", "engine_inflight_chunks": "2", "engine_lease_s": "2"}
    first = ServerProcess(control, key, **settings).start()
    second: ServerProcess | None = None
    try:
        api_key = create_org(control, key)
        async with EmbeddClient(f"127.0.0.1:{first.port}", api_key) as c:
            vt_id = await make_table(c, user_db, big_table, "swap-crash")
            task = await c.sync.BackfillVectorTable(
                sync_pb2.BackfillVectorTableRequest(vector_table_id=vt_id)
            )
            async for event in c.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id)):
                if event.done:
                    break
            updated = await c.vector_tables.UpdateVectorTable(
                vector_table_pb2.UpdateVectorTableRequest(
                    vector_table=vector_table_pb2.VectorTable(
                        id=vt_id,
                        columns=[
                            vector_table_pb2.Column(
                                name="name", role=values_pb2.ColumnRole.embedding, name_prefix="Item: "
                            ),
                            vector_table_pb2.Column(name="description", role=values_pb2.ColumnRole.embedding),
                        ],
                    ),
                )
            )
            assert updated.sync_status == values_pb2.SyncStatus.pending_rebackfill
            rebackfill = (
                await c.tasks.ListTasks(
                    task_pb2.ListTasksRequest(target_id=vt_id, status=values_pb2.TaskStatus.pending)
                )
            ).tasks
        ctl = await asyncpg.connect(control)
        try:
            task_id = (
                rebackfill[0].id
                if rebackfill
                else await ctl.fetchval(
                    "SELECT id FROM tasks WHERE target_id = $1 AND task_type = 'rebackfill'", vt_id
                )
            )
            await wait_for(lambda: _processed(ctl, task_id, 2000), 10, what="2,000 rows")
            first.kill()
            at_kill = await ctl.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
            ref = await ctl.fetchval("SELECT platform_vector_ref FROM vector_tables WHERE id = $1", vt_id)
        finally:
            await ctl.close()
        assert at_kill["status"] == "running" and 0 < at_kill["rows_processed"] < BIG_ROWS
        owner = await asyncpg.connect(user_db.owner_dsn)
        try:  # the live table still serves every row, with the old text
            live = await owner.fetchrow(
                "SELECT count(*) AS n, count(*) FILTER (WHERE embedded_text LIKE 'Item: %') AS new"
                f' FROM "{ref}"'
            )
            assert (live["n"], live["new"]) == (BIG_ROWS, 0)
        finally:
            await owner.close()
        second = ServerProcess(control, key, **settings).start()
        async with EmbeddClient(f"127.0.0.1:{second.port}", api_key) as c:
            async for event in c.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id)):
                if event.done:
                    final = event.task
                    break
            vt = await c.vector_tables.GetVectorTable(
                vector_table_pb2.GetVectorTableRequest(vector_table_id=vt_id)
            )
        assert final.status == values_pb2.TaskStatus.completed and final.attempts == 2, final
        assert vt.sync_status == values_pb2.SyncStatus.synced
        await assert_exactly_once(user_db, ref, big_table)
        owner = await asyncpg.connect(user_db.owner_dsn)
        try:
            new = await owner.fetchval(f"SELECT count(*) FROM \"{ref}\" WHERE embedded_text LIKE 'Item: %'")
            leftovers = await owner.fetchval(
                "SELECT count(*) FROM pg_class WHERE relname IN ($1, $2)", f"{ref}_swap", f"{ref}_old"
            )
        finally:
            await owner.close()
        assert new == BIG_ROWS and leftovers == 0
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def test_graceful_stop_hands_the_task_back(user_db: UserDb, big_table: str, control: str) -> None:
    """A server stopped mid-backfill (a deploy) releases its task at once: pending again, the
    interrupted attempt not counted, resumed from the checkpoint by the next server."""
    key = new_secret_key()

    def settings() -> Any:
        return load_settings(
            database_url=control, grpc_host="127.0.0.1", grpc_port=0, secret_key=key, engine_chunk_rows=20
        )

    first = await app.start(settings())
    org_id = await first.orgs.create_org("deploy", requests_per_minute=UNTHROTTLED)
    _, api_key = await first.orgs.create_api_key(org_id, "k", "full")
    async with EmbeddClient(f"127.0.0.1:{first.port}", api_key) as c:
        vt_id = await make_table(c, user_db, big_table, "deploy")
        task = await c.sync.BackfillVectorTable(sync_pb2.BackfillVectorTableRequest(vector_table_id=vt_id))
    ctl = await asyncpg.connect(control)
    try:
        await wait_for(lambda: _processed(ctl, task.task_id, 1000), 10, what="1,000 rows")
        await first.stop(1.0)
        released = await ctl.fetchrow("SELECT * FROM tasks WHERE id = $1", task.task_id)
    finally:
        await ctl.close()
    assert released["status"] == "pending" and released["attempts"] == 0 and released["lease_owner"] is None
    assert 0 < released["rows_processed"] < BIG_ROWS and released["last_processed_pk"]
    second = await app.start(settings())
    try:
        async with EmbeddClient(f"127.0.0.1:{second.port}", api_key) as c:
            async for event in c.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id)):
                if event.done:
                    final = event.task
                    break
    finally:
        await second.stop(1.0)
    assert final.status == values_pb2.TaskStatus.completed and final.attempts == 1
    ctl = await asyncpg.connect(control)
    try:
        ref = await ctl.fetchval("SELECT platform_vector_ref FROM vector_tables WHERE id = $1", vt_id)
    finally:
        await ctl.close()
    await assert_exactly_once(user_db, ref, big_table)
