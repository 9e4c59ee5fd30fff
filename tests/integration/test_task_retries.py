"""Retries and resumes of fills, against a real control plane (no server: the test is the
only claimer): a failed attempt waits before it is claimed again, a backfill asked for after
a failed one starts from its checkpoint, a table never filled is left to that backfill, not
to the sync scheduler, and a fill never runs beside a sync cycle of its table."""

from __future__ import annotations

import secrets

import asyncpg
import pytest
from embedd_server.devtools.pg import LocalPostgres, create_database
from embedd_server.domain.models import VectorTable
from embedd_server.store.db import create_pool
from embedd_server.store.tasks import TaskStore
from embedd_server.store.vector_tables import VectorTableStore

from tests.harness import wait_for
from tests.integration.test_fencing import LEASE_S, Plane, plane  # the fixture, too

__all__ = ["plane"]


async def _fill(plane: Plane, vt: VectorTable, task_type: str = "backfill") -> str:
    task_id = f"task_{secrets.token_hex(8)}"
    await plane.tasks.enqueue(
        id=task_id, org_id=vt.org_id, env_id=vt.env_id, task_type=task_type, target_id=vt.id
    )
    return task_id


async def test_a_failed_attempt_waits_before_it_is_claimed_again(plane: Plane) -> None:
    """Each retry used to be claimed the moment the attempt before failed: a database that
    restarted for three seconds used up all three attempts within one."""
    vt = await plane.vector_table()
    await _fill(plane, vt)
    lease = await plane.tasks.claim("proc-a", LEASE_S)
    assert lease is not None
    await lease.fail("could not reach the database", retry=True, retry_in_s=60)
    assert await plane.tasks.claim("proc-a", LEASE_S) is None  # not before a minute
    await plane.pool.execute("UPDATE tasks SET not_before = clock_timestamp() WHERE id = $1", lease.task.id)
    again = await plane.tasks.claim("proc-a", LEASE_S)
    assert again is not None and again.task.id == lease.task.id and again.task.attempts == 2
    await again.release()  # a graceful stop hands it back at once
    assert (await plane.tasks.claim("proc-b", LEASE_S)) is not None


async def test_a_backfill_after_a_failed_one_resumes_its_checkpoint(plane: Plane) -> None:
    vt = await plane.vector_table()
    first = await _fill(plane, vt)
    lease = await plane.tasks.claim("proc-a", LEASE_S)
    assert lease is not None and lease.task.id == first
    await lease.checkpoint(
        last_pk="400", rows_processed=400, rows_total=1000, failures=[("17", "rejected")], live_table=vt.id
    )
    await lease.fail("openai is unreachable", retry=False)
    second = await _fill(plane, vt)
    resumed = await plane.tasks.claim("proc-a", LEASE_S)
    assert resumed is not None and resumed.task.id == second
    task = resumed.task
    assert (task.last_processed_pk, task.rows_processed, task.rows_total, task.rows_failed) == (
        "400",
        400,
        1000,
        1,
    )
    assert await plane.tasks.failures(second) == [("17", "rejected")]
    await resumed.complete_fill(vt.id, synced_rows=1000, total_rows=1000)
    third = await _fill(plane, vt)  # after a completed fill: a whole new pass
    fresh = await plane.tasks.claim("proc-a", LEASE_S)
    assert fresh is not None and fresh.task.id == third and fresh.task.last_processed_pk is None


async def test_a_failed_fill_of_another_kind_is_not_resumed(plane: Plane) -> None:
    """A re-backfill's checkpoint is in its swap table, not in the live one."""
    vt = await plane.vector_table()
    await _fill(plane, vt, "rebackfill")
    lease = await plane.tasks.claim("proc-a", LEASE_S)
    assert lease is not None
    await lease.checkpoint(last_pk="9", rows_processed=9, rows_total=10, failures=[], live_table=None)
    await lease.fail("x", retry=False)
    await _fill(plane, vt, "backfill")
    fresh = await plane.tasks.claim("proc-a", LEASE_S)
    assert fresh is not None and fresh.task.last_processed_pk is None and fresh.task.rows_processed == 0


async def test_a_table_whose_first_fill_failed_is_not_synced(plane: Plane) -> None:
    """The sync scheduler used to claim it (in `error`, due since never scheduled) and embed
    its missing rows - behind the user's back, and again beside the backfill they asked
    for next (the fault suite saw the provider paid twice for 700 rows)."""
    never = await plane.vector_table()
    await plane.pool.execute(
        "UPDATE vector_tables SET sync_status = 'error', last_synced_at = NULL WHERE id = $1", never.id
    )
    filled = await plane.vector_table()
    await plane.pool.execute("UPDATE vector_tables SET sync_status = 'error' WHERE id = $1", filled.id)
    claimed = await plane.tables.claim_due("proc-a", LEASE_S, 10)
    assert [c.table.id for c in claimed] == [filled.id]  # a filled table in error is retried


async def test_a_fill_waits_for_the_sync_cycle_running_on_its_table(plane: Plane) -> None:
    """A backfill (or re-backfill) asked for while a cycle runs used to start beside it: two
    writers on one table, and a swap could rename the table under the cycle's writes."""
    vt = await plane.vector_table()
    [cycle] = await plane.tables.claim_due("proc-a", LEASE_S, 10)
    await _fill(plane, vt)
    assert await plane.tasks.claim("proc-b", LEASE_S) is None
    await cycle.lease.finish(cursor=None, swept=True, counts=None)
    assert await plane.tasks.claim("proc-b", LEASE_S) is not None


async def test_a_holder_stalled_inside_a_transaction_cannot_keep_its_task(pg: LocalPostgres) -> None:
    """The fault suite saw a holder paused (SIGSTOP) in the middle of a checkpoint: its open
    transaction kept the task row locked, and the other server's claims (SKIP LOCKED) passed
    it by for as long as the holder slept. PostgreSQL now ends a transaction left idle."""
    name = f"stall_{secrets.token_hex(4)}"
    await create_database(pg.superuser_dsn(), name, with_vector=False)
    pool = await create_pool(
        pg.superuser_dsn(name, direct=True), min_size=1, max_size=4, idle_in_transaction_timeout_s=0.5
    )
    try:
        plane = Plane(pool, TaskStore(pool), VectorTableStore(pool))
        vt = await plane.vector_table()
        await _fill(plane, vt)
        stalled = await plane.tasks.claim("proc-a", LEASE_S)
        assert stalled is not None
        await plane.lapse(stalled.task.id)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)):
            async with stalled._fenced():  # the holder stops here, inside its transaction
                await wait_for(lambda: _claimed(plane), 10, what="another claim past the stalled holder")
    finally:
        await pool.close()
        admin = await asyncpg.connect(pg.superuser_dsn())
        try:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def _claimed(plane: Plane) -> bool:
    return await plane.tasks.claim("proc-b", LEASE_S) is not None
