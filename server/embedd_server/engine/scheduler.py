"""Continuous sync: polls each synced vector table at its own interval, under a lease on the
table row so that exactly one process syncs a table at a time. A failing table goes to
`error`, is retried with exponential backoff, and recovers by itself when the cause is gone."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt

import asyncpg
import structlog

from embedd_server.domain.models import VectorTable
from embedd_server.engine.context import EngineDeps, cancel_and_wait
from embedd_server.engine.sync import SyncJob, SyncOutcome, describe
from embedd_server.engine.worker import describe_error, new_owner
from embedd_server.providers.base import ProviderError
from embedd_server.sinks.pgvector import PgVectorTable
from embedd_server.sources.queries import count_rows

log = structlog.get_logger(__name__)


class SyncScheduler:
    def __init__(self, deps: EngineDeps) -> None:
        self._deps = deps
        self._vts = deps.vector_tables
        self._settings = deps.settings
        self.owner = new_owner()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="embedd-sync")

    async def stop(self) -> None:
        await cancel_and_wait(self._loop_task, *self._running.values())

    async def _loop(self) -> None:
        while True:
            free = self._settings.max_tasks - len(self._running)
            if free > 0:
                try:
                    for vt in await self._vts.claim_due(self.owner, self._settings.lease_s, free):
                        self._running[vt.id] = asyncio.create_task(self._cycle(vt), name=f"sync-{vt.id}")
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("claiming sync work failed; retrying", error=str(exc))
            await asyncio.sleep(self._settings.poll_s)

    async def _cycle(self, vt: VectorTable) -> None:
        structlog.contextvars.bind_contextvars(target_id=vt.id)
        started = dt.datetime.now(dt.UTC)
        keepalive = asyncio.create_task(self._keep_lease(vt.id))
        try:
            outcome, full, counts = await self._sync(vt)
            note = None
            if outcome.failures:
                pk, why = outcome.failures[0]
                note = f"{len(outcome.failures)} row(s) could not be embedded (e.g. {pk}: {why})"
            await self._vts.finish_sync(
                vt.id,
                self.owner,
                started_at=started,
                cursor=outcome.cursor,
                swept=full,
                counts=counts,
                note=note,
            )
            if outcome.changed:
                log.info("synced", changes=describe(outcome))
        except asyncio.CancelledError:
            raise
        except ProviderError as exc:
            await self._fail(vt, exc.message)
        except Exception as exc:
            log.warning("sync failed", error=str(exc))
            await self._fail(vt, describe_error(exc))
        finally:
            keepalive.cancel()
            self._running.pop(vt.id, None)

    async def _fail(self, vt: VectorTable, error: str) -> None:
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            await self._vts.fail_sync(
                vt.id, self.owner, error, max_backoff_s=self._settings.max_sync_backoff_s
            )

    async def _keep_lease(self, vt_id: str) -> None:
        while True:
            await asyncio.sleep(self._settings.lease_s / 3)
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                await self._vts.renew_sync_lease(vt_id, self.owner, self._settings.lease_s)

    async def _sync(self, vt: VectorTable) -> tuple[SyncOutcome, bool, tuple[int, int] | None]:
        spec = vt.spec
        state = await self._vts.sync_state(vt.id)
        cursor = state["sync_cursor"] if state else None
        last_sweep = state["last_delete_sweep_at"] if state else None
        full = spec.sync_mode != "cdc" or cursor is None or last_sweep is None
        if not full and last_sweep is not None:
            full = (dt.datetime.now(dt.UTC) - last_sweep).total_seconds() >= self._settings.cdc_sweep_s
        async with self._deps.session(vt) as session:
            target = PgVectorTable(spec.target_schema, vt.platform_vector_ref, spec.embedding_dimensions)
            outcome = await SyncJob(
                spec=spec,
                target=target,
                embedder=session.embedder,
                reader=session.reader,
                writer=session.writer,
                chunk_rows=self._settings.chunk_rows,
                cursor=cursor,
                full=full,
            ).run()
            counts = None
            if outcome.changed:
                total = int(await session.reader.fetchval(count_rows(spec)))
                counts = (await target.count(session.writer), total)
        return outcome, full, counts
