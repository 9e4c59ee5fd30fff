"""Durable tasks, and every control-plane write made on their behalf, fenced by lease.

A task is claimed with `FOR UPDATE SKIP LOCKED`; each claim increments `lease_epoch`, the
fencing token (domain/leases.py). The engine writes for a claimed task only through its
`TaskLease`: each write runs in one transaction that first locks the task row and checks it
is still ours (owner, epoch, running), so a holder whose lease lapsed - paused, partitioned,
taken over - gets `LeaseLost` and writes nothing, not even the vector table's result.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from embedd_server.domain.errors import ApiError, Kind
from embedd_server.domain.leases import Lease, LeaseLost
from embedd_server.domain.models import BatchProgress, Page, Task
from embedd_server.domain.validation import PageRequest
from embedd_server.domain.vector_tables import VectorTableSpec
from embedd_server.store.db import Executor, acquire
from embedd_server.store.paging import fetch_page

# Tasks as the API shows them: with their provider batches counted (docs/batch.md).
_WITH_BATCHES = (
    "SELECT t.*, b.* FROM tasks t LEFT JOIN LATERAL (SELECT"
    " count(*) FILTER (WHERE e.state IN ('submitted', 'written')) AS batches_submitted,"
    " count(*) FILTER (WHERE e.state = 'written') AS batches_completed,"
    " coalesce(sum(cardinality(e.keys)) FILTER (WHERE e.state IN ('submitted', 'written')), 0)"
    "   AS batch_rows_submitted,"
    " coalesce(sum(cardinality(e.keys)) FILTER (WHERE e.state = 'written'), 0) AS batch_rows_completed"
    " FROM embedding_batches e WHERE e.task_id = t.id) b ON true"
)


def _batches(r: asyncpg.Record | Mapping[str, Any]) -> BatchProgress | None:
    if r.get("batches_submitted") is None:
        return None  # not read with _WITH_BATCHES
    return BatchProgress(
        r["batches_submitted"], r["batches_completed"], r["batch_rows_submitted"], r["batch_rows_completed"]
    )


def task_from_row(r: asyncpg.Record | Mapping[str, Any]) -> Task:
    return Task(
        id=r["id"],
        org_id=r["org_id"],
        env_id=r["env_id"],
        task_type=r["task_type"],
        target_id=r["target_id"],
        status=r["status"],
        attempts=r["attempts"],
        max_attempts=r["max_attempts"],
        last_error=r["last_error"],
        last_processed_pk=r["last_processed_pk"],
        rows_processed=r["rows_processed"],
        rows_total=r["rows_total"],
        rows_failed=r["rows_failed"],
        lease_owner=r["lease_owner"],
        created_at=r["created_at"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        rows_skipped=r["rows_skipped"],
        embedding_strategy=r["embedding_strategy"],
        rows_imported=r["rows_imported"],
        batch_tokens=r["batch_tokens"],
        batches=_batches(r),
        phase=r["phase"],
        phase_progress=r.get("phase_progress"),
    )


def _time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value is not None else None


def task_from_json(d: Mapping[str, Any]) -> Task:
    """A task from its row as jsonb (`to_jsonb(tasks)`: event payloads, lateral reads)."""
    times = ("created_at", "started_at", "finished_at")
    return task_from_row({**d, **{k: _time(d[k]) for k in times}, "lease_owner": d.get("lease_owner")})


async def insert_task(
    conn: Executor,
    *,
    id: str,
    org_id: str,
    env_id: str,
    task_type: str,
    target_id: str,
    embedding_strategy: str | None = None,
) -> Task:
    """A new pending task; `backfill_in_progress` while a fill is queued or running. The
    conflict is skipped rather than raised, so the transaction can still say which fill is in
    the way - and whether it is only building the index of a table already synced."""
    row = await conn.fetchrow(
        "INSERT INTO tasks (id, org_id, env_id, task_type, target_id, embedding_strategy)"
        " VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (target_id) WHERE status IN ('pending', 'running')"
        "   AND task_type IN ('backfill', 'rebackfill') DO NOTHING RETURNING *",
        id,
        org_id,
        env_id,
        task_type,
        target_id,
        embedding_strategy,
    )
    if row is None:
        raise await _fill_in_the_way(conn, target_id)
    return task_from_row(row)


async def _fill_in_the_way(conn: Executor, target_id: str) -> ApiError:
    blocking = await conn.fetchrow(
        "SELECT id, phase FROM tasks WHERE target_id = $1 AND status IN ('pending', 'running')"
        " AND task_type IN ('backfill', 'rebackfill')",
        target_id,
    )
    if blocking is not None and blocking["phase"] == "indexing":  # docs/indexes.md
        return ApiError(
            Kind.CONFLICT,
            "backfill_in_progress",
            f"Every row of this vector table is written and its index is being built (task "
            f"{blocking['id']}; index_progress in GET /v1/vector-tables/{target_id}/sync/status). "
            "Try again when index_status is ready.",
        )
    # None: the fill in the way ended after the insert saw it; asking again succeeds.
    watch = f"GET /v1/tasks/{blocking['id']}" if blocking else f"GET /v1/tasks?target_id={target_id}"
    return ApiError(
        Kind.CONFLICT,
        "backfill_in_progress",
        "A backfill of this vector table is already queued or running. "
        f"Watch it with {watch} and try again when it has finished.",
    )


class TaskStore:
    """Tasks as the API sees them (scoped by organisation and environment), and claims."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def enqueue(
        self,
        *,
        id: str,
        org_id: str,
        env_id: str,
        task_type: str,
        target_id: str,
        embedding_strategy: str | None = None,
    ) -> Task:
        """A new pending fill. When the table's last fill (or re-backfill) failed and was of
        this type, the new one starts from its checkpoint and carries its row failures over:
        asking again after, say, a provider outage does not pay for the rows already done."""
        async with self._pool.acquire() as conn, conn.transaction():
            task = await insert_task(
                conn,
                id=id,
                org_id=org_id,
                env_id=env_id,
                task_type=task_type,
                target_id=target_id,
                embedding_strategy=embedding_strategy,
            )
            row = await conn.fetchrow(
                "WITH last AS (SELECT * FROM tasks WHERE target_id = $2 AND id <> $1"
                "   AND task_type IN ('backfill', 'rebackfill') AND status IN ('completed', 'failed')"
                "   ORDER BY finished_at DESC NULLS LAST, created_at DESC LIMIT 1)"
                " UPDATE tasks t SET last_processed_pk = last.last_processed_pk,"
                " rows_processed = last.rows_processed, rows_total = last.rows_total,"
                " rows_failed = last.rows_failed, rows_imported = last.rows_imported"
                " FROM last WHERE t.id = $1 AND last.status = 'failed' AND last.task_type = t.task_type"
                " AND t.embedding_strategy IS NOT DISTINCT FROM last.embedding_strategy"
                " AND last.last_processed_pk IS NOT NULL RETURNING t.*, last.id AS resumed_from",
                id,
                target_id,
            )
            if row is None:
                return task
            await conn.execute(
                "INSERT INTO task_failures (task_id, pk_value, error)"
                " SELECT $1, pk_value, error FROM task_failures WHERE task_id = $2",
                id,
                row["resumed_from"],
            )
            return task_from_row(row)

    async def get(self, org_id: str, env_id: str, task_id: str) -> Task | None:
        row = await self._pool.fetchrow(
            f"{_WITH_BATCHES} WHERE org_id = $1 AND env_id = $2 AND id = $3", org_id, env_id, task_id
        )
        return task_from_row(row) if row else None

    async def list_page(
        self, org_id: str, env_id: str, page: PageRequest, *, target_id: str | None, status: str | None
    ) -> Page[Task]:
        return await fetch_page(
            self._pool,
            f"{_WITH_BATCHES} WHERE org_id = $1 AND env_id = $2"
            " AND ($3::text IS NULL OR target_id = $3) AND ($4::text IS NULL OR status = $4)",
            [org_id, env_id, target_id, status],
            page,
            task_from_row,
        )

    async def get_watched(self, org_id: str, env_id: str, task_id: str) -> tuple[Task, int] | None:
        """The task and its vector table's latest event sequence, read together: the state a
        watch starts from and the sequence it is current to."""
        row = await self._pool.fetchrow(
            "SELECT t.*, v.event_sequence FROM tasks t JOIN vector_tables v ON v.id = t.target_id"
            " WHERE t.org_id = $1 AND t.env_id = $2 AND t.id = $3",
            org_id,
            env_id,
            task_id,
        )
        return (task_from_row(row), row["event_sequence"]) if row else None

    async def failures(self, task_id: str, limit: int = 100) -> list[tuple[str, str]]:
        rows = await self._pool.fetch(
            "SELECT pk_value, error FROM task_failures WHERE task_id = $1 ORDER BY pk_value LIMIT $2",
            task_id,
            limit,
        )
        return [(r["pk_value"], r["error"]) for r in rows]

    async def claim(self, owner: str, lease_s: float) -> TaskLease | None:
        """The next task for `owner`: pending (and due, when retried), or running under a
        lapsed lease (its process died or stalled), whose table no sync cycle holds (the
        fill waits for it: one writer per table). Tasks out of attempts are failed instead of
        claimed. The claim increments the epoch: whoever held the task before is fenced out
        from now on."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE tasks SET status = 'failed', finished_at = clock_timestamp(),"
                " last_error = coalesce(last_error, 'gave up after ' || attempts || ' attempts'),"
                " phase = NULL, phase_progress = NULL, lease_owner = NULL, updated_at = clock_timestamp()"
                " WHERE status = 'running' AND lease_expires_at < clock_timestamp()"
                " AND attempts >= max_attempts"
            )
            row = await conn.fetchrow(
                "UPDATE tasks SET status = 'running', phase = 'reading', phase_progress = NULL,"
                " lease_owner = $1,"
                " lease_epoch = lease_epoch + 1,"
                " lease_expires_at = clock_timestamp() + make_interval(secs => $2),"
                " attempts = attempts + 1, started_at = coalesce(started_at, clock_timestamp()),"
                " updated_at = clock_timestamp()"
                " WHERE id = (SELECT id FROM tasks t"
                "   WHERE ((status = 'pending' AND coalesce(not_before, '-infinity') <= clock_timestamp())"
                "   OR (status = 'running' AND lease_expires_at < clock_timestamp()))"
                "   AND NOT EXISTS (SELECT 1 FROM vector_tables v WHERE v.id = t.target_id"
                "                   AND v.sync_lease_expires_at > clock_timestamp())"
                "   ORDER BY priority DESC, created_at FOR UPDATE OF t SKIP LOCKED LIMIT 1)"
                " RETURNING *",
                owner,
                lease_s,
            )
        if row is None:
            return None
        return TaskLease(self._pool, task_from_row(row), Lease(owner, row["lease_epoch"]), lease_s)


class TaskLease:
    """Every write the engine makes on behalf of one claimed task (and nothing else may make
    them). Each is one transaction that first locks the task row and checks the lease."""

    def __init__(self, pool: asyncpg.Pool[Any], task: Task, lease: Lease, lease_s: float) -> None:
        self._pool = pool
        self.task = task
        self.token = lease
        self._lease_s = lease_s
        self._phase = task.phase

    def _args(self) -> tuple[str, str, int]:
        return self.task.id, self.token.owner, self.token.epoch

    @asynccontextmanager
    async def _fenced(self) -> AsyncIterator[Executor]:
        """A transaction in which the task is ours: its row stays locked (FOR UPDATE) until
        commit, so no claim can slip in between the check and the writes."""
        async with acquire(self._pool) as conn, conn.transaction():
            held = await conn.fetchval(
                "SELECT true FROM tasks WHERE id = $1 AND lease_owner = $2 AND lease_epoch = $3"
                " AND status = 'running' FOR UPDATE",
                *self._args(),
            )
            if not held:
                raise LeaseLost(f"task {self.task.id} is no longer held by {self.token.owner}")
            yield conn

    async def renew(self) -> None:
        """Extends the lease; LeaseLost when the task is no longer ours."""
        status = await self._pool.execute(
            "UPDATE tasks SET lease_expires_at = clock_timestamp() + make_interval(secs => $4)"
            " WHERE id = $1 AND lease_owner = $2 AND lease_epoch = $3 AND status = 'running'",
            *self._args(),
            self._lease_s,
        )
        if not status.endswith(" 1"):
            raise LeaseLost(f"task {self.task.id} is no longer held by {self.token.owner}")

    async def set_phase(self, phase: str) -> None:
        """What the task is doing now (watchers see it); a repeat writes nothing."""
        if phase == self._phase:
            return
        async with self._fenced() as conn:
            await conn.execute(
                "UPDATE tasks SET phase = $2, phase_progress = NULL, updated_at = clock_timestamp()"
                " WHERE id = $1",
                self.task.id,
                phase,
            )
        self._phase = phase

    async def start(self, vt_id: str) -> None:
        """The vector table shows the fill (unless paused, which only resume ends)."""
        async with self._fenced() as conn:
            await conn.execute(
                "UPDATE vector_tables SET sync_status = 'backfilling', updated_at = clock_timestamp()"
                " WHERE id = $1 AND sync_status <> 'paused'",
                vt_id,
            )

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Executor]:
        """A fenced transaction for writes made elsewhere on the task's behalf (its provider
        batches: store/embedding_batches.py): LeaseLost unless the task is still ours."""
        return self._fenced()

    async def checkpoint(
        self,
        *,
        last_pk: str | None,
        rows_processed: int,
        rows_total: int,
        failures: Sequence[tuple[str, str]],
        live_table: str | None,
        rows_imported: int = 0,
    ) -> None:
        """Progress after a committed chunk, and the live vector table's numbers with it (a
        re-backfill passes None: the live table's numbers change only at the swap)."""
        async with self._fenced() as conn:
            await self.record_progress(
                conn,
                last_pk=last_pk,
                rows_processed=rows_processed,
                rows_total=rows_total,
                failures=failures,
                live_table=live_table,
                rows_imported=rows_imported,
            )

    async def record_progress(
        self,
        conn: Executor,
        *,
        last_pk: str | None,
        rows_processed: int,
        rows_total: int,
        failures: Sequence[tuple[str, str]],
        live_table: str | None,
        rows_imported: int = 0,
    ) -> None:
        """`checkpoint`'s writes, inside a transaction of `transaction()`."""
        task_id = self.task.id
        await conn.execute(
            "UPDATE tasks SET last_processed_pk = $2, rows_processed = $3, rows_total = $4,"
            " rows_imported = $5, updated_at = clock_timestamp() WHERE id = $1",
            task_id,
            last_pk,
            rows_processed,
            rows_total,
            rows_imported,
        )
        if failures:
            await conn.executemany(
                "INSERT INTO task_failures (task_id, pk_value, error) VALUES ($1, $2, $3)"
                " ON CONFLICT (task_id, pk_value) DO UPDATE SET error = EXCLUDED.error",
                [(task_id, pk, err) for pk, err in failures],
            )
            # a re-read chunk may report the same row again: count distinct rows only
            await conn.execute(
                "UPDATE tasks SET rows_failed = (SELECT count(*) FROM task_failures WHERE task_id = $1)"
                " WHERE id = $1",
                task_id,
            )
        if live_table is not None:
            await conn.execute(
                "UPDATE vector_tables SET synced_rows = $2, total_rows = $3, rows_imported = $4,"
                " updated_at = clock_timestamp() WHERE id = $1",
                live_table,
                rows_processed,
                max(rows_total, rows_processed),
                rows_imported,
            )

    async def _finish(self, conn: Executor, status: str, error: str | None, retry_in_s: float = 0.0) -> None:
        """The attempt's end; a retried one (pending again) is claimable in `retry_in_s`."""
        await conn.execute(
            "UPDATE tasks SET status = $2, last_error = $3, phase = NULL, phase_progress = NULL,"
            " lease_owner = NULL,"
            " lease_expires_at = NULL,"
            " finished_at = CASE WHEN $2 IN ('completed', 'failed') THEN clock_timestamp() END,"
            " not_before = clock_timestamp() + make_interval(secs => $4),"
            " updated_at = clock_timestamp() WHERE id = $1",
            self.task.id,
            status,
            error,
            retry_in_s,
        )

    async def complete(self) -> None:
        """Completed, with nothing to record (e.g. a swap a crashed holder already recorded)."""
        async with self._fenced() as conn:
            await self._finish(conn, "completed", None)

    async def _skipped(self, conn: Executor, rows_skipped: int) -> None:
        await conn.execute("UPDATE tasks SET rows_skipped = $2 WHERE id = $1", self.task.id, rows_skipped)

    async def mark_written(
        self, vt_id: str, *, synced_rows: int, total_rows: int, rows_skipped: int = 0
    ) -> None:
        """Every row is written; the index is still to build. The table is synced (queryable,
        exactly) and due for sync polls from now on, while the task goes on indexing
        (docs/indexes.md)."""
        async with self._fenced() as conn:
            await self._skipped(conn, rows_skipped)
            await _mark_synced(
                conn,
                vt_id,
                synced_rows=synced_rows,
                total_rows=total_rows,
                rows_skipped=rows_skipped,
                index_status="building",
            )

    async def index_progress(self, done: float) -> None:
        """The index build's share done, for the task's watchers and sync status (which
        reads it from here: store/vector_tables.py)."""
        async with self._fenced() as conn:
            await conn.execute("UPDATE tasks SET phase_progress = $2 WHERE id = $1", self.task.id, done)

    async def complete_indexing(self, vt_id: str, *, index_status: str) -> None:
        """Completed once its index is built. The table has been synced since mark_written,
        and sync cycles keep its counts: only the index state is recorded."""
        async with self._fenced() as conn:
            await self._finish(conn, "completed", None)
            await conn.execute(
                "UPDATE vector_tables SET index_status = $2, updated_at = clock_timestamp() WHERE id = $1",
                vt_id,
                index_status,
            )

    async def complete_fill(
        self,
        vt_id: str,
        *,
        synced_rows: int,
        total_rows: int,
        rows_skipped: int = 0,
        index_status: str = "ready",
    ) -> None:
        """Completed, and the table synced (unless paused meanwhile) and due for its first
        sync poll - in one transaction: whoever sees it synced sees the task completed.
        `rows_skipped`: rows over the vector budget (managed mode), on the task and the table."""
        async with self._fenced() as conn:
            await self._skipped(conn, rows_skipped)  # first: the completion's event carries it
            await self._finish(conn, "completed", None)
            await _mark_synced(
                conn,
                vt_id,
                synced_rows=synced_rows,
                total_rows=total_rows,
                rows_skipped=rows_skipped,
                index_status=index_status,
            )

    async def complete_swap(
        self,
        vt_id: str,
        spec: VectorTableSpec,
        *,
        synced_rows: int,
        total_rows: int,
        rows_skipped: int = 0,
        index_status: str = "ready",
    ) -> None:
        """Completed, and the swapped-in table's spec is the live one."""
        async with self._fenced() as conn:
            await self._skipped(conn, rows_skipped)  # first: the completion's event carries it
            await self._finish(conn, "completed", None)
            await conn.execute(
                "UPDATE vector_tables SET spec = $2::jsonb, pending_spec = NULL,"
                " sync_status = CASE WHEN sync_status = 'paused' THEN 'paused' ELSE 'synced' END,"
                " synced_rows = $3, total_rows = $4, last_synced_at = clock_timestamp(),"
                " last_error = NULL, last_error_at = NULL, sync_failures = 0, sync_cursor = NULL,"
                " rows_skipped = $5, index_status = $6,"
                " next_sync_at = clock_timestamp(), updated_at = clock_timestamp() WHERE id = $1",
                vt_id,
                json.dumps(spec.to_json()),
                synced_rows,
                total_rows,
                rows_skipped,
                index_status,
            )

    async def fail(self, error: str, *, retry: bool, retry_in_s: float = 0.0) -> None:
        """This attempt failed: pending again for another one (`retry`), claimable in
        `retry_in_s`, or failed for good - and the vector table shows the error (in `error`
        state when failed for good)."""
        async with self._fenced() as conn:
            await self._finish(conn, "pending" if retry else "failed", error, retry_in_s)
            await conn.execute(
                "UPDATE vector_tables SET last_error = $2, last_error_at = clock_timestamp(),"
                " sync_status = CASE WHEN sync_status = 'paused' THEN 'paused'"
                "   ELSE coalesce($3, sync_status) END,"
                " updated_at = clock_timestamp() WHERE id = $1",
                self.task.target_id,
                error,
                None if retry else "error",
            )

    async def park(self, delay_s: float) -> None:
        """Lets go of the task until `delay_s` from now (a batch-strategy fill waiting for its
        provider batches: docs/batch.md): it stays running, held by nobody, and is claimed
        again - by any process, under a new epoch - once that lease lapses. The attempt does
        not count against `max_attempts`: waiting is not failing."""
        async with self._fenced() as conn:
            await conn.execute(
                "UPDATE tasks SET lease_owner = NULL, attempts = greatest(attempts - 1, 0),"
                " lease_expires_at = clock_timestamp() + make_interval(secs => $2),"
                " updated_at = clock_timestamp() WHERE id = $1",
                self.task.id,
                delay_s,
            )

    async def release(self) -> None:
        """Gives the task back untouched (this process is shutting down): pending again, and
        the interrupted attempt does not count against `max_attempts`. No-op when not ours."""
        await self._pool.execute(
            "UPDATE tasks SET status = 'pending', phase = NULL, phase_progress = NULL,"
            " attempts = greatest(attempts - 1, 0),"
            " lease_owner = NULL,"
            " lease_expires_at = NULL, not_before = NULL, updated_at = clock_timestamp()"
            " WHERE id = $1 AND lease_owner = $2 AND lease_epoch = $3 AND status = 'running'",
            *self._args(),
        )


async def _mark_synced(
    conn: Executor, vt_id: str, *, synced_rows: int, total_rows: int, rows_skipped: int, index_status: str
) -> None:
    """The vector table synced (unless paused meanwhile) with its counts and index state, and
    due for its next sync poll one interval from now."""
    await conn.execute(
        "UPDATE vector_tables SET"
        " sync_status = CASE WHEN sync_status = 'paused' THEN 'paused' ELSE 'synced' END,"
        " synced_rows = $2, total_rows = $3, last_synced_at = clock_timestamp(),"
        " last_error = NULL, last_error_at = NULL, sync_failures = 0, rows_skipped = $4,"
        " index_status = $5,"
        " next_sync_at = clock_timestamp()"
        " + make_interval(secs => (spec->>'sync_interval_seconds')::int),"
        " updated_at = clock_timestamp() WHERE id = $1",
        vt_id,
        synced_rows,
        total_rows,
        rows_skipped,
        index_status,
    )
