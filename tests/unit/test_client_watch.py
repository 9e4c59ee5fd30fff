"""The client's resumable watch loop and retry configuration, on scripted streams."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from embedd.v1 import sync_pb2, task_pb2, values_pb2
from embedd_client.channel import RetryPolicy, idempotent_methods, service_config
from embedd_client.errors import EmbeddError, NotFoundError, UnavailableError
from embedd_client.watch import (
    Reconnect,
    TaskResume,
    VectorTableResume,
    should_reconnect,
    watch_async,
    watch_sync,
)

FAST = Reconnect(give_up_after_s=5.0, initial_backoff_s=0.001, max_backoff_s=0.002)
_STATUS = values_pb2.TaskStatus


def event(rows: int, status: int = _STATUS.running, rate: float = 0.0) -> task_pb2.WatchTaskResponse:
    done = status in (_STATUS.completed, _STATUS.failed)
    return task_pb2.WatchTaskResponse(
        task=task_pb2.Task(
            id="task_1", status=status, progress=task_pb2.TaskProgress(rows_processed=rows, rows_total=30)
        ),
        rows_per_s=rate,
        done=done,
    )


def unavailable() -> UnavailableError:
    return UnavailableError(grpc.StatusCode.UNAVAILABLE, "Connection reset")


@dataclass
class Script:
    """Each opened stream plays the next list: events, then maybe an error."""

    streams: list[list[task_pb2.WatchTaskResponse | Exception]]
    requests: list[task_pb2.WatchTaskRequest] = field(default_factory=list)
    cancelled: int = 0

    def _next(self, request: task_pb2.WatchTaskRequest) -> list[task_pb2.WatchTaskResponse | Exception]:
        self.requests.append(request)
        return self.streams.pop(0)

    def open_async(self, request: task_pb2.WatchTaskRequest) -> _AsyncStream:
        return _AsyncStream(self, self._next(request))

    def open_sync(self, request: task_pb2.WatchTaskRequest) -> _SyncStream:
        return _SyncStream(self, self._next(request))


@dataclass
class _AsyncStream:
    script: Script
    items: list[task_pb2.WatchTaskResponse | Exception]

    async def _gen(self) -> AsyncIterator[task_pb2.WatchTaskResponse]:
        for item in self.items:
            if isinstance(item, Exception):
                raise item
            yield item

    def __aiter__(self) -> AsyncIterator[task_pb2.WatchTaskResponse]:
        return self._gen()

    def cancel(self) -> bool:
        self.script.cancelled += 1
        return True


@dataclass
class _SyncStream:
    script: Script
    items: list[task_pb2.WatchTaskResponse | Exception]

    def __iter__(self) -> Iterator[task_pb2.WatchTaskResponse]:
        for item in self.items:
            if isinstance(item, Exception):
                raise item
            yield item

    def cancel(self) -> bool:
        self.script.cancelled += 1
        return True


async def run_async(script: Script, reconnect: Reconnect = FAST) -> list[task_pb2.WatchTaskResponse]:
    return [e async for e in watch_async(script.open_async, TaskResume("task_1"), reconnect, on_retry)]


def on_retry(err: grpc.RpcError, delay: float) -> None:
    assert isinstance(err, grpc.RpcError) and 0 < delay <= 0.01


def interrupted() -> Script:
    """A stream cut after 10 rows; the next subscription repeats that state (at another rate)
    before the task moves on."""
    return Script(
        [
            [event(0, _STATUS.pending), event(10, rate=5.0), unavailable()],
            [event(10, rate=0.0), event(20), event(30, _STATUS.completed)],
        ]
    )


async def test_a_reconnected_watch_skips_what_it_delivered_and_ends_with_the_task() -> None:
    script = interrupted()
    seen = await run_async(script)
    assert [(e.task.progress.rows_processed, e.done) for e in seen] == [
        (0, False),
        (10, False),
        (20, False),
        (30, True),
    ]
    assert [r.task_id for r in script.requests] == ["task_1", "task_1"]  # re-subscribed
    assert script.cancelled == 2  # every stream it opened is closed


def test_the_sync_watch_behaves_the_same() -> None:
    script = interrupted()
    seen = list(watch_sync(script.open_sync, TaskResume("task_1"), FAST, on_retry))
    assert [e.task.progress.rows_processed for e in seen] == [0, 10, 20, 30]
    assert script.cancelled == 2


async def test_repeated_states_are_delivered_while_connected() -> None:
    """Only a re-opened stream's repeats are skipped: the server's keepalives still arrive."""
    script = Script([[event(10), event(10, rate=1.0), event(30, _STATUS.completed)]])
    assert [e.task.progress.rows_processed for e in await run_async(script)] == [10, 10, 30]


async def test_an_answer_from_the_server_is_raised_not_retried() -> None:
    missing = NotFoundError(grpc.StatusCode.NOT_FOUND, "no such task", reason="task_not_found")
    script = Script([[missing], [event(30, _STATUS.completed)]])
    with pytest.raises(NotFoundError):
        await run_async(script)
    assert len(script.requests) == 1


async def test_it_gives_up_when_the_server_stays_away() -> None:
    script = Script([[unavailable()] for _ in range(50)])
    with pytest.raises(UnavailableError):
        await run_async(script, Reconnect(give_up_after_s=0.05, initial_backoff_s=0.01, max_backoff_s=0.01))
    assert 2 <= len(script.requests) < 50


async def test_a_stream_that_ends_without_a_final_event_ends_the_watch() -> None:
    script = Script([[event(10)], [event(30, _STATUS.completed)]])
    assert [e.task.progress.rows_processed for e in await run_async(script)] == [10]


def table_event(sequence: int, kind: str) -> sync_pb2.VectorTableEvent:
    event = sync_pb2.VectorTableEvent(sequence=sequence)
    getattr(event, kind).SetInParent()
    return event


async def test_a_table_watch_resumes_after_the_last_sequence_not_a_heartbeat() -> None:
    script = Script(
        [
            [
                table_event(5, "snapshot"),
                table_event(6, "status_change"),
                table_event(0, "heartbeat"),
                unavailable(),
            ],
            [table_event(7, "sync_cycle"), table_event(0, "heartbeat")],
        ]
    )
    resume = VectorTableResume("vt_1")
    seen = [e async for e in watch_async(script.open_async, resume, FAST, on_retry)]  # type: ignore[arg-type]
    assert [(e.sequence, e.WhichOneof("event")) for e in seen] == [
        (5, "snapshot"),
        (6, "status_change"),
        (0, "heartbeat"),
        (7, "sync_cycle"),
        (0, "heartbeat"),
    ]
    first, second = script.requests
    assert not first.HasField("after_sequence")  # type: ignore[attr-defined]
    assert second.after_sequence == 6  # type: ignore[attr-defined]


def test_a_table_watch_can_start_after_a_sequence_and_replays_are_skipped() -> None:
    script = Script(
        [
            [table_event(9, "status_change"), unavailable()],
            [table_event(9, "status_change"), table_event(12, "snapshot")],
        ]
    )
    resume = VectorTableResume("vt_1", after_sequence=8)
    seen = list(watch_sync(script.open_sync, resume, FAST, on_retry))  # type: ignore[arg-type]
    assert [e.sequence for e in seen] == [9, 12]  # the repeated 9 is skipped, a snapshot is not
    assert [r.after_sequence for r in script.requests] == [8, 9]  # type: ignore[attr-defined]


def test_the_service_config_retries_exactly_the_idempotent_methods() -> None:
    methods = set(idempotent_methods())
    assert {
        ("embedd.v1.TaskService", "WatchTask"),
        ("embedd.v1.TaskService", "GetTask"),
        ("embedd.v1.QueryService", "QueryVectorTable"),
        ("embedd.v1.ConnectionService", "TestConnection"),
        ("embedd.v1.SyncService", "GetSyncStatus"),
        ("embedd.v1.EmbeddingProviderService", "ListEmbeddingModels"),
    } <= methods
    for unsafe in (
        "CreateConnection",
        "DeleteApiKey",
        "BackfillVectorTable",
        "PauseSync",
        "UpdateVectorTable",
    ):
        assert all(method != unsafe for _, method in methods)
    config = json.loads(service_config(RetryPolicy(max_attempts=3)))
    (method_config,) = config["methodConfig"]
    assert len(method_config["name"]) == len(methods)
    assert method_config["retryPolicy"] == {
        "maxAttempts": 3,
        "initialBackoff": "0.1s",
        "maxBackoff": "2.0s",
        "backoffMultiplier": 2.0,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    assert json.loads(service_config(None)) == {"methodConfig": []}


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, "", True),  # connection lost, server draining
        (grpc.StatusCode.UNAVAILABLE, "vector_table_swapping", True),  # the server's "try again"
        (grpc.StatusCode.CANCELLED, "", True),  # the server cancelling its streams as it stops
        (grpc.StatusCode.INTERNAL, "", True),  # a reset stream
        (grpc.StatusCode.INTERNAL, "internal_error", False),  # a fault the server reported
        (grpc.StatusCode.NOT_FOUND, "task_not_found", False),
        (grpc.StatusCode.UNAUTHENTICATED, "key_revoked", False),
    ],
)
def test_which_failures_reconnect(code: grpc.StatusCode, reason: str, expected: bool) -> None:
    assert should_reconnect(EmbeddError(code, "m", reason=reason)) is expected
