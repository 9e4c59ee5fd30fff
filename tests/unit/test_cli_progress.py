"""The CLI's live views: a task's progress line, and what `embedd watch vt_...` shows."""

from __future__ import annotations

from embedd.v1 import sync_pb2, task_pb2, values_pb2
from embedd_client.cli.progress import duration, eta, label, phase_of
from embedd_client.cli.table_watch import TableView, cycle_line

_PHASE = values_pb2.TaskPhase
_TASK = values_pb2.TaskStatus
_SYNC = values_pb2.SyncStatus


def test_the_phase_is_shown_while_running() -> None:
    assert phase_of(task_pb2.WatchTaskResponse()) is None  # unspecified: not running
    indexing = task_pb2.WatchTaskResponse(
        task=task_pb2.Task(status=_TASK.running, phase=_PHASE.indexing), phase=_PHASE.indexing
    )
    assert phase_of(indexing) == "indexing" and label(indexing) == "running · indexing"
    progress = sync_pb2.BackfillProgress(status=_TASK.running, phase=_PHASE.embedding)
    assert label(progress) == "running · embedding"


def test_label_and_times() -> None:
    running = task_pb2.WatchTaskResponse(task=task_pb2.Task(status=_TASK.running))
    assert label(running) == "running"
    assert eta(running) == "-"
    running.eta_seconds = 3725.4
    assert eta(running) == "1:02:05"
    assert duration(59.6) == "1:00"
    done = sync_pb2.BackfillProgress(status=_TASK.completed, eta_seconds=0)
    assert eta(done) == "-"


def event(sequence: int, **kinds: object) -> sync_pb2.VectorTableEvent:
    return sync_pb2.VectorTableEvent(sequence=sequence, **kinds)  # type: ignore[arg-type]


def test_the_table_view_follows_its_events_and_settles_when_synced() -> None:
    view = TableView("vt_1")
    snapshot = sync_pb2.VectorTableSnapshot(status=sync_pb2.GetSyncStatusResponse(sync_status=_SYNC.pending))
    view.apply(event(3, snapshot=snapshot))
    assert not view.settled and not view.lines
    backfill = values_pb2.TaskType.backfill
    running = sync_pb2.BackfillProgress(
        task_id="task_1", task_type=backfill, status=_TASK.running, rows_processed=10, rows_total=50
    )
    view.apply(event(4, progress=running))
    view.apply(
        event(5, status_change=sync_pb2.StatusChange(previous=_SYNC.pending, status=_SYNC.backfilling))
    )
    assert view.progress == running and "pending → backfilling" in view.lines[-1]
    assert (view.synced_rows, view.total_rows) == (10, 50)
    finished = sync_pb2.BackfillProgress(
        task_id="task_1", task_type=backfill, status=_TASK.completed, rows_processed=50, rows_total=50
    )
    view.apply(event(6, progress=finished))
    assert "completed[/] task_1: 50 of 50 rows, 0 failed" in view.lines[-1]
    assert not view.settled  # still backfilling until the table says synced
    view.apply(event(7, status_change=sync_pb2.StatusChange(previous=_SYNC.backfilling, status=_SYNC.synced)))
    assert view.settled and (view.synced_rows, view.total_rows) == (50, 50)
    lines = len(view.lines)
    idle = sync_pb2.SyncCycle(duration_ms=3, synced_rows=50, total_rows=50)
    view.apply(event(8, sync_cycle=idle))  # nothing changed: no line
    assert len(view.lines) == lines and view.last_sync
    cycle = sync_pb2.SyncCycle(inserted=2, deleted=1, duration_ms=12.4, synced_rows=51, total_rows=51)
    view.apply(event(9, sync_cycle=cycle))
    assert (view.synced_rows, view.total_rows) == (51, 51)
    assert view.lines[-1].endswith(
        "sync: +2 inserted, 0 re-embedded, 0 metadata-only, -1 deleted, 0 failed (12 ms)"
    )
    view.apply(event(10, status_change=sync_pb2.StatusChange(previous=_SYNC.synced, status=_SYNC.error)))
    assert view.failed


def test_a_cycle_over_the_budget_says_what_it_skipped() -> None:
    assert cycle_line(sync_pb2.SyncCycle(inserted=1, skipped=4)).endswith("0 failed, 4 skipped (0 ms)")
