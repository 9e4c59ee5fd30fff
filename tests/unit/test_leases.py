"""Work under a lease (engine/leases.py): renewed while it runs, cancelled the moment the lease
is lost - the control plane says it is not ours, or renewals fail until it has lapsed."""

from __future__ import annotations

import asyncio

import pytest
from embedd_server.domain.leases import LeaseLost
from embedd_server.engine.leases import while_leased

LEASE_S = 0.06  # renewals every 20 ms


class Work:
    """Work that runs until cancelled (or told to finish), recording how it ended."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.finish = asyncio.Event()
        self.cancelled = False

    async def __call__(self) -> str:
        self.started.set()
        try:
            await self.finish.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return "done"


async def test_the_work_is_cancelled_when_the_lease_is_not_ours() -> None:
    work, renewals = Work(), 0

    async def renew() -> None:
        nonlocal renewals
        renewals += 1
        if renewals == 2:
            raise LeaseLost("taken over")

    with pytest.raises(LeaseLost):
        await asyncio.wait_for(while_leased(work(), renew, LEASE_S), 5)
    assert work.cancelled and renewals == 2


async def test_the_work_is_cancelled_once_renewals_failed_for_a_whole_lease() -> None:
    """The control plane is unreachable: the lease lapses there, so the work must stop here."""
    work, attempts = Work(), 0

    async def renew() -> None:
        nonlocal attempts
        attempts += 1
        raise OSError("control plane unreachable")

    with pytest.raises(LeaseLost, match="lapsed"):
        await asyncio.wait_for(while_leased(work(), renew, LEASE_S), 5)
    assert work.cancelled and attempts >= 2  # it kept trying until the lease had lapsed


async def test_failed_renewals_within_the_lease_are_retried() -> None:
    """A blip shorter than the lease (on a clock that does not move) stops nothing."""
    work, attempts = Work(), 0

    async def renew() -> None:
        nonlocal attempts
        attempts += 1
        if attempts >= 5:
            work.finish.set()
        raise OSError("blip")

    result = await asyncio.wait_for(while_leased(work(), renew, LEASE_S, clock=lambda: 0.0), 5)
    assert result == "done" and not work.cancelled and attempts >= 5


async def test_a_renewal_that_hangs_counts_as_failed() -> None:
    work = Work()

    async def renew() -> None:
        await asyncio.Event().wait()  # the control plane never answers

    with pytest.raises(LeaseLost):
        await asyncio.wait_for(while_leased(work(), renew, LEASE_S), 5)
    assert work.cancelled


async def test_the_result_and_errors_of_the_work_pass_through() -> None:
    async def renew() -> None:
        return None

    async def quick() -> int:
        return 7

    async def broken() -> int:
        raise ValueError("the work's own failure")

    assert await while_leased(quick(), renew, LEASE_S) == 7
    with pytest.raises(ValueError, match="own failure"):
        await while_leased(broken(), renew, LEASE_S)


async def test_cancelling_the_caller_cancels_the_work() -> None:
    work = Work()

    async def renew() -> None:
        return None

    outer = asyncio.ensure_future(while_leased(work(), renew, LEASE_S))
    await work.started.wait()
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert work.cancelled
