"""Vector tables' events (docs/watch.md): rows written by the triggers of migration 0010 in
the transaction of each change, announced by NOTIFY on EVENTS_CHANNEL; read here."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import asyncpg

from embedd_server.domain.events import EventBatch, StatusChange, SyncCycleCounts, TableEvent
from embedd_server.store.tasks import task_from_json

# NOTIFY channel: the payload is "<vector table id> <sequence>" (0 when the table was deleted).
EVENTS_CHANNEL = "embedd_events"


def _json(value: object) -> dict[str, Any]:
    loaded = json.loads(value) if isinstance(value, str) else value
    assert isinstance(loaded, dict)
    return loaded


def event_from_row(sequence: int, kind: str, payload: dict[str, Any], at: dt.datetime) -> TableEvent:
    if kind == "progress":
        failures = tuple((str(pk), str(error)) for pk, error in payload.get("failures", ()))
        return TableEvent(sequence, at, task=task_from_json(payload), failures=failures)
    if kind == "sync_cycle":
        counts = SyncCycleCounts(
            inserted=int(payload["inserted"]),
            reembedded=int(payload["reembedded"]),
            metadata_only=int(payload["metadata_only"]),
            deleted=int(payload["deleted"]),
            failed=int(payload["failed"]),
            skipped=int(payload.get("skipped", 0)),
            duration_ms=float(payload["duration_ms"]),
            synced_rows=int(payload["synced_rows"]),
            total_rows=int(payload["total_rows"]),
        )
        return TableEvent(sequence, at, cycle=counts)
    change = StatusChange(
        previous=payload["previous"],
        status=payload["status"],
        swapped=bool(payload["swapped"]),
        error=payload.get("error"),
    )
    return TableEvent(sequence, at, change=change)


class EventStore:
    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def read_after(self, vt_id: str, after: int) -> EventBatch | None:
        """The table's events after `after` that the history still holds, with its latest
        sequence, in one query; None when the table does not exist (any more). Unscoped:
        callers have checked that the table is the caller's."""
        rows = await self._pool.fetch(
            "SELECT v.event_sequence AS current, v.event_sequence - embedd_event_history() AS floor,"
            " e.sequence, e.kind, e.payload, e.created_at"
            " FROM vector_tables v LEFT JOIN vector_table_events e"
            "   ON e.vector_table_id = v.id AND e.sequence > $2"
            " WHERE v.id = $1 ORDER BY e.sequence",
            vt_id,
            after,
        )
        if not rows:
            return None
        events = [
            event_from_row(r["sequence"], r["kind"], _json(r["payload"]), r["created_at"])
            for r in rows
            if r["sequence"] is not None
        ]
        return EventBatch(current=rows[0]["current"], floor=rows[0]["floor"], events=events)
