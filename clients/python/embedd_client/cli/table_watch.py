"""`embedd watch vt_...`: a vector table followed live - a header with its sync status and
rows, the running backfill's bar (status · phase, rows done of total, rows/s, ETA), and one
line per status change and per sync cycle that changed something. One JSON line per event
with `--json`. It follows the table until Ctrl-C, or with `--until-synced` until the table is
synced with nothing running (exit 1 if it goes to `error`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from embedd.v1 import sync_pb2, values_pb2
from rich.console import Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress import Progress, TaskID
from rich.text import Text

from embedd_client.cli.output import Output, as_dict
from embedd_client.cli.progress import bar, eta, label, reconnecting
from embedd_client.sync import SyncEmbeddClient

_SYNC = values_pb2.SyncStatus.Value
_TASK = values_pb2.TaskStatus.Value
_ACTIVE = (_TASK.Value("pending"), _TASK.Value("running"))


def clock(event: sync_pb2.VectorTableEvent) -> str:
    return event.time.ToDatetime(dt.UTC).astimezone().strftime("%H:%M:%S")


def cycle_line(cycle: sync_pb2.SyncCycle) -> str:
    parts = [
        f"+{cycle.inserted:,.0f} inserted",
        f"{cycle.reembedded:,.0f} re-embedded",
        f"{cycle.metadata_only:,.0f} metadata-only",
        f"-{cycle.deleted:,.0f} deleted",
        f"{cycle.failed:,.0f} failed",
    ]
    if cycle.skipped:
        parts.append(f"{cycle.skipped:,.0f} skipped")
    return f"sync: {', '.join(parts)} ({cycle.duration_ms:,.0f} ms)"


@dataclass
class TableView:
    """What the screen shows of one table, updated event by event."""

    vector_table_id: str
    status: values_pb2.SyncStatus.Value.ValueType = values_pb2.SyncStatus.unspecified
    synced_rows: float = 0.0
    total_rows: float = 0.0
    last_sync: str = ""
    progress: sync_pb2.BackfillProgress | None = None
    lines: list[str] = field(default_factory=list)  # to print above the live area

    @property
    def settled(self) -> bool:
        """Synced, with no backfill queued or running."""
        idle = self.progress is None or self.progress.status not in _ACTIVE
        return self.status == _SYNC.Value("synced") and idle

    @property
    def failed(self) -> bool:
        return self.status == _SYNC.Value("error")

    def apply(self, event: sync_pb2.VectorTableEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "snapshot":
            self._snapshot(event.snapshot)
        elif kind == "progress":
            self._progress(event.progress)
        elif kind == "status_change":
            change = event.status_change
            self.status = change.status
            was, now = _SYNC.Name(change.previous), _SYNC.Name(change.status)
            self.lines.append(f"{clock(event)} status: {was} → {now} ({escape(change.reason)})")
        elif kind == "sync_cycle":
            cycle = event.sync_cycle
            self.last_sync = clock(event)
            self.synced_rows, self.total_rows = cycle.synced_rows, cycle.total_rows
            if any((cycle.inserted, cycle.reembedded, cycle.metadata_only, cycle.deleted, cycle.failed)):
                self.lines.append(f"{clock(event)} {cycle_line(cycle)}")

    def _snapshot(self, snapshot: sync_pb2.VectorTableSnapshot) -> None:
        status = snapshot.status
        self.status, self.synced_rows, self.total_rows = (
            status.sync_status,
            status.synced_rows,
            status.total_rows,
        )
        self.progress = snapshot.progress if snapshot.HasField("progress") else None
        if snapshot.missed_events:
            self.lines.append("[yellow]events were missed; the table as it is now:")
        if status.HasField("last_error"):
            self.lines.append(f"[red]last error:[/] {escape(status.last_error)}")

    def _progress(self, progress: sync_pb2.BackfillProgress) -> None:
        self.progress = progress
        if progress.task_type == values_pb2.TaskType.backfill:  # a re-backfill: at the swap
            self.synced_rows, self.total_rows = progress.rows_processed, progress.rows_total
        if progress.status in _ACTIVE:
            return
        done, total, failed = progress.rows_processed, progress.rows_total, progress.rows_failed
        rows = f"{done:,.0f} of {total:,.0f} rows, {failed:,.0f} failed"
        ended = _TASK.Name(progress.status)
        color = "green" if ended == "completed" else "red"
        self.lines.append(f"[{color}]{ended}[/] {progress.task_id}: {rows}")

    def __rich__(self) -> RenderableType:
        header = Text.assemble(
            (self.vector_table_id, "bold"),
            "  ",
            (_SYNC.Name(self.status), "bold cyan"),
            f"  {self.synced_rows:,.0f} of {self.total_rows:,.0f} rows",
            f"  · last sync {self.last_sync}" if self.last_sync else "",
        )
        return header


def follow_table(client: SyncEmbeddClient, vector_table_id: str, out: Output, *, until_synced: bool) -> int:
    """Shows the table until Ctrl-C (or, `until_synced`, until it is settled); the exit code."""
    view = TableView(vector_table_id)
    if out.json:
        for event in client.watch_vector_table(vector_table_id):
            out.raw_json(as_dict(event))
            view.apply(event)
            if until_synced and (view.settled or view.failed):
                break
        return 1 if view.failed else 0

    shown = bar(out.err)
    row: TaskID | None = None
    with Live(Group(view, shown), console=out.err, refresh_per_second=8, transient=False) as live:
        for event in client.watch_vector_table(vector_table_id, on_retry=reconnecting(live.console)):
            view.apply(event)
            for line in view.lines:
                live.console.print(line)
            view.lines.clear()
            row = _show_task(shown, row, view.progress)
            if until_synced and (view.settled or view.failed):
                break
    return 1 if view.failed else 0


def _show_task(
    shown: Progress, row: TaskID | None, progress: sync_pb2.BackfillProgress | None
) -> TaskID | None:
    """The bar of the running task; none once it ended."""
    if progress is None or progress.status not in _ACTIVE:
        if row is not None:
            shown.remove_task(row)
        return None
    if row is None:
        row = shown.add_task("", total=None, rate="", eta="-")
    shown.update(
        row,
        description=f"{progress.task_id[:13]} {label(progress)}",
        completed=progress.rows_processed,
        total=progress.rows_total or None,
        rate=f"{progress.rows_per_s:,.0f} rows/s",
        eta=eta(progress),
    )
    return row
