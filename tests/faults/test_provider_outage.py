"""The embedding provider down for longer than the retry budget: the task fails, saying why,
and the table shows it; once the provider is back, asking for the backfill again resumes it
from its checkpoint (the rows already done are not paid for twice)."""

from __future__ import annotations

import time

from embedd.v1 import sync_pb2, values_pb2

from tests.faults.stack import ROWS, Stack


async def test_provider_down_longer_than_the_retry_budget(stack: Stack) -> None:
    # A short budget (2 attempts per request, task retries 0.5 s then 2 s apart) so that
    # "longer than the budget" is a few seconds here; production's is minutes (config.py).
    await stack.start_server(provider_max_attempts="2", engine_retry_backoff_s="0.5")
    table = await stack.make_table(await stack.make_source(ROWS))
    task_id = await stack.backfill(table)
    await stack.wait_progress(task_id, ROWS // 4)
    await stack.provider.stop()
    down_at = time.monotonic()
    failed = await stack.wait_task(task_id, "failed", within=60)
    failed_after = time.monotonic() - down_at
    assert failed["attempts"] == 3
    assert "unreachable" in failed["last_error"] and stack.provider.base_url in failed["last_error"], failed
    async with stack.client() as c:
        status = await c.sync.GetSyncStatus(sync_pb2.GetSyncStatusRequest(vector_table_id=table.id))
    assert status.sync_status == values_pb2.SyncStatus.error and status.last_error == failed["last_error"]
    done_before = failed["rows_processed"]
    assert 0 < done_before < ROWS

    await stack.provider.start()  # back, on the same address
    stack.provider.reset_counters()
    again = await stack.backfill(table)
    done = await stack.wait_task(again, "completed")
    assert done["attempts"] == 1
    assert stack.provider.counters.inputs == ROWS - done_before, (
        "rows before the checkpoint were embedded again"
    )
    print(
        f"provider down: the task failed {failed_after:.1f}s into the outage ({failed['last_error']!r});"
        f" the new backfill resumed at {done_before} and embedded {stack.provider.counters.inputs} rows; "
        + await stack.settled(table, failed_tasks=1)
    )
