"""Vector tables in the control plane: the API's reads and writes (scoped by organisation and
environment), and the sync schedule, whose cycles write only through their `SyncLease`."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from embedd_server.domain import tiers
from embedd_server.domain.errors import not_found
from embedd_server.domain.leases import Lease, LeaseLost
from embedd_server.domain.models import Page, Task, VectorTable
from embedd_server.domain.validation import PageRequest
from embedd_server.domain.vector_tables import VectorTableSpec
from embedd_server.store.db import Executor
from embedd_server.store.paging import fetch_page
from embedd_server.store.tasks import insert_task, task_from_json

# Seconds since the last sync by the control plane's own clock: one clock for the write and
# the read, so skew between replicas never makes it negative.
_STALENESS = (
    "CASE WHEN last_synced_at IS NOT NULL THEN"
    " greatest(0, extract(epoch FROM clock_timestamp() - last_synced_at))::float8 END AS staleness_s"
)
# The index build's share done while a fill builds it: the fill task's own phase progress
# (read as a vector table `v`).
_INDEX_PROGRESS = (
    "(SELECT t.phase_progress FROM tasks t WHERE t.target_id = v.id AND t.status = 'running'"
    " AND t.phase = 'indexing' LIMIT 1) AS index_progress"
)


def _spec(value: object) -> VectorTableSpec | None:
    if value is None:
        return None
    return VectorTableSpec.from_json(json.loads(value) if isinstance(value, str) else value)  # type: ignore[arg-type]


# A fill that has written every row and builds its index (docs/indexes.md): its table is
# synced, sync cycles run, and a resumed table is synced rather than backfilling.
_NOT_INDEXING = "NOT (t.task_type = 'backfill' AND t.phase IS NOT DISTINCT FROM 'indexing')"


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
        staleness_s=r.get("staleness_s"),
        rows_skipped=r["rows_skipped"],
        index_status=r["index_status"],
        index_progress=r.get("index_progress"),
        rows_imported=r["rows_imported"],
        batch_tokens=r["batch_tokens"],
    )


# Managed vector tables of one organisation, every environment (tier limits are per organisation).
_MANAGED = "FROM vector_tables WHERE org_id = $1 AND spec->>'mode' = 'managed'"


async def _check_table_limit(conn: Executor, org_id: str) -> None:
    """Raises `tier_limit_reached` when the organisation has all the managed tables its tier
    allows. The organisation's row is locked first (FOR NO KEY UPDATE: foreign-key checks of
    other inserts do not wait), so two concurrent creates cannot both take the last place."""
    tier_name = await conn.fetchval("SELECT tier FROM orgs WHERE id = $1 FOR NO KEY UPDATE", org_id)
    t = tiers.tier(tier_name)
    if t.max_tables is None:
        return
    count = await conn.fetchval("SELECT count(*) " + _MANAGED, org_id)
    if count >= t.max_tables:
        raise tiers.table_limit_reached(t)


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
        foreign keys decide, so a concurrent delete cannot leave a dangling table); a 403 when
        a managed table would pass the organisation's tier's table limit."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if spec.mode == "managed":
                    await _check_table_limit(conn, org_id)
                row = await conn.fetchrow(
                    "INSERT INTO vector_tables (id, org_id, env_id, name, connection_id,"
                    " embedding_provider_id, spec, platform_vector_ref)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8) RETURNING *",
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
            f"SELECT v.*, {_STALENESS}, {_INDEX_PROGRESS} FROM vector_tables v"  # noqa: S608 - constants
            " WHERE v.org_id = $1 AND v.env_id = $2 AND v.id = $3",
            org_id,
            env_id,
            vt_id,
        )
        return _vt(row) if row else None

    async def vector_budget(self, org_id: str, *, excluding: str | None = None) -> int | None:
        """Managed vectors the organisation may still add: its tier's `max_vectors` less the
        vectors its managed tables hold (but `excluding`'s, which a fill replaces); None:
        unlimited."""
        row = await self._pool.fetchrow(
            "SELECT o.tier, (SELECT coalesce(sum(synced_rows), 0)::bigint "  # noqa: S608 - constants
            + _MANAGED
            + " AND id IS DISTINCT FROM $2::text) AS used FROM orgs o WHERE o.id = $1",
            org_id,
            excluding,
        )
        return tiers.vector_budget(row["tier"], row["used"]) if row else 0

    async def org_tier(self, org_id: str) -> str:
        tier_name: str = await self._pool.fetchval("SELECT tier FROM orgs WHERE id = $1", org_id)
        return tier_name

    async def get_watched(
        self, org_id: str, env_id: str, vt_id: str
    ) -> tuple[VectorTable, Task | None, int] | None:
        """The table, its latest backfill or re-backfill, and its latest event sequence, read
        together: the state a watch starts from and the sequence it is current to."""
        row = await self._pool.fetchrow(
            f"SELECT v.*, {_STALENESS}, {_INDEX_PROGRESS},"  # noqa: S608 - constants
            " (SELECT to_jsonb(t) FROM tasks t WHERE t.target_id = v.id"
            "   ORDER BY t.created_at DESC, t.id DESC LIMIT 1) AS latest_task"
            " FROM vector_tables v WHERE v.org_id = $1 AND v.env_id = $2 AND v.id = $3",
            org_id,
            env_id,
            vt_id,
        )
        if row is None:
            return None
        latest = row["latest_task"]
        task = task_from_json(json.loads(latest)) if latest is not None else None
        return _vt(row), task, row["event_sequence"]

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
        """The row and its tasks, in one transaction. Tasks go first: the order a task lease
        locks in (task row, then table row), so a delete never deadlocks with a task's write;
        the task's holder gets LeaseLost at its next one."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM tasks WHERE target_id ="
                " (SELECT id FROM vector_tables WHERE org_id = $1 AND env_id = $2 AND id = $3)",
                org_id,
                env_id,
                vt_id,
            )
            status = await conn.execute(
                "DELETE FROM vector_tables WHERE org_id = $1 AND env_id = $2 AND id = $3",
                org_id,
                env_id,
                vt_id,
            )
        return bool(status.endswith(" 1"))

    # --- sync scheduling ----------------------------------------------------------------

    async def claim_due(self, owner: str, lease_s: float, limit: int) -> list[SyncClaim]:
        """Tables due for a sync poll, leased to `owner` under a new epoch: filled once, synced
        or in error (retried with backoff), not paused, no backfill queued or running, no live
        lease elsewhere. A table whose first fill failed is left to a new backfill (which
        resumes that fill): a cycle would embed its missing rows behind the user's back, and
        again beside the backfill they ask for."""
        rows = await self._pool.fetch(
            "UPDATE vector_tables SET sync_lease_owner = $1, sync_lease_epoch = sync_lease_epoch + 1,"  # noqa: S608 - a constant
            " sync_lease_expires_at = clock_timestamp() + make_interval(secs => $2)"
            " WHERE id IN (SELECT v.id FROM vector_tables v"
            "   WHERE v.sync_status IN ('synced', 'error') AND v.last_synced_at IS NOT NULL"
            "   AND coalesce(v.next_sync_at, '-infinity') <= clock_timestamp()"
            "   AND (v.sync_lease_expires_at IS NULL OR v.sync_lease_expires_at < clock_timestamp())"
            # none while a fill is queued or running - but for its index build: the table
            # is synced by then, and changes go on (docs/indexes.md)
            "   AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.target_id = v.id"
            f"                   AND t.status IN ('pending', 'running') AND {_NOT_INDEXING})"
            "   ORDER BY v.next_sync_at NULLS FIRST FOR UPDATE SKIP LOCKED LIMIT $3)"
            " RETURNING *, clock_timestamp() AS claimed_at,"
            " extract(epoch FROM clock_timestamp() - last_delete_sweep_at)::float8 AS since_sweep_s",
            owner,
            lease_s,
            limit,
        )
        return [
            SyncClaim(
                table=_vt(r),
                lease=SyncLease(
                    self._pool, r["id"], Lease(owner, r["sync_lease_epoch"]), lease_s, r["claimed_at"]
                ),
                cursor=r["sync_cursor"],
                since_sweep_s=r["since_sweep_s"],
            )
            for r in rows
        ]

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
            "UPDATE vector_tables v SET sync_status = CASE"  # noqa: S608 - a constant
            "   WHEN EXISTS (SELECT 1 FROM tasks t WHERE t.target_id = v.id AND t.status = 'running'"
            f"     AND {_NOT_INDEXING}) THEN 'backfilling'"
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
        self, vt: VectorTable, *, name: str, provider_id: str, pending: VectorTableSpec, task_id: str
    ) -> None:
        """Records the new spec to build and queues the re-backfill that builds it, in one
        transaction: a worker can never claim the task before it can see the spec. The live
        spec keeps serving until the swap. `backfill_in_progress` while a fill is queued."""
        async with self._pool.acquire() as conn, conn.transaction():
            await insert_task(
                conn,
                id=task_id,
                org_id=vt.org_id,
                env_id=vt.env_id,
                task_type="rebackfill",
                target_id=vt.id,
                embedding_strategy=pending.embedding_strategy,
            )
            await conn.execute(
                "UPDATE vector_tables SET name = $2, embedding_provider_id = $3, pending_spec = $4::jsonb,"
                " sync_status = CASE WHEN sync_status = 'paused' THEN 'paused' ELSE 'pending_rebackfill' END,"
                " updated_at = clock_timestamp() WHERE id = $1",
                vt.id,
                name,
                provider_id,
                json.dumps(pending.to_json()),
            )

    async def update_in_place(self, vt_id: str, name: str, spec: VectorTableSpec, provider_id: str) -> None:
        """A change that needs no re-embedding and no new table (name, sync settings, key).
        A new interval applies at once: the next poll is due no later than one new interval
        from now (it may stay sooner)."""
        await self._pool.execute(
            "UPDATE vector_tables SET name = $2, spec = $3::jsonb, embedding_provider_id = $4,"
            " next_sync_at = CASE"
            "   WHEN next_sync_at IS NOT NULL AND spec->'sync_interval_seconds'"
            "        IS DISTINCT FROM $3::jsonb->'sync_interval_seconds'"
            "   THEN least(next_sync_at, clock_timestamp()"
            "        + make_interval(secs => ($3::jsonb->>'sync_interval_seconds')::int))"
            "   ELSE next_sync_at END,"
            " updated_at = clock_timestamp() WHERE id = $1",
            vt_id,
            name,
            json.dumps(spec.to_json()),
            provider_id,
        )


