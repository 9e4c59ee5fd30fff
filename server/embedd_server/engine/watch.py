"""The two watches (docs/watch.md): a task's progress (WatchTask) and a vector table's events
(WatchVectorTable). Each registers with the replica's hub first, then reads where it starts
(a snapshot, or the history after the client's last sequence) and goes on with what the hub
delivers: nothing committed in between is lost, nothing is sent twice. While nothing
happens, a task watch repeats its latest state and a table watch sends a heartbeat."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

from embedd_server.domain.errors import ApiError, Kind
from embedd_server.domain.events import Heartbeat, Snapshot, TableEvent, TableItem, TaskUpdate
from embedd_server.domain.models import Task
from embedd_server.engine.hub import EventHub, Signal, Watcher
from embedd_server.engine.progress import eta, gone
from embedd_server.store.events import EventStore
from embedd_server.store.tasks import TaskStore
from embedd_server.store.vector_tables import VectorTableStore

HEARTBEAT = Heartbeat()


class Watches:
    def __init__(
        self,
        hub: EventHub,
        *,
        tasks: TaskStore,
        tables: VectorTableStore,
        events: EventStore,
        heartbeat_s: float,
    ) -> None:
        self.hub = hub
        self._tasks = tasks
        self._tables = tables
        self._events = events
        self._heartbeat_s = heartbeat_s

    async def task(self, org_id: str, env_id: str, task: Task) -> AsyncIterator[TaskUpdate]:
        """The task's state, then each change, until it is done (the last update); a task
        deleted with its vector table ends with a last update that says so."""
        async with self.hub.subscribe(task.target_id, lambda e: e.of_task(task.id)) as watcher:
            latest = await self._task_state(org_id, env_id, task, watcher)
            yield latest
            while not latest.done:
                item = await watcher.next(self._heartbeat_s)
                if item is Signal.CLOSED:
                    raise _stopping()
                if item is Signal.GONE:
                    latest = TaskUpdate(gone(latest.task), 0.0, 0.0)
                elif item is Signal.MISSED:
                    latest = await self._task_state(org_id, env_id, latest.task, watcher)
                elif isinstance(item, TableEvent) and item.task is not None:
                    latest = TaskUpdate(item.task, item.rows_per_s, item.eta_seconds, item.failures)
                yield latest  # after a quiet `heartbeat_s` (None): the same state again

    async def _task_state(self, org_id: str, env_id: str, seen: Task, watcher: Watcher) -> TaskUpdate:
        row = await self._tasks.get_watched(org_id, env_id, seen.id)
        if row is None:
            return TaskUpdate(gone(seen), 0.0, 0.0)
        task, sequence = row
        watcher.start_after(sequence)
        failures = await self._tasks.failures(task.id) if task.done and task.rows_failed else []
        return TaskUpdate(task, 0.0, eta(task, 0.0), tuple(failures))

    async def table(
        self, org_id: str, env_id: str, vt_id: str, after: int | None
    ) -> AsyncIterator[TableItem]:
        """A snapshot (or, resuming after `after`, the events since), then every event, for
        as long as the caller stays; a 404 once the table is deleted."""
        async with self.hub.subscribe(vt_id) as watcher:
            if after is None:
                yield await self._snapshot(org_id, env_id, vt_id, watcher, missed=False)
            else:
                batch = await self._events.read_after(vt_id, after)
                if batch is not None and batch.complete_after(after):
                    for event in batch.events:
                        yield _replayed(event)
                    watcher.start_after(batch.current)
                else:
                    yield await self._snapshot(org_id, env_id, vt_id, watcher, missed=True)
            while True:
                item = await watcher.next(self._heartbeat_s)
                if item is None:
                    yield HEARTBEAT
                elif item is Signal.GONE:
                    raise _table_gone(vt_id)
                elif item is Signal.CLOSED:
                    raise _stopping()
                elif item is Signal.MISSED:
                    yield await self._snapshot(org_id, env_id, vt_id, watcher, missed=True)
                else:
                    yield item

    async def _snapshot(
        self, org_id: str, env_id: str, vt_id: str, watcher: Watcher, *, missed: bool
    ) -> Snapshot:
        row = await self._tables.get_watched(org_id, env_id, vt_id)
        if row is None:
            raise _table_gone(vt_id)
        table, task, sequence = row
        watcher.start_after(sequence)
        return Snapshot(table, task, sequence, missed)


def _replayed(event: TableEvent) -> TableEvent:
    """An event from the history: no rate measured for it (an ETA only once done)."""
    if event.task is None:
        return event
    return dataclasses.replace(event, eta_seconds=eta(event.task, 0.0))


def _stopping() -> ApiError:
    return ApiError(
        Kind.UNAVAILABLE,
        "server_stopping",
        "This server is stopping. Reconnect to go on watching (WatchVectorTable: with "
        "after_sequence set to the last sequence received, to miss nothing).",
    )


def _table_gone(vt_id: str) -> ApiError:
    """The table was deleted while (or just before) it was watched."""
    return ApiError(
        Kind.NOT_FOUND, "vector_table_not_found", f"Vector table {vt_id!r} was deleted; the watch has ended."
    )
