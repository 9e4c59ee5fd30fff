"""kill -9 of the server: during a backfill, during a sync cycle, and between a swap's rename
(committed in the user's database) and its record in the control plane. Another server
finishes the work; every row ends up exactly once."""

from __future__ import annotations

import json
import time

import asyncpg
from embedd.v1 import vector_table_pb2
from embedd_server.domain.vector_tables import VectorTableSpec, swap_marker

from tests.faults.stack import COLUMNS, ROWS, Stack, Table
from tests.harness import wait_for


async def test_kill_during_backfill(stack: Stack) -> None:
    first = await stack.start_server()
    table = await stack.make_table(await stack.make_source(ROWS))
    task_id = await stack.backfill(table)
    await stack.wait_progress(task_id, ROWS // 4)
    first.kill()
    killed_at = time.monotonic()
    at_kill = await stack.task_row(task_id)
    assert at_kill["status"] == "running" and at_kill["rows_processed"] < ROWS, dict(at_kill)
    embedded_before = stack.provider.counters.inputs
    await stack.start_server()
    done = await stack.wait_task(task_id, "completed")
    took = time.monotonic() - killed_at
    assert done["attempts"] == 2
    # Resumed from the checkpoint: only the chunks in flight at the kill were embedded twice.
    again = embedded_before + (stack.provider.counters.inputs - embedded_before) - ROWS
    assert 0 <= again <= 2 * 50 + 50, again
    print(
        f"kill during backfill: resumed at {at_kill['rows_processed']}, done {took:.1f}s after the kill,"
        f" {again} rows embedded twice; " + await stack.settled(table)
    )


async def test_kill_during_sync_cycle(stack: Stack) -> None:
    first = await stack.start_server()
    table = await stack.synced_table(ROWS)
    stack.provider.latency_s = 0.1  # a cycle that re-embeds every row lasts several seconds
    async with stack.owner() as conn:
        await conn.execute(f"UPDATE {table.source} SET title = title || ' v2'")

    async def halfway() -> bool:
        return ROWS // 5 <= await stack.rows_with(table, "%v2%") < ROWS // 2

    await wait_for(halfway, 30, what="the sync cycle to be under way")
    first.kill()
    killed_at = time.monotonic()
    async with stack.control() as ctl:
        row = await ctl.fetchrow(
            "SELECT sync_lease_owner, last_synced_at FROM vector_tables WHERE id = $1", table.id
        )
    assert stack.replica_of(row["sync_lease_owner"]) is first, "the cycle was not running"
    partial = await stack.rows_with(table, "%v2%")
    stack.provider.latency_s = 0.02
    await stack.start_server()
    report = await stack.settled(table)
    async with stack.control() as ctl:
        after = await ctl.fetchval("SELECT last_synced_at FROM vector_tables WHERE id = $1", table.id)
    assert after > row["last_synced_at"]
    print(
        f"kill during a sync cycle: {partial}/{ROWS} rows applied at the kill, settled"
        f" {time.monotonic() - killed_at:.1f}s after it; {report}"
    )


async def _marker(stack: Stack, table: Table) -> str | None:
    async with stack.owner() as conn:
        value: str | None = await conn.fetchval(
            "SELECT obj_description(to_regclass($1), 'pg_class')", table.ref
        )
    return value


_RECORD_LOCK = 729_113
_HOLD_THE_RECORD = f"""
CREATE OR REPLACE FUNCTION hold_the_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({_RECORD_LOCK});
    RETURN NEW;
END $$;
CREATE TRIGGER hold_the_record BEFORE UPDATE ON vector_tables FOR EACH ROW
    WHEN (OLD.pending_spec IS NOT NULL AND NEW.pending_spec IS NULL)
    EXECUTE FUNCTION hold_the_record();
"""


async def test_kill_between_the_swap_and_its_record(stack: Stack) -> None:
    """The window between the rename (committed in the user's database) and the control
    plane's update is held open without a hook in the server: a trigger the test puts on the
    control plane's vector_tables makes the update that clears pending_spec - the swap's
    record, and nothing else - wait for an advisory lock the test holds. (A row lock would
    not do: every progress event of the re-backfill writes the row too.)"""
    first = await stack.start_server()
    table = await stack.synced_table(ROWS)
    columns = [vector_table_pb2.Column(**{**_fields(COLUMNS[0]), "name_prefix": "Item: "}), *COLUMNS[1:]]
    await stack.update_columns(table, columns)
    task_id = await stack.fill_task(table)
    await stack.wait_progress(task_id, 1)  # past its start (which writes the row)
    async with stack.control() as ctl:
        pending = await ctl.fetchval("SELECT pending_spec FROM vector_tables WHERE id = $1", table.id)
    marker = swap_marker(VectorTableSpec.from_json(json.loads(pending)))
    lock = await asyncpg.connect(stack.control_dsn)
    try:
        await lock.execute(_HOLD_THE_RECORD)
        await lock.execute("SELECT pg_advisory_lock($1)", _RECORD_LOCK)

        async def in_the_window() -> bool:
            # pg_locks, not pg_stat_activity: inside a transaction the latter is a snapshot taken
            # at its first read, blind to a connection the server's pool opened after it
            waiting = await lock.fetchval(  # the completing transaction, blocked by our lock
                "SELECT count(*) FROM pg_locks WHERE NOT granted"
                " AND pg_backend_pid() = ANY(pg_blocking_pids(pid))"
            )
            return bool(waiting) and await _marker(stack, table) == marker

        await wait_for(in_the_window, 60, what="the swap to commit and its record to wait")
        first.kill()
        killed_at = time.monotonic()
    finally:
        # the lock first: the waiting update holds vector_tables, which DROP TRIGGER needs
        await lock.execute("SELECT pg_advisory_unlock_all()")
        await lock.execute("DROP TRIGGER IF EXISTS hold_the_record ON vector_tables")
        await lock.close()
    row = await stack.task_row(task_id)
    async with stack.control() as ctl:
        vt = await ctl.fetchrow("SELECT pending_spec, sync_status FROM vector_tables WHERE id = $1", table.id)
    assert row["status"] == "running" and vt["pending_spec"] is not None  # the record never happened
    async with stack.owner() as conn:
        swap_left = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{table.ref}_swap")
    assert not swap_left  # ... but the swap did
    stack.provider.reset_counters()
    await stack.start_server()
    done = await stack.wait_task(task_id, "completed")
    assert done["attempts"] == 2
    assert stack.provider.counters.inputs == 0, "the swapped-in table was built again"
    assert await stack.rows_with(table, "Item: %") == ROWS
    print(
        f"kill between the swap and its record: recorded by the next server"
        f" {time.monotonic() - killed_at:.1f}s after the kill, nothing embedded again; "
        + await stack.settled(table)
    )


def _fields(column: vector_table_pb2.Column) -> dict[str, object]:
    return {f.name: v for f, v in column.ListFields()}
