"""TaskService: durable tasks and their progress stream."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence

from embedd.v1 import task_pb2, task_pb2_grpc, values_pb2

from embedd_server.auth import current_principal
from embedd_server.domain import catalog, models
from embedd_server.domain.errors import not_found
from embedd_server.domain.events import TaskUpdate
from embedd_server.domain.validation import check_id, page_request
from embedd_server.engine.watch import Watches
from embedd_server.services.base import Context
from embedd_server.services.convert import render_all, set_counters, timestamp
from embedd_server.services.events import RenderCache, phase
from embedd_server.store.tasks import TaskStore

_STATUS = values_pb2.TaskStatus


def task_to_proto(t: models.Task, failures: Sequence[tuple[str, str]] = ()) -> task_pb2.Task:
    batches = t.batches or models.BatchProgress()
    progress = set_counters(
        task_pb2.TaskProgress(last_processed_pk=t.last_processed_pk or ""),
        rows_processed=t.rows_processed,
        rows_total=t.rows_total,
        rows_failed=t.rows_failed,
        rows_skipped=t.rows_skipped,
        rows_imported=t.rows_imported,
        batches_submitted=batches.submitted,
        batches_completed=batches.completed,
        batch_rows_submitted=batches.rows_submitted,
        batch_rows_completed=batches.rows_completed,
        batch_tokens=t.batch_tokens,
        estimated_saving_tokens=catalog.batch_saving(t.batch_tokens),
    )
    msg = task_pb2.Task(
        id=t.id,
        task_type=values_pb2.TaskType.Value.Value(t.task_type),
        target_id=t.target_id,
        status=_STATUS.Value.Value(t.status),
        created_at=timestamp(t.created_at),
        progress=progress,
        started_at=timestamp(t.started_at),
        finished_at=timestamp(t.finished_at),
        failures=[task_pb2.TaskFailure(pk_value=pk, error=err) for pk, err in failures],
        phase=phase(t),
    )
    set_counters(msg, attempts=t.attempts, max_attempts=t.max_attempts)
    if t.embedding_strategy:
        msg.embedding_strategy = values_pb2.EmbeddingStrategy.Value.Value(t.embedding_strategy)
    if t.last_error:
        msg.last_error = t.last_error
    if t.phase_progress is not None and t.status == "running":
        msg.progress.phase_progress = t.phase_progress
    return msg


def watch_response(update: TaskUpdate) -> task_pb2.WatchTaskResponse:
    msg = task_pb2.WatchTaskResponse(
        task=task_to_proto(update.task, update.failures),
        rows_per_s=round(max(update.rows_per_s, 0.0), 1),
        done=update.done,
        phase=phase(update.task),
    )
    if update.eta_seconds is not None:
        msg.eta_seconds = round(update.eta_seconds, 1)
    return msg


class TaskServicer(task_pb2_grpc.TaskServiceServicer):
    def __init__(self, tasks: TaskStore, watches: Watches) -> None:
        self._tasks = tasks
        self._watches = watches
        self._rendered: RenderCache[task_pb2.WatchTaskResponse] = RenderCache()

    async def _get(self, task_id: str) -> models.Task:
        """The caller's task, or 404 (other organisations' and environments' too)."""
        check_id(task_id, "task_", "task_id")
        p = current_principal()
        task = await self._tasks.get(p.org_id, p.env_id, task_id)
        if task is None:
            raise not_found("task_not_found", "Task", task_id)
        return task

    async def GetTask(self, request: task_pb2.GetTaskRequest, context: Context) -> task_pb2.Task:
        task = await self._get(request.task_id)
        failures = await self._tasks.failures(task.id) if task.rows_failed else []
        return task_to_proto(task, failures)

    async def ListTasks(
        self, request: task_pb2.ListTasksRequest, context: Context
    ) -> task_pb2.ListTasksResponse:
        status = None if request.status == _STATUS.unspecified else _STATUS.Value.Name(request.status)
        p = current_principal()
        page = await self._tasks.list_page(
            p.org_id,
            p.env_id,
            page_request(request.limit, request.cursor),
            target_id=request.target_id or None,
            status=status,
        )
        return task_pb2.ListTasksResponse(
            tasks=render_all(page.items, task_to_proto), next_cursor=page.next_cursor
        )

    async def WatchTask(
        self, request: task_pb2.WatchTaskRequest, context: Context
    ) -> AsyncIterator[task_pb2.WatchTaskResponse]:
        task = await self._get(request.task_id)
        p = current_principal()
        async for update in self._watches.task(p.org_id, p.env_id, task):
            # One task state (a shared Task object) with its rate: rendered once per replica.
            rate = (update.rows_per_s, update.eta_seconds)
            yield self._rendered.get(update.task, functools.partial(watch_response, update), rate)
