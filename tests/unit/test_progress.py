"""Watching a task (engine/progress.py): a stream always ends with a `done` event."""

from __future__ import annotations

import datetime as dt

from embedd_server.domain.models import Task
from embedd_server.engine.progress import GONE, watch


def _task(status: str, rows: int) -> Task:
    now = dt.datetime(2026, 3, 13, tzinfo=dt.UTC)
    return Task(
        id="task_a",
        org_id="org_a",
        env_id="env_a",
        task_type="backfill",
        target_id="vt_a",
        status=status,
        attempts=1,
        max_attempts=3,
        last_error=None,
        last_processed_pk=None,
        rows_processed=rows,
        rows_total=100,
        rows_failed=0,
        lease_owner="w",
        created_at=now,
        started_at=now,
        finished_at=None,
    )


async def test_a_task_that_disappears_ends_the_watch_with_done() -> None:
    states = [_task("running", 10), _task("running", 20), None]

    async def load() -> Task | None:
        return states.pop(0)

    events = [e async for e in watch(load, interval_s=0.0)]
    assert [e.done for e in events] == [False, False, True]
    last = events[-1].task
    assert (last.status, last.last_error, last.rows_processed) == ("failed", GONE, 20)


async def test_an_unknown_task_yields_nothing() -> None:
    async def load() -> Task | None:
        return None

    assert [e async for e in watch(load, interval_s=0.0)] == []
