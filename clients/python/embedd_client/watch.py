"""Watches that outlive their connection: reconnect with backoff, resume, skip what was seen.

A watch is a server stream that may run for minutes. When the transport fails (the server
restarts or is redeployed, a proxy drops the connection), the iterator opens the stream again
with a request built from the last event it delivered, and skips the events it had already
delivered, so the caller sees one stream. How a stream resumes is its `Resume`:

- `TaskResume` (WatchTask): the server keeps no history; the task row is the truth, so a new
  subscription starts with the task's current state. The first events of a re-opened stream
  that only repeat the last delivered state are skipped.
- `VectorTableResume` (WatchVectorTable): events are numbered; the stream is opened again
  with `after_sequence` = the last sequence delivered, and the server sends what came after
  it from its bounded history (or a snapshot with `missed_events` when that was cut).
  Heartbeats (sequence 0) are delivered but are no place to resume from.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc
from embedd.v1 import sync_pb2, task_pb2

E = TypeVar("E")
R = TypeVar("R")
E_co = TypeVar("E_co", covariant=True)
E_contra = TypeVar("E_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)


class Resume(Protocol[R_co, E_contra]):
    """How one kind of watch resumes after a reconnect."""

    def request(self, last: E_contra | None) -> R_co:
        """The request that (re)opens the stream, after `last` (None: from the start)."""
        ...

    def seen(self, event: E_contra, last: E_contra) -> bool:
        """Whether `event`, on a re-opened stream, was already delivered as of `last`."""
        ...

    def final(self, event: E_contra) -> bool:
        """Whether the watch ends with this event."""
        ...

    def marks(self, event: E_contra) -> bool:
        """Whether a re-opened stream may resume from this event (a heartbeat is no position)."""
        ...


@dataclass(frozen=True, slots=True)
class TaskResume:
    """WatchTask: re-subscribe to the task; an unchanged task state is not news."""

    task_id: str

    def request(self, last: task_pb2.WatchTaskResponse | None) -> task_pb2.WatchTaskRequest:
        return task_pb2.WatchTaskRequest(task_id=self.task_id)

    def seen(self, event: task_pb2.WatchTaskResponse, last: task_pb2.WatchTaskResponse) -> bool:
        return _task_state(event) == _task_state(last)

    def final(self, event: task_pb2.WatchTaskResponse) -> bool:
        return event.done

    def marks(self, event: task_pb2.WatchTaskResponse) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class VectorTableResume:
    """WatchVectorTable: resume after the last sequence delivered (or `after_sequence`, for
    the first stream). The watch follows the table until the caller stops."""

    vector_table_id: str
    after_sequence: int | None = None

    def request(self, last: sync_pb2.VectorTableEvent | None) -> sync_pb2.WatchVectorTableRequest:
        request = sync_pb2.WatchVectorTableRequest(vector_table_id=self.vector_table_id)
        after = last.sequence if last is not None else self.after_sequence
        if after is not None:
            request.after_sequence = after
        return request

    def seen(self, event: sync_pb2.VectorTableEvent, last: sync_pb2.VectorTableEvent) -> bool:
        return event.WhichOneof("event") != "snapshot" and 0 < event.sequence <= last.sequence

    def final(self, event: sync_pb2.VectorTableEvent) -> bool:
        return False

    def marks(self, event: sync_pb2.VectorTableEvent) -> bool:
        return event.WhichOneof("event") != "heartbeat"


def _task_state(event: task_pb2.WatchTaskResponse) -> task_pb2.WatchTaskResponse:
    """The event without its rates: those differ on every connection, the state does not."""
    state = task_pb2.WatchTaskResponse()
    state.CopyFrom(event)
    state.ClearField("rows_per_s")
    state.ClearField("eta_seconds")
    return state


@dataclass(frozen=True, slots=True)
class Reconnect:
    """When and how often a watch reconnects. `give_up_after_s` counts from the first failed
    attempt since the last event received; the last error is raised then."""

    give_up_after_s: float = 60.0
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    def delays(self) -> Iterator[float]:
        delay = self.initial_backoff_s
        while True:
            # Jittered so that many watchers of one restarted server do not return in step.
            yield delay * (0.5 + random.random() / 2)  # noqa: S311 - not for secrets
            delay = min(delay * 2, self.max_backoff_s)


OnRetry = Callable[[grpc.RpcError, float], None]
"""Called before each reconnect with the error and the delay in seconds (e.g. to say so)."""


def should_reconnect(err: grpc.RpcError) -> bool:
    """Transport failures, and the server's own "try again": UNAVAILABLE (connection lost,
    server draining), and CANCELLED / INTERNAL / UNKNOWN without an Embedd code (the server
    cancelling streams as it stops, a reset stream). Errors with a code (not found, denied)
    are answers, not failures: raised at once."""
    code = err.code() if callable(getattr(err, "code", None)) else None
    if code == grpc.StatusCode.UNAVAILABLE:
        return True
    transport = code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
    return transport and not getattr(err, "reason", "")


class AsyncStream(Protocol[E_co]):
    def __aiter__(self) -> AsyncIterator[E_co]: ...
    def cancel(self) -> bool: ...


class SyncStream(Protocol[E_co]):
    def __iter__(self) -> Iterator[E_co]: ...
    def cancel(self) -> bool: ...


class _Retry:
    """The reconnect bookkeeping shared by both loops."""

    def __init__(self, policy: Reconnect, on_retry: OnRetry | None) -> None:
        self._policy = policy
        self._on_retry = on_retry
        self._delays = policy.delays()
        self._failing_since: float | None = None

    def received(self) -> None:
        self._failing_since = None
        self._delays = self._policy.delays()

    def delay_after(self, err: grpc.RpcError) -> float | None:
        """Seconds to wait before reconnecting, or None to give up."""
        now = time.monotonic()
        self._failing_since = self._failing_since or now
        if not should_reconnect(err) or now - self._failing_since > self._policy.give_up_after_s:
            return None
        delay = next(self._delays)
        if self._on_retry is not None:
            self._on_retry(err, delay)
        return delay


async def watch_async(
    open_stream: Callable[[R], AsyncStream[E]],
    resume: Resume[R, E],
    reconnect: Reconnect,
    on_retry: OnRetry | None = None,
) -> AsyncIterator[E]:
    """Events of a watch across reconnects, each delivered once; ends after a final event
    or when the server ends the stream."""
    retry = _Retry(reconnect, on_retry)
    last: E | None = None
    resumed = False
    while True:
        stream = open_stream(resume.request(last))
        try:
            async for event in stream:
                retry.received()
                if resumed and last is not None and resume.seen(event, last):
                    continue
                resumed = False
                if resume.marks(event):
                    last = event
                yield event
                if resume.final(event):
                    return
            return
        except grpc.RpcError as err:
            delay = retry.delay_after(err)
            if delay is None:
                raise
        finally:
            stream.cancel()
        await asyncio.sleep(delay)
        resumed = True


def watch_sync(
    open_stream: Callable[[R], SyncStream[E]],
    resume: Resume[R, E],
    reconnect: Reconnect,
    on_retry: OnRetry | None = None,
) -> Iterator[E]:
    """`watch_async` for the blocking client."""
    retry = _Retry(reconnect, on_retry)
    last: E | None = None
    resumed = False
    while True:
        stream = open_stream(resume.request(last))
        try:
            for event in stream:
                retry.received()
                if resumed and last is not None and resume.seen(event, last):
                    continue
                resumed = False
                if resume.marks(event):
                    last = event
                yield event
                if resume.final(event):
                    return
            return
        except grpc.RpcError as err:
            delay = retry.delay_after(err)
            if delay is None:
                raise
        finally:
            stream.cancel()
        time.sleep(delay)
        resumed = True
