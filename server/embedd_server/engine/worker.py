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
from dataclasses import dataclass

import asyncpg
import structlog

from embedd_server.domain.credentials import decode_credentials
from embedd_server.domain.models import Task
from embedd_server.engine.backfill import BackfillJob, LeaseLost, Progress
from embedd_server.providers.base import ProviderError
from embedd_server.providers.registry import EmbedderRegistry
from embedd_server.secretbox import SecretBox
from embedd_server.sinks.pgvector import register_vector_codec
from embedd_server.sources.postgres import connect
from embedd_server.store.connections import ConnectionStore, EmbeddingProviderStore
from embedd_server.store.vector_tables import TaskStore, VectorTableStore

log = structlog.get_logger(__name__)


class PermanentError(Exception):
    """Retrying will not help (deleted table, bad key, no privilege): fail the task now."""


@dataclass(frozen=True, slots=True)
class EngineSettings:
    chunk_rows: int = 1000
    inflight_chunks: int = 4
    max_tasks: int = 4
    lease_s: float = 30.0
    poll_s: float = 0.5
    maintenance_work_mem: str = ""
    connect_timeout_s: float = 10.0


class Worker:
    def __init__(
        self,
        *,
        tasks: TaskStore,
        vector_tables: VectorTableStore,
        connections: ConnectionStore,
        providers: EmbeddingProviderStore,
        embedders: EmbedderRegistry,
        secrets: SecretBox,
        settings: EngineSettings,
    ) -> None:
        self._tasks = tasks
        self._vts = vector_tables
        self._connections = connections
        self._providers = providers
        self._embedders = embedders
        self._secrets = secrets
        self._settings = settings
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
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
        if self._loop_task:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        running = list(self._running.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

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
            await self._execute(task)
            await self._tasks.finish(task.id, self.owner)
            log.info("task completed")
        except LeaseLost:
            log.warning("lease lost; another process has the task")
        except asyncio.CancelledError:
            await self._release(task)
            raise
        except PermanentError as exc:
            await self._fail(task, str(exc), retry=False)
        except ProviderError as exc:
            await self._fail(task, exc.message, retry=exc.code not in ("bad_key",))
        except Exception as exc:
            log.exception("task attempt failed")
            await self._fail(task, _describe(exc), retry=True)
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
            await asyncio.shield(self._tasks.finish(task.id, self.owner, error="interrupted", retry=True))

    async def _fail(self, task: Task, error: str, *, retry: bool) -> None:
        retry = retry and task.attempts < task.max_attempts
        log.warning("task attempt failed", error=error, retry=retry, attempt=task.attempts)
        await self._tasks.finish(task.id, self.owner, error=error, retry=retry)
        await self._vts.record_error(task.target_id, error, sync_status=None if retry else "error")

    async def _execute(self, task: Task) -> None:
        vt = await self._vts.get_by_id(task.target_id)
        if vt is None:
            raise PermanentError("the vector table was deleted")
        connection = await self._connections.get_by_id(vt.connection_id)
        provider = await self._providers.get_by_id(vt.embedding_provider_id)
        if connection is None or provider is None:
            raise PermanentError("the vector table's connection or embedding provider was deleted")
        creds = decode_credentials(self._secrets.decrypt(connection.credentials_enc, bound_to=connection.id))
        embedder = self._embedders.get(provider, vt.spec.embedding_model, vt.spec.embedding_dimensions)
        await self._vts.set_status(vt.id, "backfilling")
        timeout = self._settings.connect_timeout_s
        reader = await connect(creds, timeout_s=timeout)
        writer = await connect(creds, timeout_s=timeout)
        try:
            await register_vector_codec(writer)

            async def checkpoint(p: Progress) -> bool:
                ok = await self._tasks.checkpoint(
                    task.id,
                    self.owner,
                    last_pk=p.last_pk,
                    rows_processed=p.rows_processed,
                    rows_total=p.rows_total,
                    failures=p.failures,
                )
                if ok:
                    await self._vts.record_progress(
                        vt.id, synced_rows=p.rows_processed, total_rows=max(p.rows_total, p.rows_processed)
                    )
                return ok

            job = BackfillJob(
                task=task,
                table=vt,
                embedder=embedder,
                reader=reader,
                writer=writer,
                checkpoint=checkpoint,
                chunk_rows=self._settings.chunk_rows,
                inflight=self._settings.inflight_chunks,
                maintenance_work_mem=self._settings.maintenance_work_mem,
            )
            try:
                synced = await job.run()
            except asyncpg.InsufficientPrivilegeError as exc:
                raise PermanentError(f"permission denied in the source database: {exc}") from exc
            except asyncpg.UndefinedTableError as exc:
                raise PermanentError(f"the source table is gone: {exc}") from exc
            await self._vts.record_synced(vt.id, synced_rows=synced, total_rows=job.rows_total)
        finally:
            await asyncio.gather(reader.close(), writer.close(), return_exceptions=True)


def _describe(exc: BaseException) -> str:
    """A failure as users see it in `last_error`: the kind and the database's own words,
    never a traceback."""
    if isinstance(exc, asyncpg.PostgresError):
        return f"database error {exc.sqlstate}: {exc}"
    if isinstance(exc, OSError | TimeoutError):
        return f"could not reach the database: {exc.__class__.__name__}"
    return f"internal error ({exc.__class__.__name__}); it is retried"
