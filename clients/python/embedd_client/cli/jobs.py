"""`embedd backfill|watch|sync|tasks ...`: fill vector tables, follow and steer their sync."""

from __future__ import annotations

from typing import Annotated

import typer
from embedd.v1 import sync_pb2, task_pb2, values_pb2

from embedd_client.cli.context import CursorOption, JsonOption, LimitOption, choice, session
from embedd_client.cli.output import Output, as_dict
from embedd_client.cli.progress import follow
from embedd_client.cli.table_watch import follow_table
from embedd_client.sync import SyncEmbeddClient

sync = typer.Typer(help="A vector table's sync: status, pause, resume.", no_args_is_help=True)
tasks = typer.Typer(help="Background tasks (backfills, re-backfills).", no_args_is_help=True)

TASK_COLUMNS = ["id", "task_type", "target_id", "status", "rows_processed", "rows_total", "created_at"]


def _follow_or_exit(client: SyncEmbeddClient, task_id: str, out: Output) -> None:
    task = follow(client, task_id, out)
    if task.status != values_pb2.TaskStatus.completed:
        raise typer.Exit(1)


def backfill(
    ctx: typer.Context,
    vector_table_id: str,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Show live progress until it is done.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Queue a backfill (step 5); with --watch, follow it (exit 1 if it fails)."""
    with session(ctx, as_json) as (client, out):
        made = client.sync.BackfillVectorTable(
            sync_pb2.BackfillVectorTableRequest(vector_table_id=vector_table_id)
        )
        if not watch:
            out.message(made)
            return
        out.hint(f"{made.task_id} queued")
        _follow_or_exit(client, made.task_id, out)


def watch(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="task_... or vt_...")],
    until_synced: Annotated[
        bool,
        typer.Option(
            "--until-synced", help="vt_...: stop once it is synced with nothing running (exit 1 on error)."
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Follow a task until it ends, or a vector table live: its status, backfill progress
    (phase, rows/s, ETA) and sync cycles, until Ctrl-C."""
    with session(ctx, as_json) as (client, out):
        if not target.startswith("vt_"):
            _follow_or_exit(client, target, out)
            return
        try:
            code = follow_table(client, target, out, until_synced=until_synced)
        except KeyboardInterrupt:
            code = 0  # Ctrl-C is how a live watch ends
        if code:
            raise typer.Exit(code)


@sync.command("status")
def sync_status(ctx: typer.Context, vector_table_id: str, as_json: JsonOption = False) -> None:
    """How far the vectors are behind the source."""
    with session(ctx, as_json) as (client, out):
        out.message(client.sync.GetSyncStatus(sync_pb2.GetSyncStatusRequest(vector_table_id=vector_table_id)))


@sync.command("pause")
def sync_pause(ctx: typer.Context, vector_table_id: str, as_json: JsonOption = False) -> None:
    """Stop applying source changes; queries keep working."""
    with session(ctx, as_json) as (client, out):
        out.message(client.sync.PauseSync(sync_pb2.PauseSyncRequest(vector_table_id=vector_table_id)))


@sync.command("resume")
def sync_resume(ctx: typer.Context, vector_table_id: str, as_json: JsonOption = False) -> None:
    """Apply source changes again, including those made while paused."""
    with session(ctx, as_json) as (client, out):
        out.message(client.sync.ResumeSync(sync_pb2.ResumeSyncRequest(vector_table_id=vector_table_id)))


@tasks.command("list")
def list_tasks(
    ctx: typer.Context,
    table: Annotated[str, typer.Option(help="Only this vector table's tasks.")] = "",
    status: Annotated[str | None, typer.Option(help="pending, running, completed or failed.")] = None,
    limit: LimitOption = 20,
    cursor: CursorOption = "",
    as_json: JsonOption = False,
) -> None:
    """List tasks, newest first."""
    request = task_pb2.ListTasksRequest(target_id=table, limit=limit, cursor=cursor)
    if status:
        request.status = choice(values_pb2.TaskStatus.Value, status, "--status")
    with session(ctx, as_json) as (client, out):
        page = client.tasks.ListTasks(request)
        if out.json:
            out.listing(page, "tasks", TASK_COLUMNS)
            return
        out.rows(({**as_dict(t), **as_dict(t.progress)} for t in page.tasks), TASK_COLUMNS)
        if page.next_cursor:
            out.hint(f"more: --cursor {page.next_cursor}")


@tasks.command("get")
def get_task(ctx: typer.Context, task_id: str, as_json: JsonOption = False) -> None:
    """Show one task, with the rows that failed."""
    with session(ctx, as_json) as (client, out):
        out.message(client.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id)))


@tasks.command("watch")
def watch_task(ctx: typer.Context, task_id: str, as_json: JsonOption = False) -> None:
    """Follow a task's progress live."""
    watch(ctx, task_id, as_json)
