"""A task's live progress bar: status and phase, rows done of total, rows/s and ETA as the
server computes them; one JSON line per event with `--json`."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from embedd.v1 import sync_pb2, task_pb2, values_pb2
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
)
from rich.text import Text

from embedd_client.cli.output import Output, as_dict
from embedd_client.sync import SyncEmbeddClient

_STATUS = values_pb2.TaskStatus.Value


def phase_of(event: task_pb2.WatchTaskResponse | sync_pb2.BackfillProgress) -> str | None:
    """What the task is doing (reading, embedding, writing, indexing, swapping); None when it
    is not running."""
    name = values_pb2.TaskPhase.Value.Name(event.phase)
    return None if name == "unspecified" else name


class _Elapsed(ProgressColumn):
    """Time since the watch began; rich's own stops once all rows are written, though the
    index build after them may take most of the time."""

    def render(self, task: Task) -> Text:
        started = task.start_time if task.start_time is not None else time.monotonic()
        return Text(duration(time.monotonic() - started), style="progress.elapsed")


def label(event: task_pb2.WatchTaskResponse | sync_pb2.BackfillProgress) -> str:
    status = event.task.status if isinstance(event, task_pb2.WatchTaskResponse) else event.status
    phase = phase_of(event)
    return f"{_STATUS.Name(status)} · {phase}" if phase else _STATUS.Name(status)


def duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def eta(event: task_pb2.WatchTaskResponse | sync_pb2.BackfillProgress) -> str:
    status = event.task.status if isinstance(event, task_pb2.WatchTaskResponse) else event.status
    done = status in (_STATUS.Value("completed"), _STATUS.Value("failed"))
    return duration(event.eta_seconds) if event.HasField("eta_seconds") and not done else "-"


def bar(console: Console) -> Progress:
    """The progress bar of one task: status · phase, rows done of total, rows/s, ETA, time."""
    columns = (
        TextColumn("[bold]{task.description:<20}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TextColumn("{task.fields[rate]}"),
        TextColumn("ETA {task.fields[eta]}"),
        _Elapsed(),
    )
    return Progress(*columns, console=console)


def follow(client: SyncEmbeddClient, task_id: str, out: Output) -> task_pb2.Task:
    """Shows the task's progress until it is done; returns the task as it ended."""
    last = task_pb2.WatchTaskResponse()
    if out.json:
        for event in client.watch_task(task_id):
            out.raw_json(as_dict(event))
            last = event
        return last.task

    with bar(out.err) as shown:
        row = shown.add_task("pending", total=None, rate="", eta="-")
        for event in client.watch_task(task_id, on_retry=reconnecting(shown.console)):
            progress = event.task.progress
            shown.update(
                row,
                description=label(event),
                completed=progress.rows_processed,
                total=progress.rows_total or None,
                rate=f"{event.rows_per_s:,.0f} rows/s",
                eta=eta(event),
            )
            last = event
    _summary(last.task, out)
    return last.task


def reconnecting(console: Console) -> Callable[[grpc.RpcError, float], None]:
    """Says so when a watch lost its connection and reconnects."""

    def say(err: grpc.RpcError, delay: float) -> None:
        code = err.code().name if callable(getattr(err, "code", None)) else "error"
        console.print(f"[yellow]connection lost ({code}); reconnecting in {delay:.1f}s")

    return say


def _summary(task: task_pb2.Task, out: Output) -> None:
    p = task.progress
    counts = f"{p.rows_processed:,.0f} of {p.rows_total:,.0f} rows, {p.rows_failed:,.0f} failed"
    if task.status == _STATUS.Value("completed"):
        out.err.print(f"[green]completed[/] {task.id}: {counts}")
    else:
        out.err.print(f"[red]{_STATUS.Name(task.status)}[/] {task.id}: {counts}")
        if task.HasField("last_error"):
            out.err.print(escape(task.last_error))
    for failure in task.failures:
        out.err.print(f"  row {escape(failure.pk_value)}: {escape(failure.error)}")
