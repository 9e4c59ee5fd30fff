"""Vector tables and their tasks in the control plane."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from embedd_server.domain.errors import ApiError, Kind, not_found
from embedd_server.domain.models import Page, Task, VectorTable
from embedd_server.domain.validation import PageRequest
from embedd_server.domain.vector_tables import VectorTableSpec
from embedd_server.store.db import Executor
from embedd_server.store.paging import fetch_page


def _spec(value: object) -> VectorTableSpec | None:
    if value is None:
        return None
    return VectorTableSpec.from_json(json.loads(value) if isinstance(value, str) else value)  # type: ignore[arg-type]


def _vt(r: asyncpg.Record) -> VectorTable:
    spec = _spec(r["spec"])
    assert spec is not None
    return VectorTable(
        id=r["id"],
        org_id=r["org_id"],
        env_id=r["env_id"],
        name=r["name"],
        connection_id=r["connection_id"],
        embedding_provider_id=r["embedding_provider_id"],
        spec=spec,
        pending_spec=_spec(r["pending_spec"]),
        sync_status=r["sync_status"],
        platform_vector_ref=r["platform_vector_ref"] or "",
        created_at=r["created_at"],
        synced_rows=r["synced_rows"],
        total_rows=r["total_rows"],
        last_synced_at=r["last_synced_at"],
        last_error=r["last_error"],
        last_error_at=r["last_error_at"],
    )


def task_from_row(r: asyncpg.Record) -> Task:
    return Task(
        id=r["id"],
        org_id=r["org_id"],
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
    )


class VectorTableStore:
    """SQL for vector tables, scoped by organisation and environment."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def create(
        self,
        *,
        id: str,
        org_id: str,
        env_id: str,
        name: str,
        connection_id: str,
        embedding_provider_id: str,
        spec: VectorTableSpec,
        platform_vector_ref: str,
    ) -> VectorTable:
        """The new row; a 404 when its connection or provider was deleted meanwhile (the
        foreign keys decide, so a concurrent delete cannot leave a dangling table)."""
        try:
            row = await self._pool.fetchrow(
                "INSERT INTO vector_tables (id, org_id, env_id, name, connection_id, embedding_provider_id,"
                " spec, platform_vector_ref) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8) RETURNING *",
                id,
                org_id,
                env_id,
                name,
                connection_id,
                embedding_provider_id,
                json.dumps(spec.to_json()),
                platform_vector_ref,
            )
        except asyncpg.ForeignKeyViolationError as exc:
            if exc.constraint_name == "vector_tables_embedding_provider_id_fkey":
                raise not_found(
                    "embedding_provider_not_found", "Embedding provider", embedding_provider_id
                ) from exc
            if exc.constraint_name == "vector_tables_connection_id_fkey":
                raise not_found("connection_not_found", "Connection", connection_id) from exc
            raise not_found("environment_not_found", "Environment", env_id) from exc
        assert row is not None
        return _vt(row)

    async def get(self, org_id: str, env_id: str, vt_id: str) -> VectorTable | None:
        row = await self._pool.fetchrow(
            "SELECT * FROM vector_tables WHERE org_id = $1 AND env_id = $2 AND id = $3", org_id, env_id, vt_id
        )
        return _vt(row) if row else None

    async def get_by_id(self, vt_id: str) -> VectorTable | None:
        """Unscoped: for the engine, which works on behalf of the task's organisation."""
        row = await self._pool.fetchrow("SELECT * FROM vector_tables WHERE id = $1", vt_id)
        return _vt(row) if row else None

    async def list_page(self, org_id: str, env_id: str, page: PageRequest) -> Page[VectorTable]:
        return await fetch_page(
            self._pool,
            "SELECT * FROM vector_tables WHERE org_id = $1 AND env_id = $2",
            [org_id, env_id],
            page,
            _vt,
        )

    async def delete(self, org_id: str, env_id: str, vt_id: str) -> bool:
        status = await self._pool.execute(
            "DELETE FROM vector_tables WHERE org_id = $1 AND env_id = $2 AND id = $3", org_id, env_id, vt_id
        )
        return bool(status.endswith(" 1"))

    async def set_status(self, vt_id: str, sync_status: str) -> None:
        """A new state - except over `paused`, which only resume ends."""
        await self._pool.execute(
            "UPDATE vector_tables SET sync_status = $2, updated_at = clock_timestamp()"
            " WHERE id = $1 AND sync_status <> 'paused'",
            vt_id,
            sync_status,
        )

    async def record_synced(
        self,
        vt_id: str,
        *,
        synced_rows: int,
        total_rows: int,
        started_at: dt.datetime | None = None,
        conn: Executor | None = None,
    ) -> None:
        """A fill finished: synced (unless paused meanwhile) and due for its first sync poll."""
        await (conn or self._pool).execute(
            "UPDATE vector_tables SET"
            " sync_status = CASE WHEN sync_status = 'paused' THEN 'paused' ELSE 'synced' END,"
            " synced_rows = $2, total_rows = $3, last_synced_at = coalesce($4, clock_timestamp()),"
            " last_error = NULL, last_error_at = NULL, sync_failures = 0,"
            " next_sync_at = clock_timestamp()"
            " + make_interval(secs => (spec->>'sync_interval_seconds')::int),"
            " updated_at = clock_timestamp() WHERE id = $1",
            vt_id,
            synced_rows,
            total_rows,
            started_at,
        )

    # --- sync scheduling ----------------------------------------------------------------

    async def claim_due(self, owner: str, lease_s: float, limit: int) -> list[VectorTable]:
        """Tables due for a sync poll, leased to `owner`: synced or in error (retried with
        backoff), not paused, no backfill queued or running, no live lease elsewhere."""
        rows = await self._pool.fetch(
            "UPDATE vector_tables SET sync_lease_owner = $1,"
            " sync_lease_expires_at = clock_timestamp() + make_interval(secs => $2)"
            " WHERE id IN (SELECT v.id FROM vector_tables v"
            "   WHERE v.sync_status IN ('synced', 'error')"
            "   AND coalesce(v.next_sync_at, '-infinity') <= clock_timestamp()"
            "   AND (v.sync_lease_expires_at IS NULL OR v.sync_lease_expires_at < clock_timestamp())"
            "   AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.target_id = v.id"
            "                   AND t.status IN ('pending', 'running'))"
            "   ORDER BY v.next_sync_at NULLS FIRST FOR UPDATE SKIP LOCKED LIMIT $3)"
            " RETURNING *",
            owner,
            lease_s,
            limit,
        )
        return [_vt(r) for r in rows]

    async def renew_sync_lease(self, vt_id: str, owner: str, lease_s: float) -> bool:
        status = await self._pool.execute(
            "UPDATE vector_tables SET sync_lease_expires_at = clock_timestamp() + make_interval(secs => $3)"
            " WHERE id = $1 AND sync_lease_owner = $2",
            vt_id,
            owner,
            lease_s,
        )
        return bool(status.endswith(" 1"))

    async def finish_sync(
        self,
        vt_id: str,
        owner: str,
        *,
        started_at: dt.datetime,
        cursor: str | None,
        swept: bool,
        counts: tuple[int, int] | None,
        note: str | None = None,
    ) -> None:
        """A successful cycle: fresh as of its snapshot (`started_at`), next poll scheduled."""
        await self._pool.execute(
            "UPDATE vector_tables SET"
            " sync_status = CASE WHEN sync_status = 'error' THEN 'synced' ELSE sync_status END,"
            " last_synced_at = $3, last_error = $8,"
            " last_error_at = CASE WHEN $8::text IS NULL THEN NULL ELSE clock_timestamp() END,"
            " sync_failures = 0, sync_cursor = $4,"
            " last_delete_sweep_at = CASE WHEN $5 THEN $3 ELSE last_delete_sweep_at END,"
            " synced_rows = coalesce($6, synced_rows), total_rows = coalesce($7, total_rows),"
            " next_sync_at = clock_timestamp()"
            " + make_interval(secs => (spec->>'sync_interval_seconds')::int),"
            " sync_lease_owner = NULL, sync_lease_expires_at = NULL, updated_at = clock_timestamp()"
            " WHERE id = $1 AND sync_lease_owner = $2",
            vt_id,
            owner,
            started_at,
            cursor,
            swept,
            counts[0] if counts else None,
            counts[1] if counts else None,
            note,
        )

    async def fail_sync(self, vt_id: str, owner: str, error: str, *, max_backoff_s: float) -> None:
        """A failed cycle: `error` (unless paused meanwhile), retried with exponential backoff."""
        await self._pool.execute(
            "UPDATE vector_tables SET"
            " sync_status = CASE WHEN sync_status = 'paused' THEN 'paused' ELSE 'error' END,"
            " last_error = $3, last_error_at = clock_timestamp(), sync_failures = sync_failures + 1,"
            " next_sync_at = clock_timestamp() + make_interval(secs => least($4,"
            "   (spec->>'sync_interval_seconds')::int * power(2, least(sync_failures, 16)))),"
            " sync_lease_owner = NULL, sync_lease_expires_at = NULL, updated_at = clock_timestamp()"
            " WHERE id = $1 AND sync_lease_owner = $2",
            vt_id,
            owner,
            error,
            max_backoff_s,
        )

    async def sync_state(self, vt_id: str) -> asyncpg.Record | None:
        return await self._pool.fetchrow(
            "SELECT sync_cursor, last_delete_sweep_at FROM vector_tables WHERE id = $1", vt_id
        )

    async def pause(self, org_id: str, env_id: str, vt_id: str) -> bool:
        """True when paused now; False when it already was."""
        status = await self._pool.execute(
            "UPDATE vector_tables SET sync_status = 'paused', updated_at = clock_timestamp()"
            " WHERE org_id = $1 AND env_id = $2 AND id = $3 AND sync_status <> 'paused'",
            org_id,
            env_id,
            vt_id,
        )
        return bool(status.endswith(" 1"))

    async def resume(self, org_id: str, env_id: str, vt_id: str) -> str | None:
        """The state sync resumes in, or None when the table was not paused. The next poll is
        due at once, so changes made while paused are applied now."""
        state: str | None = await self._pool.fetchval(
            "UPDATE vector_tables v SET sync_status = CASE"
            "   WHEN EXISTS (SELECT 1 FROM tasks t WHERE t.target_id = v.id AND t.status = 'running')"
            "     THEN 'backfilling'"
            "   WHEN pending_spec IS NOT NULL THEN 'pending_rebackfill'"
            "   WHEN last_synced_at IS NULL THEN 'pending'"
            "   ELSE 'synced' END,"
            " next_sync_at = clock_timestamp(), updated_at = clock_timestamp()"
            " WHERE org_id = $1 AND env_id = $2 AND id = $3 AND sync_status = 'paused'"
            " RETURNING sync_status",
            org_id,
            env_id,
            vt_id,
        )
        return state

    async def begin_rebackfill(
        self, vt_id: str, name: str, provider_id: str, pending: VectorTableSpec
    ) -> None:
        """Records the new spec to build; the live one keeps serving until the swap."""
        await self._pool.execute(
            "UPDATE vector_tables SET name = $2, embedding_provider_id = $3, pending_spec = $4::jsonb,"
            " sync_status = CASE WHEN sync_status = 'paused' THEN 'paused' ELSE 'pending_rebackfill' END,"
            " updated_at = clock_timestamp() WHERE id = $1",
            vt_id,
            name,
            provider_id,
            json.dumps(pending.to_json()),
        )

    async def update_in_place(self, vt_id: str, name: str, spec: VectorTableSpec, provider_id: str) -> None:
        """A change that needs no re-embedding and no new table (name, sync settings, key)."""
        await self._pool.execute(
            "UPDATE vector_tables SET name = $2, spec = $3::jsonb, embedding_provider_id = $4,"
            " updated_at = clock_timestamp() WHERE id = $1",
            vt_id,
            name,
            json.dumps(spec.to_json()),
            provider_id,
        )

    async def complete_swap(
        self,
        vt_id: str,
        spec: VectorTableSpec,
        *,
        synced_rows: int,
        total_rows: int,
        conn: Executor | None = None,
    ) -> None:
        """The swapped-in table's spec becomes the live one."""
        await (conn or self._pool).execute(
            "UPDATE vector_tables SET spec = $2::jsonb, pending_spec = NULL,"
            " sync_status = CASE WHEN sync_status = 'paused' THEN 'paused' ELSE 'synced' END,"
            " synced_rows = $3, total_rows = $4, last_synced_at = clock_timestamp(),"
            " last_error = NULL, last_error_at = NULL, sync_failures = 0, sync_cursor = NULL,"
            " next_sync_at = clock_timestamp(), updated_at = clock_timestamp() WHERE id = $1",
            vt_id,
            json.dumps(spec.to_json()),
            synced_rows,
            total_rows,
        )

    async def record_error(self, vt_id: str, error: str, *, sync_status: str | None = None) -> None:
        await self._pool.execute(
            "UPDATE vector_tables SET last_error = $2, last_error_at = clock_timestamp(),"
            " sync_status = coalesce($3, sync_status), updated_at = clock_timestamp() WHERE id = $1",
            vt_id,
            error,
            sync_status,
        )

    async def record_progress(self, vt_id: str, *, synced_rows: int, total_rows: int) -> None:
        await self._pool.execute(
            "UPDATE vector_tables SET synced_rows = $2, total_rows = $3, updated_at = clock_timestamp()"
            " WHERE id = $1",
            vt_id,
            synced_rows,
            total_rows,
        )


