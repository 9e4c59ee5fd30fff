"""Watch events as protobuf messages: WatchVectorTable's VectorTableEvent and the progress
parts WatchTask shares with it."""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from embedd.v1 import sync_pb2, values_pb2
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from embedd_server.domain.events import Heartbeat, Snapshot, TableEvent
from embedd_server.domain.models import Task
from embedd_server.engine.progress import eta
from embedd_server.services.convert import set_counters

_PHASE = values_pb2.TaskPhase.Value
_SYNC = values_pb2.SyncStatus.Value
M = TypeVar("M", bound=Message)


class RenderCache(Generic[M]):
    """Messages rendered once per event and shared by every stream it goes to: the hub hands
    the same event object to each watcher of a replica, and rendering it a thousand times
    would cost more than sending it (bounded: the latest `size` events). Keyed by the event
    object's identity - it is kept, so its id cannot be reused while cached - and any values
    that came with it."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._items: OrderedDict[tuple[int, Hashable], tuple[object, M]] = OrderedDict()

    def get(self, event: object, render: Callable[[], M], extra: Hashable = None) -> M:
        key = (id(event), extra)
        hit = self._items.get(key)
        if hit is not None and hit[0] is event:
            self._items.move_to_end(key)
            return hit[1]
        message = render()
        self._items[key] = (event, message)
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return message


def phase(task: Task) -> values_pb2.TaskPhase.Value.ValueType:
    return _PHASE.Value(task.phase) if task.phase else values_pb2.TaskPhase.unspecified


def precise_time(value: dt.datetime) -> timestamp_pb2.Timestamp:
    """Events keep fractions of a second (resources print whole seconds): the delay from a
    change to its event is measured in milliseconds."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def progress_to_proto(task: Task, rows_per_s: float, eta_seconds: float | None) -> sync_pb2.BackfillProgress:
    msg = set_counters(
        sync_pb2.BackfillProgress(
            task_id=task.id,
            task_type=values_pb2.TaskType.Value.Value(task.task_type),
            status=values_pb2.TaskStatus.Value.Value(task.status),
            phase=phase(task),
            rows_per_s=round(max(rows_per_s, 0.0), 1),
        ),
        rows_processed=task.rows_processed,
        rows_total=task.rows_total,
        rows_failed=task.rows_failed,
    )
    if eta_seconds is not None:
        msg.eta_seconds = round(eta_seconds, 1)
    if task.last_error:
        msg.last_error = task.last_error
    if task.phase_progress is not None and task.status == "running":
        msg.phase_progress = task.phase_progress
    return msg


def snapshot_to_proto(
    snapshot: Snapshot, status: sync_pb2.GetSyncStatusResponse
) -> sync_pb2.VectorTableEvent:
    """The snapshot with the table's sync status as GetSyncStatus renders it (`status`)."""
    body = sync_pb2.VectorTableSnapshot(status=status, missed_events=snapshot.missed)
    if snapshot.task is not None:
        body.progress.CopyFrom(progress_to_proto(snapshot.task, 0.0, eta(snapshot.task, 0.0)))
    msg = sync_pb2.VectorTableEvent(time=precise_time(dt.datetime.now(dt.UTC)), snapshot=body)
    return set_counters(msg, sequence=snapshot.sequence)


def event_to_proto(item: TableEvent | Heartbeat) -> sync_pb2.VectorTableEvent:
    if isinstance(item, Heartbeat):
        return sync_pb2.VectorTableEvent(
            time=precise_time(dt.datetime.now(dt.UTC)), heartbeat=sync_pb2.Heartbeat()
        )
    msg = set_counters(sync_pb2.VectorTableEvent(time=precise_time(item.at)), sequence=item.sequence)
    if item.task is not None:
        msg.progress.CopyFrom(progress_to_proto(item.task, item.rows_per_s, item.eta_seconds))
    elif item.cycle is not None:
        c = item.cycle
        msg.sync_cycle.SetInParent()  # an idle cycle counts only zeros, and is still one
        set_counters(
            msg.sync_cycle,
            inserted=c.inserted,
            reembedded=c.reembedded,
            metadata_only=c.metadata_only,
            deleted=c.deleted,
            failed=c.failed,
            skipped=c.skipped,
            synced_rows=c.synced_rows,
            total_rows=c.total_rows,
        )
        msg.sync_cycle.duration_ms = round(max(c.duration_ms, 0.0), 1)
    elif item.change is not None:
        change = item.change
        msg.status_change.CopyFrom(
            sync_pb2.StatusChange(
                previous=_SYNC.Value(change.previous),
                status=_SYNC.Value(change.status),
                reason=change.reason,
                cause=values_pb2.StatusCause.Value.Value(change.cause),
            )
        )
    return msg
