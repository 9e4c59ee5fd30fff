"""Fencing, against a real PostgreSQL: once a lease lapsed and was claimed again, every write
of the old holder is refused - in the control plane (owner and epoch, checked in the
transaction of the write) and in the user's database (its writer session is ended) - and a
swap never commits for a holder that lost its lease, nor has to be rebuilt when its holder
dies after committing it. Each test runs on a control-plane database of its own, with no
server: the test is the only claimer."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import numpy as np
import pytest
from embedd_server.devtools.pg import LocalPostgres, create_database
from embedd_server.domain.credentials import PgCredentials
from embedd_server.domain.leases import LeaseLost
from embedd_server.domain.models import Task, VectorTable
from embedd_server.domain.vector_tables import ColumnSpec, VectorTableSpec
from embedd_server.engine.backfill import BackfillJob, Progress
from embedd_server.engine.rebackfill import RebackfillJob
from embedd_server.network_policy import PERMISSIVE
from embedd_server.providers.base import EmbedResult, InputType
from embedd_server.providers.local import LexicalEmbedder
from embedd_server.sinks.fence import Holder, evict_all, take_over
from embedd_server.sinks.pgvector import PgVectorTable, VectorRow, encode_vectors, register_vector_codec
from embedd_server.sinks.pgvector_store import PgVectorStore
from embedd_server.sources.postgres import connect
from embedd_server.sources.reader import SourceReader
from embedd_server.store.db import create_pool
from embedd_server.store.tasks import TaskLease, TaskStore
from embedd_server.store.vector_tables import VectorTableStore

from tests.conftest import UserDb

LEASE_S = 30.0


@dataclasses.dataclass
class Plane:
    pool: asyncpg.Pool[Any]
    tasks: TaskStore
    tables: VectorTableStore

    async def vector_table(
        self, spec: VectorTableSpec | None = None, ref: str = "embedd_vt_x"
    ) -> VectorTable:
        """A vector table row (and the rows it references), filled once and synced."""
        org, env, conn, emb, vt = (f"{p}_{secrets.token_hex(8)}" for p in ("org", "env", "conn", "emb", "vt"))
        spec = spec or _spec()
        async with self.pool.acquire() as c:
            await c.execute("INSERT INTO orgs (id, name) VALUES ($1, 'o')", org)
            await c.execute(
                "INSERT INTO environments (id, org_id, name, is_default) VALUES ($1, $2, 'prod', true)",
                env,
                org,
            )
            await c.execute(
                "INSERT INTO connections (id, org_id, env_id, name, provider, mode, credentials_enc)"
                " VALUES ($1, $2, $3, 'c', 'postgresql', 'platform', '\\x00')",
                conn,
                org,
                env,
            )
            await c.execute(
                "INSERT INTO embedding_providers (id, org_id, env_id, name, provider, default_model)"
                " VALUES ($1, $2, $3, 'e', 'local', 'local-lexical-384')",
                emb,
                org,
                env,
            )
        made = await self.tables.create(
            id=vt,
            org_id=org,
            env_id=env,
            name="t",
            connection_id=conn,
            embedding_provider_id=emb,
            spec=spec,
            platform_vector_ref=ref,
        )
        await self.pool.execute(
            "UPDATE vector_tables SET sync_status = 'synced', last_synced_at = clock_timestamp()"
            " WHERE id = $1",
            vt,
        )
        return made

    async def claimed(self, vt: VectorTable, owner: str = "proc-a") -> TaskLease:
        await self.tasks.enqueue(
            id=f"task_{secrets.token_hex(8)}",
            org_id=vt.org_id,
            env_id=vt.env_id,
            task_type="backfill",
            target_id=vt.id,
        )
        lease = await self.tasks.claim(owner, LEASE_S)
        assert lease is not None and lease.task.target_id == vt.id
        return lease

    async def lapse(self, task_id: str) -> None:
        """The holder stalled (SIGSTOP, GC, partition) past its lease."""
        await self.pool.execute(
            "UPDATE tasks SET lease_expires_at = clock_timestamp() - interval '1 second' WHERE id = $1",
            task_id,
        )


def _spec(**changes: Any) -> VectorTableSpec:
    base = VectorTableSpec(
        source_schema="public",
        source_table="products",
        primary_key_column="id",
        embedding_model="local-lexical-384",
        embedding_dimensions=384,
        columns=(ColumnSpec("name", "embedding", 1),),
        pk_type="integer",
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
async def plane(pg: LocalPostgres) -> AsyncIterator[Plane]:
    name = f"fence_{secrets.token_hex(4)}"
    await create_database(pg.superuser_dsn(), name, with_vector=False)
    pool = await create_pool(pg.superuser_dsn(name, direct=True), min_size=1, max_size=4)
    try:
        yield Plane(pool, TaskStore(pool), VectorTableStore(pool))
    finally:
        await pool.close()
        admin = await asyncpg.connect(pg.superuser_dsn())
        try:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def _table_row(plane: Plane, vt_id: str) -> asyncpg.Record:
    row = await plane.pool.fetchrow("SELECT * FROM vector_tables WHERE id = $1", vt_id)
    assert row is not None
    return row


# -- the control plane ---------------------------------------------------------------------


async def test_a_reclaimed_task_refuses_every_write_of_its_old_holder(plane: Plane) -> None:
    """The old holder and the new one even share an owner string (a restarted process that
    reuses it, or a clock-confused replica): the epoch tells them apart."""
    vt = await plane.vector_table()
    old = await plane.claimed(vt, owner="proc-a")
    await old.checkpoint(last_pk="10", rows_processed=10, rows_total=100, failures=[], live_table=vt.id)
    await plane.lapse(old.task.id)
    new = await plane.tasks.claim("proc-a", LEASE_S)
    assert new is not None and new.task.id == old.task.id and new.token.epoch == old.token.epoch + 1
    before = await _table_row(plane, vt.id)

    writes = {
        "renew": old.renew(),
        "start": old.start(vt.id),
        "checkpoint": old.checkpoint(
            last_pk="99", rows_processed=99, rows_total=100, failures=[("5", "x")], live_table=vt.id
        ),
        "complete_fill": old.complete_fill(vt.id, synced_rows=12345, total_rows=12345),
        "complete_swap": old.complete_swap(vt.id, _spec(embedding_dimensions=8), synced_rows=1, total_rows=1),
        "complete": old.complete(),
        "fail": old.fail("late failure", retry=False),
    }
    for name, write in writes.items():
        with pytest.raises(LeaseLost):
            await write
        assert name  # every one refused
    task = await plane.pool.fetchrow("SELECT * FROM tasks WHERE id = $1", old.task.id)
    after = await _table_row(plane, vt.id)
    assert (task["status"], task["last_processed_pk"], task["rows_processed"], task["lease_epoch"]) == (
        "running",
        "10",
        10,
        new.token.epoch,
    )
    assert not await plane.pool.fetchval("SELECT count(*) FROM task_failures WHERE task_id = $1", old.task.id)
    assert dict(after) == dict(before)  # nothing of the late writes reached the table
    await new.complete_fill(vt.id, synced_rows=100, total_rows=100)  # the new holder's do
    assert (await _table_row(plane, vt.id))["synced_rows"] == 100


async def test_a_deleted_task_refuses_its_holder(plane: Plane) -> None:
    vt = await plane.vector_table()
    lease = await plane.claimed(vt)
    assert await plane.tables.delete(vt.org_id, vt.env_id, vt.id)
    with pytest.raises(LeaseLost):
        await lease.checkpoint(last_pk="1", rows_processed=1, rows_total=1, failures=[], live_table=vt.id)
    with pytest.raises(LeaseLost):
        await lease.renew()


async def test_a_reclaimed_sync_cycle_refuses_its_late_results(plane: Plane) -> None:
    vt = await plane.vector_table()
    [old] = await plane.tables.claim_due("proc-a", LEASE_S, 10)
    await plane.pool.execute(
        "UPDATE vector_tables SET sync_lease_expires_at = clock_timestamp() - interval '1 second'"
        " WHERE id = $1",
        vt.id,
    )
    [new] = await plane.tables.claim_due("proc-a", LEASE_S, 10)
    assert new.lease.token.epoch == old.lease.token.epoch + 1
    before = await _table_row(plane, vt.id)
    for write in (
        old.lease.renew(),
        old.lease.finish(cursor="late", swept=True, counts=(7, 7)),
        old.lease.fail("late", max_backoff_s=60),
    ):
        with pytest.raises(LeaseLost):
            await write
    assert dict(await _table_row(plane, vt.id)) == dict(before)
    await new.lease.finish(cursor=None, swept=True, counts=(3, 3))
    row = await _table_row(plane, vt.id)
    assert row["synced_rows"] == 3 and row["sync_lease_owner"] is None
    assert row["last_synced_at"] == new.lease.claimed_at  # the control plane's clock, at the claim


# -- the user's database -----------------------------------------------------------------------


def _creds(user_db: UserDb) -> PgCredentials:
    return PgCredentials(user_db.host, user_db.port, user_db.database, user_db.user, user_db.password)


async def _ours() -> None:
    return None


async def _not_ours() -> None:
    raise LeaseLost("taken over")


async def test_a_new_holder_ends_the_old_holders_session(user_db: UserDb) -> None:
    ref = f"embedd_vt_fence_{secrets.token_hex(4)}"
    target = PgVectorTable("public", ref, 3)
    old, new = (
        await connect(_creds(user_db), policy=PERMISSIVE),
        await connect(_creds(user_db), policy=PERMISSIVE),
    )
    try:
        await register_vector_codec(old)
        await take_over(old, ref, Holder.TASK, _ours)
        await target.create(old, with_index=False)
        # a stale holder may not take over: it checks its lease before ending anyone's session
        with pytest.raises(LeaseLost):
            await take_over(new, ref, Holder.TASK, _not_ours)
        assert not old.is_closed()
        await take_over(new, ref, Holder.TASK, _ours)  # the lease is the new holder's now
        row = VectorRow("1", encode_vectors(np.ones((1, 3), dtype=np.float32))[0], "t", "{}", "h")
        with pytest.raises((asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError)):
            await target.write(old, [row], upsert=False)  # the late write is refused
        assert await target.count(new) == 0
        # a sync cycle's lock is another key: a fill does not end a running cycle
        await take_over(new, ref, Holder.SYNC, _ours)
        dropper = await connect(_creds(user_db), policy=PERMISSIVE)
        await evict_all(dropper, ref)  # a delete ends every holder's session
        assert await _closed(new)
        await dropper.close()
    finally:
        for c in (old, new):
            if not c.is_closed():
                await c.close()
        owner = await asyncpg.connect(user_db.owner_dsn)
        try:
            await owner.execute(f'DROP TABLE IF EXISTS "{ref}"')
        finally:
            await owner.close()


async def _closed(conn: asyncpg.Connection[Any]) -> bool:
    try:
        await conn.fetchval("SELECT 1")
    except (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError):
        return True
    return False


# -- the swap ---------------------------------------------------------------------------------


class _NoEmbedder:
    """An embedder that must not be called (the vectors are reused or the swap is recorded)."""

    model = "local-lexical-384"
    dimensions = 384

    async def embed(self, texts: Sequence[str], input_type: InputType) -> EmbedResult:
        raise AssertionError("nothing may be embedded here")

    async def aclose(self) -> None:
        return None


SwapCase = tuple[str, str, Any, Any]  # source, vector table name, reader, writer


@pytest.fixture
async def swap_case(user_db: UserDb) -> AsyncIterator[SwapCase]:
    """A source table of 30 rows, the name of its vector table, a reader and a writer."""
    source, ref = f"swap_src_{secrets.token_hex(3)}", f"embedd_vt_swap_{secrets.token_hex(3)}"
    owner = await asyncpg.connect(user_db.owner_dsn)
    await owner.execute(
        f"CREATE TABLE {source} (id int PRIMARY KEY, name text, price int);"
        f"INSERT INTO {source} SELECT g, 'thing ' || g, g FROM generate_series(1, 30) g;"
        f"GRANT SELECT ON {source} TO embedd_user;"
    )
    reader, writer = (
        await connect(_creds(user_db), policy=PERMISSIVE),
        await connect(_creds(user_db), policy=PERMISSIVE),
    )
    await register_vector_codec(writer)
    try:
        yield source, ref, reader, writer
    finally:
        await asyncio.gather(reader.close(), writer.close())
        for name in (ref, f"{ref}_swap", f"{ref}_old"):
            await owner.execute(f'DROP TABLE IF EXISTS "{name}"')
        await owner.execute(f"DROP TABLE {source}")
        await owner.close()


async def _filled(case: SwapCase) -> VectorTable:
    """The live vector table, filled by a backfill."""
    source, ref, reader, writer = case
    spec = _spec(source_table=source)
    vt = VectorTable(
        id="vt_x",
        org_id="o",
        env_id="e",
        name="t",
        connection_id="c",
        embedding_provider_id="p",
        spec=spec,
        sync_status="synced",
        platform_vector_ref=ref,
        created_at=None,  # type: ignore[arg-type]
        synced_rows=0,
        total_rows=0,
        last_synced_at=None,
        last_error=None,
        last_error_at=None,
    )
    task = Task(
        id="task_x",
        org_id="o",
        env_id="e",
        task_type="backfill",
        target_id="vt_x",
        status="running",
        attempts=1,
        max_attempts=3,
        last_error=None,
        last_processed_pk=None,
        rows_processed=0,
        rows_total=0,
        rows_failed=0,
        lease_owner="a",
        created_at=None,
        started_at=None,
        finished_at=None,  # type: ignore[arg-type]
    )

    async def checkpoint(_: Progress) -> None:
        return None

    await BackfillJob(
        task=task,
        spec=vt.spec,
        store=PgVectorStore(vt.spec, vt.platform_vector_ref, writer, reader=reader),
        source=SourceReader(vt.spec, reader),
        embedder=LexicalEmbedder(384),
        checkpoint=checkpoint,
    ).run()
    return vt


def _rebackfill(vt: VectorTable, reader: Any, writer: Any, confirm: Any) -> RebackfillJob:
    async def checkpoint(_: Progress) -> None:
        return None

    new_spec = dataclasses.replace(
        vt.spec, columns=(*vt.spec.columns, ColumnSpec("price", "metadata", None, None, "integer"))
    )
    task = Task(
        id="task_y",
        org_id="o",
        env_id="e",
        task_type="rebackfill",
        target_id=vt.id,
        status="running",
        attempts=1,
        max_attempts=3,
        last_error=None,
        last_processed_pk=None,
        rows_processed=0,
        rows_total=0,
        rows_failed=0,
        lease_owner="a",
        created_at=None,
        started_at=None,
        finished_at=None,  # type: ignore[arg-type]
    )
    return RebackfillJob(
        task=task,
        live_spec=vt.spec,
        spec=new_spec,
        live=PgVectorStore(vt.spec, vt.platform_vector_ref, writer, reader=reader),
        source=SourceReader(new_spec, reader),
        embedder=_NoEmbedder(),
        checkpoint=checkpoint,
        confirm=confirm,
    )


async def test_a_holder_that_lost_its_lease_never_commits_the_swap(swap_case: SwapCase) -> None:
    _, _, reader, writer = swap_case
    vt = await _filled(swap_case)
    job = _rebackfill(vt, reader, writer, _not_ours)
    with pytest.raises(LeaseLost):
        await job.run()
    live = PgVectorTable("public", vt.platform_vector_ref, 384)
    swap = PgVectorTable("public", f"{vt.platform_vector_ref}_swap", 384)
    assert await live.exists(writer) and await swap.exists(writer)  # rolled back: nothing renamed
    assert await live.marker(writer) is None
    assert '"price"' not in await writer.fetchval(f"SELECT metadata::text FROM {live.qualified} LIMIT 1")


async def test_a_swap_committed_by_a_holder_that_died_is_recorded_not_rebuilt(swap_case: SwapCase) -> None:
    _, _, reader, writer = swap_case
    vt = await _filled(swap_case)
    first = _rebackfill(vt, reader, writer, _ours)
    assert await first.run() == (30, 30)
    # ... and the holder died before the control plane heard of it: the row still shows the
    # old spec and the pending one. The next holder finds the swap done and only counts.
    old = PgVectorTable("public", f"{vt.platform_vector_ref}_old", 384)
    await old.create(writer, with_index=False)  # as if it died before dropping `_old`
    again = _rebackfill(vt, reader, writer, _ours)

    async def no_swap(*_: object) -> None:
        raise AssertionError("the swap must not run again")

    again.live.swap_in = no_swap  # type: ignore[method-assign]
    assert await again.run() == (30, 30)
    assert not await old.exists(writer)
    live = PgVectorTable("public", vt.platform_vector_ref, 384)
    meta = json.loads(
        await writer.fetchval(f"SELECT metadata::text FROM {live.qualified} WHERE pk_value = '3'")
    )
    assert meta == {"name": "thing 3", "price": 3}


async def test_upserts_into_targets_of_different_dimensions_on_one_connection(user_db: UserDb) -> None:
    """The staging table is shaped per target (a re-backfill writes a live and a swap table
    of other dimensions through one connection)."""
    refs = [f"embedd_vt_stage_{secrets.token_hex(3)}_{d}" for d in (3, 5)]
    conn = await connect(_creds(user_db), policy=PERMISSIVE)
    try:
        await register_vector_codec(conn)
        for ref, dims in zip(refs, (3, 5), strict=True):
            target = PgVectorTable("public", ref, dims)
            await target.create(conn, with_index=False)
            row = VectorRow("1", encode_vectors(np.ones((1, dims), dtype=np.float32))[0], "t", "{}", "h")
            await target.write(conn, [row], upsert=True)
            assert await target.count(conn) == 1
    finally:
        for ref in refs:
            await conn.execute(f'DROP TABLE IF EXISTS "{ref}"')
        await conn.close()