class TaskStore:
    """Durable tasks with leases: claimed with FOR UPDATE SKIP LOCKED, kept alive by a
    heartbeat, fenced by `lease_owner` on every write, taken over when a lease lapses."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def enqueue(self, *, id: str, org_id: str, task_type: str, target_id: str) -> Task:
        """A new pending task; `backfill_in_progress` while one is queued or running."""
        try:
            row = await self._pool.fetchrow(
                "INSERT INTO tasks (id, org_id, task_type, target_id) VALUES ($1, $2, $3, $4) RETURNING *",
                id,
                org_id,
                task_type,
                target_id,
            )
        except asyncpg.UniqueViolationError as exc:
            raise ApiError(
                Kind.CONFLICT,
                "backfill_in_progress",
                "A backfill of this vector table is already queued or running. Watch it with "
                "GET /v1/tasks?target_id=... and try again when it has finished.",
            ) from exc
        assert row is not None
        return task_from_row(row)

    async def get(self, org_id: str, task_id: str) -> Task | None:
        row = await self._pool.fetchrow("SELECT * FROM tasks WHERE org_id = $1 AND id = $2", org_id, task_id)
        return task_from_row(row) if row else None

    async def get_by_id(self, task_id: str) -> Task | None:
        row = await self._pool.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
        return task_from_row(row) if row else None

    async def list_page(
        self, org_id: str, page: PageRequest, *, target_id: str | None, status: str | None
    ) -> Page[Task]:
        return await fetch_page(
            self._pool,
            "SELECT * FROM tasks WHERE org_id = $1 AND ($2::text IS NULL OR target_id = $2)"
            " AND ($3::text IS NULL OR status = $3)",
            [org_id, target_id, status],
            page,
            task_from_row,
        )

    async def failures(self, task_id: str, limit: int = 100) -> list[tuple[str, str]]:
        rows = await self._pool.fetch(
            "SELECT pk_value, error FROM task_failures WHERE task_id = $1 ORDER BY pk_value LIMIT $2",
            task_id,
            limit,
        )
        return [(r["pk_value"], r["error"]) for r in rows]

    async def claim(self, owner: str, lease_s: float) -> Task | None:
        """The next task for `owner`: pending, or running under a lapsed lease (its process
        died). Tasks out of attempts are failed instead of claimed."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE tasks SET status = 'failed', finished_at = clock_timestamp(),"
                " last_error = coalesce(last_error, 'gave up after ' || attempts || ' attempts'),"
                " lease_owner = NULL, updated_at = clock_timestamp()"
                " WHERE status = 'running' AND lease_expires_at < clock_timestamp()"
                " AND attempts >= max_attempts"
            )
            row = await conn.fetchrow(
                "UPDATE tasks SET status = 'running', lease_owner = $1,"
                " lease_expires_at = clock_timestamp() + make_interval(secs => $2),"
                " attempts = attempts + 1, started_at = coalesce(started_at, clock_timestamp()),"
                " updated_at = clock_timestamp()"
                " WHERE id = (SELECT id FROM tasks"
                "   WHERE status = 'pending' OR (status = 'running' AND lease_expires_at < clock_timestamp())"
                "   ORDER BY priority DESC, created_at FOR UPDATE SKIP LOCKED LIMIT 1)"
                " RETURNING *",
                owner,
                lease_s,
            )
        return task_from_row(row) if row else None

    async def heartbeat(self, task_id: str, owner: str, lease_s: float) -> bool:
        """Extends the lease; False when the task is no longer ours (taken over or deleted)."""
        status = await self._pool.execute(
            "UPDATE tasks SET lease_expires_at = clock_timestamp() + make_interval(secs => $3)"
            " WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
            task_id,
            owner,
            lease_s,
        )
        return bool(status.endswith(" 1"))

    async def checkpoint(
        self,
        task_id: str,
        owner: str,
        *,
        last_pk: str | None,
        rows_processed: int,
        rows_total: int,
        failures: list[tuple[str, str]],
    ) -> bool:
        """Records progress after a committed chunk (fenced by the lease owner)."""
        async with self._pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "UPDATE tasks SET last_processed_pk = $3, rows_processed = $4, rows_total = $5,"
                " rows_failed = rows_failed + $6, updated_at = clock_timestamp()"
                " WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
                task_id,
                owner,
                last_pk,
                rows_processed,
                rows_total,
                len(failures),
            )
            if not status.endswith(" 1"):
                return False
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
        return True

    async def set_total(self, task_id: str, owner: str, rows_total: int) -> None:
        await self._pool.execute(
            "UPDATE tasks SET rows_total = $3 WHERE id = $1 AND lease_owner = $2", task_id, owner, rows_total
        )

    async def complete(self, task_id: str, owner: str, record: Callable[[Executor], Awaitable[None]]) -> None:
        """The task completed and its result recorded (`record`), in one transaction: whoever
        sees the vector table synced sees the task completed too."""
        async with self._pool.acquire() as conn, conn.transaction():
            await self.finish(task_id, owner, conn=conn)
            await record(conn)

    async def finish(
        self,
        task_id: str,
        owner: str,
        *,
        error: str | None = None,
        retry: bool = False,
        conn: Executor | None = None,
    ) -> None:
        """completed (error None), pending again for another attempt (retry), or failed."""
        if error is None:
            status = "completed"
        elif retry:
            status = "pending"
        else:
            status = "failed"
        await (conn or self._pool).execute(
            "UPDATE tasks SET status = $3, last_error = $4, lease_owner = NULL, lease_expires_at = NULL,"
            " finished_at = CASE WHEN $3 IN ('completed', 'failed') THEN clock_timestamp() END,"
            " updated_at = clock_timestamp() WHERE id = $1 AND lease_owner = $2",
            task_id,
            owner,
            status,
            error,
        )

    async def release(self, task_id: str, owner: str) -> None:
        """Gives a task back untouched (this process is shutting down): pending again, and the
        interrupted attempt does not count against `max_attempts`."""
        await self._pool.execute(
            "UPDATE tasks SET status = 'pending', attempts = greatest(attempts - 1, 0), lease_owner = NULL,"
            " lease_expires_at = NULL, updated_at = clock_timestamp() WHERE id = $1 AND lease_owner = $2",
            task_id,
            owner,
        )

    async def fail_active(self, target_id: str, reason: str) -> None:
        await self._pool.execute(
            "UPDATE tasks SET status = 'failed', last_error = $2, lease_owner = NULL,"
            " finished_at = clock_timestamp() WHERE target_id = $1 AND status IN ('pending', 'running')",
            target_id,
            reason,
        )
