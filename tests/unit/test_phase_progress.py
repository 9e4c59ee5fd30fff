"""The index build's share done reaches a task read, WatchTask and WatchVectorTable alike
(docs/indexes.md): all three render the same task row - an event's payload is that row."""

from __future__ import annotations

import datetime as dt
from typing import Any

from embedd_server.services.events import progress_to_proto
from embedd_server.services.tasks import task_to_proto
from embedd_server.store.tasks import task_from_row


def _row(**changes: Any) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    row: dict[str, Any] = {
        "id": "task_1", "org_id": "org", "env_id": "env", "task_type": "backfill", "target_id": "vt_1",
        "status": "running", "attempts": 1, "max_attempts": 5, "last_error": None,
        "last_processed_pk": "99", "rows_processed": 100, "rows_total": 100, "rows_failed": 0,
        "lease_owner": "r1", "created_at": now, "started_at": now, "finished_at": None,
        "rows_skipped": 0, "embedding_strategy": None, "rows_imported": 0, "batch_tokens": 0,
        "phase": "indexing", "phase_progress": 0.42,
    }  # fmt: skip
    return {**row, **changes}


def test_a_running_index_build_shows_its_share_done_everywhere() -> None:
    task = task_from_row(_row())
    assert task_to_proto(task).progress.phase_progress == 0.42
    assert progress_to_proto(task, 0.0, None).phase_progress == 0.42


def test_no_share_outside_a_measured_phase_or_after_the_end() -> None:
    for row in (_row(phase="embedding", phase_progress=None), _row(status="completed", phase=None)):
        task = task_from_row(row)
        assert not task_to_proto(task).progress.HasField("phase_progress")
        assert not progress_to_proto(task, 0.0, None).HasField("phase_progress")
    # a row read before migration 0013 has no such column
    legacy = _row()
    del legacy["phase_progress"]
    assert not task_to_proto(task_from_row(legacy)).progress.HasField("phase_progress")
