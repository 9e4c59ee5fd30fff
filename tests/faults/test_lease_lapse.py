"""A lease that lapses while its holder is still alive: the holder is paused (SIGSTOP), its
lease lapses, another server takes the task over - ending the old holder's writer session in
the user's database - and the holder is continued (SIGCONT). It writes nothing more, and the
new holder finishes.

Two ways to wake up: paused past its own lease, the holder sees by its clock that the lease
ran out and stops by itself; paused for less than its own lease while the control plane saw
it lapse (its renewals lost in a partition, a clock step), it believes it still holds the
task and tries its next write - refused by the fence (owner and epoch in the control plane,
a closed session in the user's database)."""

from __future__ import annotations

import time

from embedd_server.devtools.serverproc import ServerProcess
from embedd_server.sinks.fence import Holder, table_key

from tests.faults.stack import ROWS, Stack, Table
from tests.harness import wait_for


def _lost_leases(stack: Stack, server: ServerProcess) -> list[str]:
    return [
        f"{r['event']}: {r.get('reason')}"
        for r in stack.log_records(server)
        if str(r.get("event", "")).startswith("lease lost")
    ]


async def _writer_session(stack: Stack, table: Table) -> int | None:
    """The pid of the session holding the table's task fence in the user's database."""
    async with stack.owner() as conn:
        pid: int | None = await conn.fetchval(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2"
            " AND classid::bigint = ($1::bigint & 4294967295) AND objid::bigint = ($2::bigint & 4294967295)",
            int(Holder.TASK),
            table_key(table.ref),
        )
    return pid


async def _session_alive(stack: Stack, pid: int) -> bool:
    async with stack.owner() as conn:
        return bool(await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid))


async def _take_over(
    stack: Stack, table: Table, task_id: str, holder: ServerProcess, other: ServerProcess
) -> int:
    """Pauses `holder` and waits until `other` holds the task and has written under it; checks
    that the old writer session was ended. Returns the rows done at the pause."""
    at_pause = (await stack.task_row(task_id))["rows_processed"]
    old_session = await _writer_session(stack, table)
    assert old_session is not None

    async def taken_over() -> bool:
        row = await stack.task_row(task_id)
        return stack.replica_of(row["lease_owner"]) is other and row["rows_processed"] > at_pause

    await wait_for(taken_over, 30, what="the other server to take the task over and get on with it")
    assert not await _session_alive(stack, old_session), "the old holder's writer session survived"
    assert await _writer_session(stack, table) not in (None, old_session)
    return int(at_pause)


async def test_a_holder_paused_past_its_lease_stops_by_itself(stack: Stack) -> None:
    servers = [await stack.start_server(), await stack.start_server()]
    table = await stack.make_table(await stack.make_source(ROWS))
    task_id = await stack.backfill(table)
    holder = stack.replica_of((await stack.wait_progress(task_id, 200))["lease_owner"])
    assert holder is not None
    [other] = [s for s in servers if s is not holder]
    stack.provider.latency_s = 0.1  # the new holder is still at work when the old one wakes
    holder.pause()
    paused_at = time.monotonic()
    at_pause = await _take_over(stack, table, task_id, holder, other)
    took_over_s = time.monotonic() - paused_at
    holder.resume()
    await wait_for(
        lambda: bool(_lost_leases(stack, holder)), 15, what="the paused holder to find its lease lost"
    )
    done = await stack.wait_task(task_id, "completed")
    assert done["attempts"] == 2 and holder.alive()
    print(
        f"lease lapse (paused past it): taken over {took_over_s:.1f}s after the pause (lease 3 s), at"
        f" {at_pause} rows, the old writer session ended; the continued holder logged"
        f" {_lost_leases(stack, holder)}; " + await stack.settled(table)
    )


async def test_a_holder_that_still_believes_in_its_lease_has_its_late_writes_refused(stack: Stack) -> None:
    holder = await stack.start_server(engine_lease_s="20")  # by its own clock the lease holds 20 s
    table = await stack.make_table(await stack.make_source(ROWS))
    task_id = await stack.backfill(table)
    await stack.wait_progress(task_id, 200)
    stack.provider.latency_s = 0.1  # still at work while the other server starts
    other = await stack.start_server()
    holder.pause()
    async with stack.control() as ctl:  # the control plane saw the lease lapse (renewals lost)
        await ctl.execute(
            "UPDATE tasks SET lease_expires_at = clock_timestamp() - interval '1 second' WHERE id = $1",
            task_id,
        )
    at_pause = await _take_over(stack, table, task_id, holder, other)
    holder.resume()
    await wait_for(
        lambda: bool(_lost_leases(stack, holder)), 15, what="the holder's late write to be refused"
    )
    refused = _lost_leases(stack, holder)
    assert not any("the lease lapsed" in r for r in refused), refused  # refused, not noticed by itself
    done = await stack.wait_task(task_id, "completed")
    assert done["attempts"] == 2 and holder.alive()
    print(
        f"lease lapse (the holder unaware): taken over at {at_pause} rows, the old writer session ended;"
        f" the continued holder's next write: {refused}; " + await stack.settled(table)
    )
