"""Work under a lease: renewed while the work runs, and the work cancelled the moment the
lease is lost - told so by the control plane, or renewals failing until it has lapsed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import asyncpg
import structlog

from embedd_server.domain.leases import LeaseLost

log = structlog.get_logger(__name__)
T = TypeVar("T")
Clock = Callable[[], float]


async def keep(renew: Callable[[], Awaitable[None]], lease_s: float, clock: Clock = time.monotonic) -> None:
    """Renews every `lease_s / 3` until cancelled. Raises LeaseLost when a renewal says the row
    is not ours, or when no renewal has succeeded for `lease_s` (counted from when the last
    good one was sent, so by then the lease has lapsed by the database's clock too)."""
    renewed_at = clock()  # the claim itself
    while True:
        await asyncio.sleep(lease_s / 3)
        sent_at = clock()
        try:
            await asyncio.wait_for(renew(), timeout=max(renewed_at + lease_s - sent_at, 0.0))
            renewed_at = sent_at
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # TimeoutError: an OSError
            if clock() - renewed_at >= lease_s:
                raise LeaseLost(f"the lease lapsed: no renewal for {lease_s:g}s ({exc!r})") from exc
            log.warning("lease renewal failed; retrying", error=repr(exc))


async def while_leased(
    work: Coroutine[Any, Any, T],
    renew: Callable[[], Awaitable[None]],
    lease_s: float,
    clock: Clock = time.monotonic,
) -> T:
    """Runs `work` while `keep` renews its lease. When the lease is lost, `work` is cancelled
    (and waited for) and LeaseLost raised; when this call is cancelled, both are."""
    runner: asyncio.Task[T] = asyncio.ensure_future(work)
    keeper = asyncio.ensure_future(keep(renew, lease_s, clock))
    try:
        await asyncio.wait((runner, keeper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not runner.done():
            runner.cancel()
        keeper.cancel()
        await asyncio.gather(runner, keeper, return_exceptions=True)
    if keeper.done() and not keeper.cancelled() and keeper.exception() is not None and not _ok(runner):
        keeper.result()  # LeaseLost (the runner was cancelled for it)
    return runner.result()


def _ok(task: asyncio.Task[Any]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None
