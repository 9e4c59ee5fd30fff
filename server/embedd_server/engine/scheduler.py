"""Continuous sync: polls each synced vector table at its own interval, under a lease on the
table row so that exactly one process syncs a table at a time. The lease is renewed while the
cycle runs (the cycle is cancelled the moment it is lost), the cycle's control-plane writes go
through its `SyncLease` (fenced by owner and epoch), and its writer connection holds the
table's fence (sinks/fence.py). A failing table goes to `error`, is retried with exponential
backoff, and recovers by itself when the cause is gone."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import structlog

from embedd_server.domain.leases import LeaseLost
from embedd_server.engine.context import EngineDeps, Fence, cancel_and_wait
from embedd_server.engine.leases import while_leased
from embedd_server.engine.sync import SyncJob, SyncOutcome, cycle_counts, describe
from embedd_server.engine.worker import describe_error, new_owner
from embedd_server.providers.base import ProviderError
from embedd_server.sinks.fence import Holder
from embedd_server.store.vector_tables import SyncClaim

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
                    for claim in await self._vts.claim_due(self.owner, self._settings.lease_s, free):
                        vt_id = claim.table.id
                        self._running[vt_id] = asyncio.create_task(self._cycle(claim), name=f"sync-{vt_id}")
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("claiming sync work failed; retrying", error=str(exc))
            await asyncio.sleep(self._settings.poll_s)

    async def _cycle(self, claim: SyncClaim) -> None:
        structlog.contextvars.bind_contextvars(target_id=claim.table.id)
        lease = claim.lease
        try:
            outcome, full, counts = await while_leased(
                self._sync(claim), lease.renew, self._settings.lease_s, self._deps.clock
            )
            note = None
            if outcome.failures:
                pk, why = outcome.failures[0]
                note = f"{len(outcome.failures)} row(s) could not be embedded (e.g. {pk}: {why})"
            await lease.finish(
                cursor=outcome.cursor,
                swept=full,
                counts=counts,
                note=note,
                skipped=outcome.skipped,
                cycle=cycle_counts(outcome),
            )
            if outcome.changed:
                log.info("synced", changes=describe(outcome))
        except LeaseLost as exc:
            log.warning("sync lease lost; the cycle's results are dropped", reason=str(exc))
        except asyncio.CancelledError:
            raise
        except ProviderError as exc:
            await self._fail(claim, exc.message)
        except Exception as exc:
            log.warning("sync failed", error=str(exc))
            await self._fail(claim, describe_error(exc))
        finally:
            self._running.pop(claim.table.id, None)

    async def _fail(self, claim: SyncClaim, error: str) -> None:
        with contextlib.suppress(LeaseLost, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await claim.lease.fail(error, max_backoff_s=self._settings.max_sync_backoff_s)

    async def _sync(self, claim: SyncClaim) -> tuple[SyncOutcome, bool, tuple[int, int] | None]:
        vt = claim.table
        spec = vt.spec
        cursor = claim.cursor
        since_sweep = claim.since_sweep_s  # by the control plane's clock, like the sweep's stamp
        full = (
            spec.sync_mode != "cdc"
            or cursor is None
            or since_sweep is None
            or since_sweep >= self._settings.cdc_sweep_s
        )
        async with self._deps.session(vt, Fence(Holder.SYNC, claim.lease.renew)) as session:
            store = session.store(spec)
            source = session.source(spec)
            outcome = await SyncJob(
                spec=spec,
                store=store,
                source=source,
                embedder=session.embedder,
                cursor=cursor,
                full=full,
                # managed mode: new rows only while the organisation's vector budget lasts
                budget=await self._vts.vector_budget(vt.org_id) if spec.mode == "managed" else None,
            ).run()
            counts = None
            if outcome.changed:
                counts = (await store.count(), await source.count())
        return outcome, full, counts
