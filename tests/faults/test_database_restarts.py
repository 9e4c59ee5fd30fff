"""PostgreSQL restarted under the running server: the user's database mid-backfill and
mid-sync, the control plane while tasks run. The server reconnects by itself (it is never
restarted here) and nothing is lost."""

from __future__ import annotations

import asyncio
import time

from embedd.v1 import query_pb2

from tests.faults.stack import ROWS, Stack
from tests.harness import wait_for

# How long a restarted PostgreSQL stays down: a restart with a slow checkpoint, a failover.
DOWN_S = 3.0


async def _restart(cluster: object, down_s: float = DOWN_S) -> None:
    await asyncio.to_thread(cluster.stop)  # type: ignore[attr-defined]
    await asyncio.sleep(down_s)  # the fault itself: the database is away this long
    await asyncio.to_thread(cluster.start)  # type: ignore[attr-defined]


async def test_user_database_restarted_mid_backfill(stack: Stack) -> None:
    await stack.start_server()
    table = await stack.make_table(await stack.make_source(ROWS))
    task_id = await stack.backfill(table)
    await stack.wait_progress(task_id, ROWS // 4)
    began = time.monotonic()
    await _restart(stack.clusters.user)
    done = await stack.wait_task(task_id, "completed")
    print(
        f"user database restarted mid-backfill: task completed after {done['attempts']} attempt(s),"
        f" {time.monotonic() - began:.1f}s after the stop; " + await stack.settled(table)
    )


async def test_user_database_restarted_mid_sync(stack: Stack) -> None:
    await stack.start_server()
    table = await stack.synced_table(ROWS)
    stack.provider.latency_s = 0.1
    async with stack.owner() as conn:
        await conn.execute(f"UPDATE {table.source} SET title = title || ' v2'")

    async def under_way() -> bool:
        return ROWS // 10 <= await stack.rows_with(table, "%v2%") < ROWS // 2

    await wait_for(under_way, 30, what="the sync cycle to be under way")
    began = time.monotonic()
    await _restart(stack.clusters.user)
    stack.provider.latency_s = 0.02
    report = await stack.settled(table)
    async with stack.client() as c:  # queries work again too
        hits = await c.query.QueryVectorTable(
            query_pb2.QueryVectorTableRequest(vector_table_id=table.id, query="item 7", limit=3)
        )
    assert len(hits.results) == 3
    print(
        f"user database restarted mid-sync: settled {time.monotonic() - began:.1f}s after the stop; {report}"
    )


async def test_control_plane_restarted_while_tasks_run(stack: Stack) -> None:
    server = await stack.start_server()
    syncing = await stack.synced_table(ROWS)
    filling = await stack.make_table(await stack.make_source(ROWS))
    stack.provider.latency_s = 0.05
    async with stack.owner() as conn:
        await conn.execute(f"UPDATE {syncing.source} SET title = title || ' v2'")
    task_id = await stack.backfill(filling)
    await stack.wait_progress(task_id, ROWS // 5)
    began = time.monotonic()
    await _restart(stack.clusters.control)
    stack.provider.latency_s = 0.02
    done = await stack.wait_task(task_id, "completed")
    assert server.alive()
    reports = [await stack.settled(t) for t in (filling, syncing)]
    print(
        f"control plane restarted while tasks ran: the fill completed after {done['attempts']} attempt(s),"
        f" all settled {time.monotonic() - began:.1f}s after the stop, the same server process;"
        f" fill: {reports[0]}; sync: {reports[1]}"
    )
