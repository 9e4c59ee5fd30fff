"""What watchers of a vector table see (docs/watch.md): its events, numbered per table, and the
snapshot a watch starts from. The events are rows of the control plane, written with the
change they describe; these are their domain forms."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from embedd_server.domain.models import Task, VectorTable


@dataclass(frozen=True, slots=True)
class SyncCycleCounts:
    """What one finished sync cycle did."""

    inserted: int
    reembedded: int
    metadata_only: int
    deleted: int
    failed: int
    skipped: int
    duration_ms: float
    synced_rows: int  # the table's, after the cycle
    total_rows: int


_REASONS = {
    "swapped": "re-backfill swapped in; the new configuration is live",
    "paused": "sync paused",
    "resumed": "sync resumed",
    "recovered": "sync succeeded again",
    "backfill_started": "backfill started",
    "pending_rebackfill": "the configuration changed; a re-backfill is queued",
    "backfill_completed": "backfill completed",
}


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A change of sync status, or a swap (which keeps a paused table paused)."""

    previous: str
    status: str
    swapped: bool = False
    error: str | None = None

    @property
    def cause(self) -> str:
        if self.swapped:
            return "swapped"
        if self.status == "paused":
            return "paused"
        if self.previous == "paused":
            return "resumed"
        if self.status == "error":
            return "error"
        if self.previous == "error" and self.status == "synced":
            return "recovered"
        if self.status == "backfilling":
            return "backfill_started"
        if self.status == "pending_rebackfill":
            return "pending_rebackfill"
        if self.previous == "backfilling" and self.status == "synced":
            return "backfill_completed"
        return "other"

    @property
    def reason(self) -> str:
        cause = self.cause
        if cause == "error":
            return self.error or "sync failed"
        return _REASONS.get(cause, f"{self.previous} -> {self.status}")


@dataclass(frozen=True, slots=True)
class TableEvent:
    """One event of a vector table: a task's progress, a sync cycle, or a status change."""

    sequence: int
    at: dt.datetime  # the control plane's clock, in the transaction of the change
    task: Task | None = None  # progress: the task as of this event
    failures: tuple[tuple[str, str], ...] = ()  # progress of a finished task: first failed rows
    cycle: SyncCycleCounts | None = None
    change: StatusChange | None = None
    # Progress only, as the replica that delivers it measures them (engine/progress.py).
    rows_per_s: float = 0.0
    eta_seconds: float | None = None

    def of_task(self, task_id: str) -> bool:
        return self.task is not None and self.task.id == task_id

    def replaces(self, older: TableEvent) -> bool:
        """Whether this event makes `older` (still unsent) redundant: progress of the same task
        in the same status and phase - only row counts moved. A new phase or status is always
        sent."""
        new, old = self.task, older.task
        return (
            new is not None
            and old is not None
            and (new.id, new.status, new.phase) == (old.id, old.status, old.phase)
        )


@dataclass(frozen=True, slots=True)
class EventBatch:
    """The events of a table after some sequence, as far as its history still holds them."""

    current: int  # the table's latest sequence
    floor: int  # every event after this sequence is still in the history
    events: list[TableEvent]

    def complete_after(self, sequence: int) -> bool:
        """Whether `events` are everything that happened after `sequence` (False also for a
        sequence this table never reached)."""
        return self.floor <= sequence <= self.current


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A table's state as of `sequence`: where a watch starts, or restarts after it missed
    events (`missed`)."""

    table: VectorTable
    task: Task | None  # its latest backfill or re-backfill
    sequence: int
    missed: bool


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Nothing happened for a while; the stream is alive."""


@dataclass(frozen=True, slots=True)
class TaskUpdate:
    """One message of a task watch."""

    task: Task
    rows_per_s: float
    eta_seconds: float | None
    failures: tuple[tuple[str, str], ...] = ()

    @property
    def done(self) -> bool:
        return self.task.done


TableItem = Snapshot | TableEvent | Heartbeat
