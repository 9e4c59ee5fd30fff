"""Claims tasks from the control plane and runs them, several at a time, under leases.

Any number of server processes can share one control plane: a task is claimed with
`FOR UPDATE SKIP LOCKED` under a new lease epoch, the lease is renewed while the task runs
(engine/leases.py: the task is cancelled the moment it is lost), every control-plane write is
made through the task's `TaskLease` (fenced by owner and epoch), and the writer connection to
the user's database holds the table's fence (sinks/fence.py). A task whose process died or
stalled is taken over once its lease lapses.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import structlog

from embedd_server.domain.leases import LeaseLost
from embedd_server.domain.models import Task, VectorTable
from embedd_server.domain.vector_tables import VectorTableSpec, import_applies
from embedd_server.engine.backfill import BackfillJob, Checkpoint, Progress
from embedd_server.engine.batch_backfill import BatchBackfillJob, Waiting
from embedd_server.engine.budget import within_budget
from embedd_server.engine.context import (
    ConnectionLost,
    EngineDeps,
    Fence,
    PermanentError,
    TableSession,
    cancel_and_wait,
)
from embedd_server.engine.leases import while_leased
from embedd_server.engine.rebackfill import RebackfillJob
from embedd_server.network_policy import NetworkPolicyDenied
from embedd_server.providers.base import ProviderError
from embedd_server.sinks.base import VectorStore
from embedd_server.sinks.fence import Holder
from embedd_server.store.embedding_batches import BatchLedger
from embedd_server.store.tasks import TaskLease

log = structlog.get_logger(__name__)
T = TypeVar("T")
# Records a finished task's result: one of the lease's `complete*` writes.
Completion = Callable[[], Awaitable[None]]


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    def __init__(self, deps: EngineDeps) -> None:
        self._deps = deps
        self._tasks = deps.tasks
        self._vts = deps.vector_tables
        self._settings = deps.settings
        self.owner = new_owner()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="embedd-worker")

    @property
    def running_tasks(self) -> frozenset[str]:
        """Ids of the tasks this process is working on now."""
        return frozenset(self._running)

    def wake(self) -> None:
        """Look for work now (a task was just queued in this process)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stops claiming; running tasks are cancelled and keep their checkpoint. Their lease
        is released so that another process resumes them at once."""
        await cancel_and_wait(self._loop_task, *self._running.values())

    async def _loop(self) -> None:
        while True:
            try:
                while len(self._running) < self._settings.max_tasks:
                    claimed = await self._tasks.claim(self.owner, self._settings.lease_s)
                    if claimed is None:
                        break
                    task_id = claimed.task.id
                    self._running[task_id] = asyncio.create_task(self._run(claimed), name=task_id)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("claiming tasks failed; retrying", error=str(exc))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.poll_s)

    async def _run(self, lease: TaskLease) -> None:
        task = lease.task
        structlog.contextvars.bind_contextvars(task_id=task.id, target_id=task.target_id)
        try:
            complete = await while_leased(
                self._execute(lease), lease.renew, self._settings.lease_s, self._deps.clock
            )
            await complete()
            log.info("task attempt done", task_type=task.task_type)
        except LeaseLost as exc:
            log.warning("lease lost; the task is not ours any more", reason=str(exc))
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(lease.release())
            raise
        except (PermanentError, NetworkPolicyDenied) as exc:
            await self._fail(lease, str(exc), retry=False)
        except ProviderError as exc:
            await self._fail(lease, exc.message, retry=exc.code not in ("bad_key", "network_policy_denied"))
        except Exception as exc:
            if not connection_lost(exc):  # a database that restarted is no bug: no traceback
                log.exception("task attempt failed")
            await self._fail(lease, describe_error(exc), retry=True)
        finally:
            self._running.pop(task.id, None)
            self._wake.set()

    async def _fail(self, lease: TaskLease, error: str, *, retry: bool) -> None:
        attempt = lease.task.attempts
        retry = retry and attempt < lease.task.max_attempts
        delay = retry_delay(self._settings.retry_backoff_s, attempt)
        log.warning("task attempt failed", error=error, retry=retry, attempt=attempt, retry_in_s=delay)
        try:
            await lease.fail(error, retry=retry, retry_in_s=delay)
        except LeaseLost as exc:
            log.warning("lease lost; the failure is not recorded", reason=str(exc))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # The lease lapses and the next claim retries the task (or gives up on it).
            log.warning("recording the failure failed", error=str(exc))

    def _checkpoint(self, lease: TaskLease, vt: VectorTable, *, live: bool) -> Checkpoint:
        async def checkpoint(p: Progress) -> None:
            await lease.checkpoint(
                last_pk=p.last_pk,
                rows_processed=p.rows_processed,
                rows_total=p.rows_total,
                failures=p.failures,
                # a re-backfill leaves the live table's numbers alone until the swap
                live_table=vt.id if live else None,
                rows_imported=p.rows_imported,
            )

        return checkpoint

    async def _execute(self, lease: TaskLease) -> Completion:
        """Does the work; returns how to record its result (in the task's completing transaction)."""
        task = lease.task
        vt = await self._vts.get_by_id(task.target_id)
        if vt is None:
            raise PermanentError("the vector table was deleted")
        if task.task_type == "rebackfill":
            return await self._rebackfill(lease, vt)
        if (task.embedding_strategy or vt.spec.embedding_strategy) == "batch":
            return await self._batch_fill(lease, vt)
        await lease.start(vt.id)
        async with self._deps.session(vt, Fence(Holder.TASK, lease.renew)) as session:
            job = BackfillJob(
                task=task,
                spec=vt.spec,
                store=session.store(vt.spec),
                source=session.source(vt.spec),
                embedder=session.embedder,
                checkpoint=self._checkpoint(lease, vt, live=True),
                chunk_rows=self._settings.chunk_rows,
                inflight=self._settings.inflight_chunks,
                maintenance_work_mem=self._settings.maintenance_work_mem,
                budget=await self._budget(vt, task),
                use_import=import_applies(vt.spec, first_fill=vt.last_synced_at is None),
                set_phase=lease.set_phase,
                written=functools.partial(_written, lease, vt.id),
                index_progress=lease.index_progress,
            )
            await _guard(job.run())
        return functools.partial(lease.complete_indexing, vt.id, index_status=job.index_status)

    async def _batch_fill(self, lease: TaskLease, vt: VectorTable) -> Completion:
        """One step of a fill through the provider's batch API: parks the task until the next
        poll, or completes it (docs/batch.md)."""
        await lease.start(vt.id)
        async with self._deps.session(vt, Fence(Holder.TASK, lease.renew)) as session:
            first_fill = vt.last_synced_at is None
            store = session.store(vt.spec)
            # A managed table's vector budget, as it stands at this step: what the
            # organisation's other tables leave, less what this table's store holds.
            budget = (
                await self._vts.vector_budget(vt.org_id, excluding=vt.id)
                if vt.spec.mode == "managed"
                else None
            )
            if budget is not None:
                budget = max(budget - await store.count(), 0)
            job = await self._batch_job(
                lease, vt, vt.spec, within_budget(store, budget), session, first_fill=first_fill, live=True
            )
            outcome = await _guard(job.step())
            indexed = isinstance(outcome, Waiting) or await store.has_index()
        if isinstance(outcome, Waiting):
            return functools.partial(lease.park, outcome.delay_s)
        skipped = 0
        if budget is not None:  # rows neither stored nor failed were over the budget
            skipped = max(job.rows_total - outcome - lease.task.rows_failed, 0)
        return functools.partial(
            lease.complete_fill,
            vt.id,
            synced_rows=outcome,
            total_rows=job.rows_total,
            rows_skipped=skipped,
            index_status="ready" if indexed else "none",
        )

    async def _batch_job(
        self,
        lease: TaskLease,
        vt: VectorTable,
        spec: VectorTableSpec,
        store: VectorStore,
        session: TableSession,
        *,
        first_fill: bool,
        live: bool,
    ) -> BatchBackfillJob:
        record = await self._deps.providers.get_by_id(vt.embedding_provider_id)
        if record is None:
            raise PermanentError("the vector table's embedding provider was deleted")
        batch = self._settings.batch
        api, requests = self._deps.embedders.batch(
            record,
            spec.embedding_model,
            spec.embedding_dimensions,
            inputs_per_request=batch.inputs_per_request,
        )
        return BatchBackfillJob(
            task=lease.task,
            spec=spec,
            store=store,
            source=session.source(spec),
            embedder=session.embedder,
            api=api,
            requests=requests,
            # a re-backfill leaves the live table's numbers alone until the swap
            ledger=BatchLedger(lease, vt.id if live else None),
            confirm=lease.renew,
            settings=batch,
            chunk_rows=self._settings.chunk_rows,
            use_import=import_applies(spec, first_fill=first_fill),
            maintenance_work_mem=self._settings.maintenance_work_mem,
        )

    async def _rebackfill(self, lease: TaskLease, vt: VectorTable) -> Completion:
        spec = vt.pending_spec
        if spec is None:
            return lease.complete  # swapped already (the control plane was updated before a crash)
        await lease.start(vt.id)
        async with self._deps.session(vt, Fence(Holder.TASK, lease.renew), spec) as session:

            async def batch_fill(replacement: VectorStore) -> Waiting | None:
                job = await self._batch_job(
                    lease, vt, spec, replacement, session, first_fill=False, live=False
                )
                outcome = await job.step()
                return outcome if isinstance(outcome, Waiting) else None

            batched = (lease.task.embedding_strategy or spec.embedding_strategy) == "batch"
            job = RebackfillJob(
                task=lease.task,
                live_spec=vt.spec,
                spec=spec,
                live=session.store(vt.spec),
                source=session.source(spec),
                embedder=session.embedder,
                checkpoint=self._checkpoint(lease, vt, live=False),
                confirm=lease.renew,
                use_import=import_applies(spec, first_fill=False),
                batch_fill=batch_fill if batched else None,
                chunk_rows=self._settings.chunk_rows,
                inflight=self._settings.inflight_chunks,
                maintenance_work_mem=self._settings.maintenance_work_mem,
                budget=await self._budget(vt, lease.task),
                set_phase=lease.set_phase,
            )
            outcome = await _guard(job.run())
        if isinstance(outcome, Waiting):
            return functools.partial(lease.park, outcome.delay_s)
        vectors, total = outcome
        return functools.partial(
            lease.complete_swap,
            vt.id,
            spec,
            synced_rows=vectors,
            total_rows=total,
            rows_skipped=job.rows_skipped,
            index_status=job.index_status,
        )

    async def _budget(self, vt: VectorTable, task: Task) -> int | None:
        """The vectors a managed fill may write: the organisation's budget beside its other
        tables (this table's own vectors are what the fill replaces), less what this task
        wrote before it was resumed. Platform mode: no limit."""
        if vt.spec.mode != "managed":
            return None
        budget = await self._vts.vector_budget(vt.org_id, excluding=vt.id)
        if budget is not None and task.last_processed_pk is not None:
            budget = max(budget - (task.rows_processed - task.rows_failed), 0)
        return budget


async def _written(lease: TaskLease, vt_id: str, vectors: int, total: int, skipped: int) -> None:
    await lease.mark_written(vt_id, synced_rows=vectors, total_rows=total, rows_skipped=skipped)


async def _guard(work: Awaitable[T]) -> T:
    """Database errors that retrying cannot fix become permanent failures. A job's stages run
    in an anyio task group, which wraps the failure of a stage in an ExceptionGroup: the
    failure itself is what is classified (a ProviderError stays one, not "internal error")."""
    try:
        try:
            return await work
        except ExceptionGroup as group:
            raise _first_failure(group) from group
    except asyncpg.InsufficientPrivilegeError as exc:
        raise PermanentError(f"permission denied in the source database: {exc}") from exc
    except asyncpg.UndefinedTableError as exc:
        raise PermanentError(f"the source table is gone: {exc}") from exc


def _first_failure(group: ExceptionGroup[Exception]) -> Exception:
    first = group.exceptions[0]
    return _first_failure(first) if isinstance(first, ExceptionGroup) else first


_CONNECTION_LOST = (
    ConnectionLost,  # the user's database, whatever the driver raised (engine/context.py)
    OSError,  # refused, reset, timed out
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.AdminShutdownError,  # 57P01: shutting down, or a new lease holder ended the session
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.CannotConnectNowError,  # 57P03: starting up or shutting down
    asyncpg.IdleSessionTimeoutError,
    # a pooled connection left mid-operation by a session that ended (store/db.acquire)
    asyncpg.InternalClientError,
)
# The longest pause before a failed attempt is retried.
MAX_RETRY_DELAY_S = 600.0


def retry_delay(base_s: float, attempt: int) -> float:
    """The pause after failed attempt number `attempt` (1-based): `base_s`, then 4x longer
    each time. With the default 5 s and 3 attempts a task rides out 25 s of an unreachable
    database or provider before it fails."""
    return min(base_s * 4.0 ** max(attempt - 1, 0), MAX_RETRY_DELAY_S)


def connection_lost(exc: BaseException) -> bool:
    """A database connection went away under the work (a restart, a failover, a dropped
    network, the session ended by a new lease holder): retrying is all there is to do."""
    return isinstance(exc, _CONNECTION_LOST)


def describe_error(exc: BaseException) -> str:
    """A failure as users see it in `last_error`: the kind and the database's own words,
    never a traceback."""
    if isinstance(exc, asyncpg.PostgresError):
        return f"database error {exc.sqlstate}: {exc}"
    if isinstance(exc, NetworkPolicyDenied):
        return str(exc)
    if isinstance(exc, OSError | TimeoutError):
        return f"could not reach the database: {exc.__class__.__name__}"
    if isinstance(exc, ConnectionLost):
        return str(exc)
    return f"internal error ({exc.__class__.__name__}); the server's log has the details"
