"""Rows/s and ETA (engine/progress.py) and what a status change says (domain/events.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from embedd_server.domain.events import StatusChange
from embedd_server.engine.progress import GONE, WINDOW_S, RateWindow, eta, gone

from tests.unit.test_hub import task

T0 = dt.datetime(2026, 3, 13, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_the_rate_is_over_the_recent_window_of_event_times() -> None:
    window = RateWindow()
    assert window.add(at(0), 0) == 0.0  # one sample: unknown
    assert window.add(at(1), 100) == 100.0
    for second in range(2, 30):
        window.add(at(second), 100 * second)
    assert window.add(at(30), 100 * 30 + 1000) == pytest.approx((3000 + 1000 - 100 * 20) / WINDOW_S)


def test_a_new_attempt_starts_the_rate_over() -> None:
    window = RateWindow()
    window.add(at(0), 500)
    window.add(at(1), 600)
    assert window.add(at(2), 0) == 0.0  # the retry resumed from an earlier checkpoint


def test_no_eta_while_indexing_or_swapping_and_zero_once_done() -> None:
    running = task(400)
    assert eta(running, 100.0) == 6.0
    assert eta(running, 0.0) is None
    indexing = dataclasses.replace(task(1000), phase="indexing")
    assert eta(indexing, 500.0) is None  # every row is written; the index build has no rows
    assert eta(dataclasses.replace(indexing, phase="swapping"), 500.0) is None
    assert eta(task(1000, "completed"), 0.0) == 0.0


def test_a_task_gone_with_its_table_is_failed_with_the_reason() -> None:
    last = gone(task(20))
    assert (last.status, last.last_error, last.rows_processed, last.done) == ("failed", GONE, 20, True)


@pytest.mark.parametrize(
    ("change", "cause"),
    [
        (StatusChange("pending", "backfilling"), "backfill_started"),
        (StatusChange("backfilling", "synced"), "backfill_completed"),
        (StatusChange("synced", "paused"), "paused"),
        (StatusChange("paused", "synced"), "resumed"),
        (StatusChange("synced", "error", error="boom"), "error"),
        (StatusChange("error", "synced"), "recovered"),
        (StatusChange("synced", "pending_rebackfill"), "pending_rebackfill"),
        (StatusChange("backfilling", "synced", swapped=True), "swapped"),
        (StatusChange("paused", "paused", swapped=True), "swapped"),
        (StatusChange("error", "pending"), "other"),
    ],
)
def test_each_status_change_says_why(change: StatusChange, cause: str) -> None:
    assert change.cause == cause
    assert change.reason
    if cause == "error":
        assert change.reason == "boom"
