"""Rows per second and ETA of a task, from the progress events a replica receives.

The samples are the events' own times (the control plane's clock, in the transaction of each
checkpoint), so every replica computes the same rate from the same events, and a batch of
events read at once still spreads over the time it took.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import deque

from embedd_server.domain.models import Task

WINDOW_S = 10.0
# Samples kept at most per task (small chunks can checkpoint many times a second).
_MAX_SAMPLES = 256
GONE = "the task was deleted with its vector table"
# Phases whose duration the row counts say nothing about.
_NO_ESTIMATE = ("indexing", "swapping")


class RateWindow:
    """Rows per second over the last WINDOW_S seconds of one task's progress."""

    def __init__(self) -> None:
        self._samples: deque[tuple[dt.datetime, int]] = deque(maxlen=_MAX_SAMPLES)

    def add(self, at: dt.datetime, rows: int) -> float:
        """Adds a sample; returns the rate including it."""
        samples = self._samples
        if samples and rows < samples[-1][1]:
            samples.clear()  # a new attempt started over
        samples.append((at, rows))
        while len(samples) > 2 and (at - samples[0][0]).total_seconds() > WINDOW_S:
            samples.popleft()
        return self.rate()

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, r0), (t1, r1) = self._samples[0], self._samples[-1]
        seconds = (t1 - t0).total_seconds()
        return (r1 - r0) / seconds if seconds > 0 else 0.0


def eta(task: Task, rows_per_s: float) -> float | None:
    """Seconds to completion: 0 once done; unknown (None) without a rate, or in a phase the
    row counts do not measure (the index build, a re-backfill's catch-up and swap)."""
    if task.done:
        return 0.0
    if rows_per_s <= 0 or task.phase in _NO_ESTIMATE:
        return None
    return max(task.rows_total - task.rows_processed, 0) / rows_per_s


def gone(task: Task) -> Task:
    """The task as last seen, failed: it was deleted with its vector table."""
    return dataclasses.replace(task, status="failed", last_error=GONE, phase=None)