@dataclass(frozen=True, slots=True)
class SyncClaim:
    """A table claimed for one sync cycle: its row, the lease, and where cdc left off."""

    table: VectorTable
    lease: SyncLease
    cursor: str | None
    since_sweep_s: float | None  # by the control plane's clock; None before the first sweep


class SyncLease:
    """Every write of one sync cycle. Each is a single statement conditioned on the lease
    (owner and epoch), so a late cycle whose table was claimed again gets LeaseLost."""

    def __init__(
        self, pool: asyncpg.Pool[Any], vt_id: str, lease: Lease, lease_s: float, claimed_at: dt.datetime
    ) -> None:
        self._pool = pool
        self.vt_id = vt_id
        self.token = lease
        self._lease_s = lease_s
        # The control plane's clock at the claim, before the cycle's snapshot of the source:
        # what `last_synced_at` becomes (conservative, and on the clock staleness is read by).
        self.claimed_at = claimed_at

    def _lost(self) -> LeaseLost:
        return LeaseLost(f"the sync lease of {self.vt_id} is no longer held by {self.token.owner}")

    async def _write(self, sql: str, *args: object) -> None:
        status = await self._pool.execute(sql, self.vt_id, self.token.owner, self.token.epoch, *args)
        if not status.endswith(" 1"):
            raise self._lost()

    async def renew(self) -> None:
        await self._write(
            "UPDATE vector_tables SET sync_lease_expires_at = clock_timestamp() + make_interval(secs => $4)"
            " WHERE id = $1 AND sync_lease_owner = $2 AND sync_lease_epoch = $3",
            self._lease_s,
        )

    async def finish(
        self,
        *,
        cursor: str | None,
        swept: bool,
        counts: tuple[int, int] | None,
        note: str | None = None,
        skipped: int = 0,
        cycle: dict[str, int | bool] | None = None,
    ) -> None:
        """A successful cycle: fresh as of its claim, next poll scheduled, lease released, and
        what it did (`cycle`: its counts) recorded, which watchers receive as an event.
        `skipped`: new rows over the vector budget. A full cycle saw every such row, so its
        count replaces the table's; a cdc cycle saw only recent ones, so they are added (the
        next sweep counts them all again)."""
        await self._write(
            "UPDATE vector_tables SET"
            " sync_status = CASE WHEN sync_status = 'error' THEN 'synced' ELSE sync_status END,"
            " last_synced_at = $4, last_error = $9,"
            " last_error_at = CASE WHEN $9::text IS NULL THEN NULL ELSE clock_timestamp() END,"
            " sync_failures = 0, sync_cursor = $5,"
            " last_delete_sweep_at = CASE WHEN $6 THEN $4 ELSE last_delete_sweep_at END,"
            " rows_skipped = CASE WHEN $6 THEN $10 ELSE rows_skipped + $10 END,"
            " synced_rows = coalesce($7, synced_rows), total_rows = coalesce($8, total_rows),"
            " next_sync_at = clock_timestamp()"
            " + make_interval(secs => (spec->>'sync_interval_seconds')::int),"
            " sync_lease_owner = NULL, sync_lease_expires_at = NULL, updated_at = clock_timestamp(),"
            " last_cycle = coalesce($11::jsonb || jsonb_build_object("
            "   'duration_ms', extract(epoch FROM clock_timestamp() - $4) * 1000,"
            "   'finished_at', clock_timestamp()), last_cycle)"
            " WHERE id = $1 AND sync_lease_owner = $2 AND sync_lease_epoch = $3",
            self.claimed_at,
            cursor,
            swept,
            counts[0] if counts else None,
            counts[1] if counts else None,
            note,
            skipped,
            json.dumps(cycle) if cycle is not None else None,
        )

    async def fail(self, error: str, *, max_backoff_s: float) -> None:
        """A failed cycle: `error` (unless paused meanwhile), retried with exponential backoff."""
        await self._write(
            "UPDATE vector_tables SET"
            " sync_status = CASE WHEN sync_status = 'paused' THEN 'paused' ELSE 'error' END,"
            " last_error = $4, last_error_at = clock_timestamp(), sync_failures = sync_failures + 1,"
            " next_sync_at = clock_timestamp() + make_interval(secs => least($5,"
            "   (spec->>'sync_interval_seconds')::int * power(2, least(sync_failures, 16)))),"
            " sync_lease_owner = NULL, sync_lease_expires_at = NULL, updated_at = clock_timestamp()"
            " WHERE id = $1 AND sync_lease_owner = $2 AND sync_lease_epoch = $3",
            error,
            max_backoff_s,
        )
