"""The provider batches of a batch-strategy fill (docs/batch.md), in the control plane.

Every change of a batch is written in one transaction that first checks the task's lease
(`TaskLease.transaction`), together with the task's progress it implies: the rows chosen and
the read cursor advanced (prepared), the input file's id (uploaded), the provider's batch id
(submitted), the vectors stored and the rows counted (written). So whoever holds the task
next - after a restart, a takeover, a day of waiting - finds every batch where it was, and a
holder that lost its lease records nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from embedd_server.store.db import Executor
from embedd_server.store.tasks import TaskLease


@dataclass(frozen=True, slots=True)
class BatchRecord:
    seq: int
    state: str  # prepared | uploaded | submitted | written
    keys: list[str]
    # md5 of each key's text as uploaded; None where the row had no text to send then
    text_hashes: list[str | None]
    requests: int
    input_file_id: str | None
    batch_id: str | None
    provider_status: str | None
    submissions: int
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class FillProgress:
    """The task's counters after a batch change (written with it)."""

    last_pk: str | None
    rows_processed: int
    rows_total: int
    rows_imported: int
    failures: Sequence[tuple[str, str]] = ()


def _record(r: asyncpg.Record) -> BatchRecord:
    return BatchRecord(
        seq=r["seq"],
        state=r["state"],
        keys=list(r["keys"]),
        text_hashes=list(r["text_hashes"] or [None] * len(r["keys"])),
        requests=r["requests"],
        input_file_id=r["input_file_id"],
        batch_id=r["batch_id"],
        provider_status=r["provider_status"],
        submissions=r["submissions"],
        updated_at=r["updated_at"],
    )


class BatchLedger:
    """One claimed task's batches; every write fenced by its lease."""

    def __init__(self, lease: TaskLease, live_table: str | None) -> None:
        self._lease = lease
        self._task = lease.task.id
        # The vector table whose live numbers move with the fill (None: a re-backfill's).
        self._live = live_table

    async def load(self) -> list[BatchRecord]:
        async with self._lease.transaction() as conn:
            rows = await conn.fetch(
                "SELECT * FROM embedding_batches WHERE task_id = $1 ORDER BY seq", self._task
            )
        return [_record(r) for r in rows]

    async def progress(self, progress: FillProgress) -> None:
        """Rows done without a batch (imported, or without text) and the cursor past them."""
        async with self._lease.transaction() as conn:
            await self._progress(conn, progress)

    async def prepare(self, seq: int, keys: Sequence[str], progress: FillProgress) -> None:
        async with self._lease.transaction() as conn:
            await conn.execute(
                "INSERT INTO embedding_batches (task_id, seq, state, keys) VALUES ($1, $2, 'prepared', $3)",
                self._task,
                seq,
                list(keys),
            )
            await self._progress(conn, progress)

    async def uploaded(self, seq: int, file_id: str, hashes: Sequence[str | None], requests: int) -> None:
        await self._update(
            seq,
            "state = 'uploaded', input_file_id = $3, text_hashes = $4, requests = $5",
            file_id,
            list(hashes),
            requests,
        )

    async def submitted(self, seq: int, batch_id: str, status: str) -> None:
        await self._update(
            seq,
            "state = 'submitted', batch_id = $3, provider_status = $4, submissions = submissions + 1",
            batch_id,
            status,
        )

    async def polled(self, seq: int, status: str, completed: int, failed: int) -> None:
        await self._update(
            seq,
            "provider_status = $3, completed_requests = $4, failed_requests = $5",
            status,
            completed,
            failed,
        )

    async def requeue(self, seq: int, status: str) -> None:
        """The provider refused the batch for its queue limit: submit it again later, with the
        same input file."""
        await self._update(seq, "state = 'uploaded', batch_id = NULL, provider_status = $3", status)

    async def written(self, seq: int, *, status: str, tokens: int, rows: int, progress: FillProgress) -> None:
        """The batch's vectors are stored: the batch ends, its rows and tokens are counted."""
        async with self._lease.transaction() as conn:
            await conn.execute(
                "UPDATE embedding_batches SET state = 'written', provider_status = $3, tokens = $4,"
                " rows_written = $5, updated_at = clock_timestamp() WHERE task_id = $1 AND seq = $2",
                self._task,
                seq,
                status,
                tokens,
                rows,
            )
            await conn.execute(
                "UPDATE tasks SET batch_tokens = batch_tokens + $2 WHERE id = $1", self._task, tokens
            )
            await conn.execute(
                "UPDATE vector_tables SET batch_tokens = batch_tokens + $2 WHERE id = $1",
                self._lease.task.target_id,
                tokens,
            )
            await self._progress(conn, progress)

    async def _update(self, seq: int, assignments: str, *values: object) -> None:
        async with self._lease.transaction() as conn:
            await conn.execute(
                f"UPDATE embedding_batches SET {assignments}, updated_at = clock_timestamp()"  # noqa: S608 - constants
                " WHERE task_id = $1 AND seq = $2",
                self._task,
                seq,
                *values,
            )

    async def _progress(self, conn: Executor, p: FillProgress) -> None:
        await self._lease.record_progress(
            conn,
            last_pk=p.last_pk,
            rows_processed=p.rows_processed,
            rows_total=p.rows_total,
            failures=p.failures,
            live_table=self._live,
            rows_imported=p.rows_imported,
        )
