"""Watching a task: progress events computed from the durable task row.

Polling the control plane (not an in-process bus) means a watch works whichever replica runs
the task, and survives that replica's crash and the takeover.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from embedd_server.domain.models import Task

_RATE_WINDOW_S = 10.0
GONE = "the task was deleted with its vector table"


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    task: Task
    rows_per_s: float
    eta_seconds: float | None
    done: bool


async def watch(
    load: Callable[[], Awaitable[Task | None]],
    *,
    interval_s: float = 0.5,
    keepalive_s: float = 5.0,
) -> AsyncIterator[ProgressEvent]:
    """Yields on every change of the task (and at least every `keepalive_s`), and a last
    event with `done` once it completed or failed. A task that disappears (its vector table
    was deleted, and its tasks with it) ends the same way: a last `done` event, the task as
    last seen marked failed with `GONE` as its error."""
    samples: deque[tuple[float, int]] = deque()
    last_key: tuple[object, ...] | None = None
    last_sent = 0.0
    seen: Task | None = None
    while True:
        task = await load()
        if task is None:
            if seen is not None:
                yield ProgressEvent(_gone(seen), 0.0, 0.0, True)
            return
        seen = task
        now = time.monotonic()
        samples.append((now, task.rows_processed))
        while len(samples) > 2 and now - samples[0][0] > _RATE_WINDOW_S:
            samples.popleft()
        key = (task.status, task.rows_processed, task.rows_total, task.rows_failed, task.attempts)
        if key != last_key or now - last_sent >= keepalive_s or task.done:
            rate = _rate(samples)
            remaining = max(task.rows_total - task.rows_processed, 0)
            eta = remaining / rate if rate > 0 and not task.done else (0.0 if task.done else None)
            yield ProgressEvent(task, rate, eta, task.done)
            last_key, last_sent = key, now
            if task.done:
                return
        await asyncio.sleep(interval_s)


def _gone(task: Task) -> Task:
    return dataclasses.replace(task, status="failed", last_error=GONE)


def _rate(samples: deque[tuple[float, int]]) -> float:
    if len(samples) < 2:
        return 0.0
    (t0, r0), (t1, r1) = samples[0], samples[-1]
    return (r1 - r0) / (t1 - t0) if t1 > t0 else 0.0
