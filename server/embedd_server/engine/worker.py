"""Claims tasks from the control plane and runs them, several at a time, under leases.

Any number of server processes can share one control plane: a task is claimed with
`FOR UPDATE SKIP LOCKED`, its lease is renewed by a heartbeat, every checkpoint is fenced by
the lease owner, and a task whose process died is taken over once its lease lapses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import structlog

from embedd_server.domain.models import Task, VectorTable
from embedd_server.engine.backfill import BackfillJob, LeaseLost, Progress
from embedd_server.engine.context import EngineDeps, PermanentError, cancel_and_wait
from embedd_server.engine.rebackfill import RebackfillJob
from embedd_server.network_policy import NetworkPolicyDenied
from embedd_server.providers.base import ProviderError
from embedd_server.store.db import Executor

log = structlog.get_logger(__name__)
T = TypeVar("T")
# Records a finished task's result, given the connection of the completing transaction.
Record = Callable[[Executor], Awaitable[None]]


async def _nothing(conn: Executor) -> None:
    return None


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
                    self._running[claimed.id] = asyncio.create_task(self._run(claimed), name=claimed.id)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("claiming tasks failed; retrying", error=str(exc))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.poll_s)

    async def _run(self, task: Task) -> None:
        structlog.contextvars.bind_contextvars(task_id=task.id, target_id=task.target_id)
        heartbeat = asyncio.create_task(self._heartbeat(task.id, asyncio.current_task()))
        try:
            record = await self._execute(task)
            await self._tasks.complete(task.id, self.owner, record)
            log.info("task completed", task_type=task.task_type)
        except LeaseLost:
            log.warning("lease lost; another process has the task")
        except asyncio.CancelledError:
            await self._release(task)
            raise
        except (PermanentError, NetworkPolicyDenied) as exc:
            await self._fail(task, str(exc), retry=False)
        except ProviderError as exc:
            await self._fail(task, exc.message, retry=exc.code not in ("bad_key", "network_policy_denied"))
        except Exception as exc:
            log.exception("task attempt failed")
            await self._fail(task, describe_error(exc), retry=True)
        finally:
            heartbeat.cancel()
            self._running.pop(task.id, None)
            self._wake.set()

    async def _heartbeat(self, task_id: str, runner: asyncio.Task[None] | None) -> None:
        while True:
            await asyncio.sleep(self._settings.lease_s / 3)
            try:
                still_ours = await self._tasks.heartbeat(task_id, self.owner, self._settings.lease_s)
            except (OSError, asyncpg.PostgresError):
                continue  # the control plane blipped; the lease has slack for two misses
            if not still_ours and runner is not None:
                runner.cancel()
                return

    async def _release(self, task: Task) -> None:
        with contextlib.suppress(Exception):
            await asyncio.shield(self._tasks.release(task.id, self.owner))

    async def _fail(self, task: Task, error: str, *, retry: bool) -> None:
        retry = retry and task.attempts < task.max_attempts
        log.warning("task attempt failed", error=error, retry=retry, attempt=task.attempts)
        await self._tasks.finish(task.id, self.owner, error=error, retry=retry)
        await self._vts.record_error(task.target_id, error, sync_status=None if retry else "error")

    def _checkpoint(
        self, task: Task, vt: VectorTable, *, live: bool
    ) -> Callable[[Progress], Awaitable[bool]]:
        async def checkpoint(p: Progress) -> bool:
            ok = await self._tasks.checkpoint(
                task.id,
                self.owner,
                last_pk=p.last_pk,
                rows_processed=p.rows_processed,
                rows_total=p.rows_total,
                failures=p.failures,
            )
            if ok and live:  # a re-backfill leaves the live table's numbers alone until the swap
                await self._vts.record_progress(
                    vt.id, synced_rows=p.rows_processed, total_rows=max(p.rows_total, p.rows_processed)
                )
            return ok

        return checkpoint

    async def _execute(self, task: Task) -> Record:
        """Does the work; returns how to record its result (in the task's completing transaction)."""
        vt = await self._vts.get_by_id(task.target_id)
        if vt is None:
            raise PermanentError("the vector table was deleted")
        if task.task_type == "rebackfill":
            return await self._rebackfill(task, vt)
        await self._vts.set_status(vt.id, "backfilling")
        async with self._deps.session(vt) as session:
            job = BackfillJob(
                task=task,
                table=vt,
                embedder=session.embedder,
                reader=session.reader,
                writer=session.writer,
                checkpoint=self._checkpoint(task, vt, live=True),
                chunk_rows=self._settings.chunk_rows,
                inflight=self._settings.inflight_chunks,
                maintenance_work_mem=self._settings.maintenance_work_mem,
            )
            synced = await _guard(job.run())
        return lambda conn: self._vts.record_synced(
            vt.id, synced_rows=synced, total_rows=job.rows_total, conn=conn
        )

    async def _rebackfill(self, task: Task, vt: VectorTable) -> Record:
        spec = vt.pending_spec
        if spec is None:
            return _nothing  # swapped already (the control plane was updated before a crash)
        await self._vts.set_status(vt.id, "backfilling")
        async with self._deps.session(vt, spec) as session:
            job = RebackfillJob(
                task=task,
                table=vt,
                spec=spec,
                session=session,
                checkpoint=self._checkpoint(task, vt, live=False),
                chunk_rows=self._settings.chunk_rows,
                inflight=self._settings.inflight_chunks,
                maintenance_work_mem=self._settings.maintenance_work_mem,
            )
            vectors, total = await _guard(job.run())
        return lambda conn: self._vts.complete_swap(
            vt.id, spec, synced_rows=vectors, total_rows=total, conn=conn
        )


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


def describe_error(exc: BaseException) -> str:
    """A failure as users see it in `last_error`: the kind and the database's own words,
    never a traceback."""
    if isinstance(exc, asyncpg.PostgresError):
        return f"database error {exc.sqlstate}: {exc}"
    if isinstance(exc, NetworkPolicyDenied):
        return str(exc)
    if isinstance(exc, OSError | TimeoutError):
        return f"could not reach the database: {exc.__class__.__name__}"
    return f"internal error ({exc.__class__.__name__}); the server's log has the details"
