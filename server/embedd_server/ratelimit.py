"""Request rate limits: one sliding window per organisation, shared by every replica.

The window is the usual sliding-window counter over minutes: a request at fraction `f` of the
current minute counts `previous * (1 - f) + current` against the limit. Counts live in the
control plane (store/ratelimits.py), so two replicas draw on one budget.

A replica does not ask the control plane for every request: it reserves a slice of the
minute's budget at once (one atomic statement that refuses to pass the cap) and admits from
that slice locally, without a round trip. Slices shrink as the budget runs out - down to one
request, where every request is admitted by the control plane itself - so the limit holds
exactly across replicas, and the unused rest of a slice is handed back when its minute ends.
docs/limits.md has the numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import structlog

from embedd_server.domain.errors import ApiError, Kind
from embedd_server.store.ratelimits import RateLimitStore

log = structlog.get_logger(__name__)

WINDOW_S = 60


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_at: int  # Unix seconds: when the current minute stops counting in full
    retry_after_s: int | None = None  # when refused

    def headers(self) -> tuple[tuple[str, str], ...]:
        out: tuple[tuple[str, str], ...] = (
            ("x-ratelimit-limit", str(self.limit)),
            ("x-ratelimit-remaining", str(self.remaining)),
            ("x-ratelimit-reset", str(self.reset_at)),
        )
        if self.retry_after_s is not None:
            out += (("retry-after", str(self.retry_after_s)),)
        return out


def estimate(previous: float, current: float, fraction: float) -> float:
    """Requests counted against the limit at `fraction` (0-1) of the current minute."""
    return previous * (1.0 - fraction) + current


def seconds_until_allowed(previous: int, current: int, limit: int, now: float) -> int:
    """Whole seconds until one more request fits, at least 1."""
    start = math.floor(now / WINDOW_S) * WINDOW_S
    if estimate(previous, current + 1, (now - start) / WINDOW_S) <= limit:
        return 1
    if current + 1 <= limit and previous > 0:
        # The previous minute's weight must shrink: previous * (1 - f) <= limit - current - 1.
        fraction = 1.0 - (limit - current - 1) / previous
        wait = start + fraction * WINDOW_S - now
    else:
        # Only next minute, once this one's weight has shrunk enough.
        fraction = 1.0 - (limit - 1) / current if current > 0 else 0.0
        wait = start + WINDOW_S + max(fraction, 0.0) * WINDOW_S - now
    return max(1, math.ceil(wait))


@dataclass
class _Window:
    """This replica's view of one organisation's minute."""

    minute: int
    previous: int = 0  # the previous minute's count, read once per minute
    current: int = 0  # this minute's count as the control plane last said (reservations included)
    reserved: int = 0  # reserved by this replica and not used yet
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one reservation at a time


class RateLimiter:
    def __init__(
        self,
        store: RateLimitStore,
        *,
        slice_fraction: float = 0.05,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._slice_fraction = slice_fraction
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._prune_loop(), name="rate-limit-prune")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            for org_id, window in list(self._windows.items()):
                await self._give_back(org_id, window)

    async def admit(self, org_id: str, limit: int) -> Decision:
        """Counts one request of `org_id` against `limit` requests per minute."""
        now = self._clock()
        minute = int(now // WINDOW_S)
        reset_at = (minute + 1) * WINDOW_S
        window = self._windows.get(org_id)
        if window is None or window.minute != minute or window.reserved == 0:
            window = await self._reserve(org_id, minute, limit, now)
        if window.reserved == 0:
            retry = seconds_until_allowed(window.previous, window.current, limit, now)
            return Decision(False, limit, 0, math.ceil(now) + retry, retry)
        window.reserved -= 1  # the fast path: no round trip
        cap = _cap(limit, window.previous, now)
        return Decision(True, limit, max(0, cap - window.current + window.reserved), reset_at)

    async def _reserve(self, org_id: str, minute: int, limit: int, now: float) -> _Window:
        """A fresh slice of the minute's budget for this replica (none when it is used up)."""
        window = self._windows.get(org_id)
        if window is None or window.minute != minute:
            if window is not None:
                await self._give_back(org_id, window)
            if len(self._windows) > 100_000:
                self._windows.clear()
            window = _Window(minute)
            window.previous, window.current = await self._store.counts(org_id, minute)
            self._windows[org_id] = window
        async with window.lock:
            if window.reserved:
                return window  # another request reserved while this one waited
            cap = _cap(limit, window.previous, now)
            left = cap - window.current
            size = max(1, min(math.floor(limit * self._slice_fraction), left // 4))
            for n in (size, 1) if size > 1 else (1,):
                count = await self._store.add(org_id, minute, n, cap)
                if count is not None:
                    window.current, window.reserved = count, n
                    return window
            window.previous, window.current = await self._store.counts(org_id, minute)
        return window

    async def _give_back(self, org_id: str, window: _Window) -> None:
        """Hands the unused rest of a reservation back to its minute's count."""
        if window.reserved:
            unused, window.reserved = window.reserved, 0
            await self._store.add(org_id, window.minute, -unused)

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(WINDOW_S)
            try:
                await self._store.prune(int(self._clock() // WINDOW_S) - 2)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("pruning rate limit counts failed", error=str(exc))


def _cap(limit: int, previous: int, now: float) -> int:
    """This minute's count may reach `cap`: the limit less the previous minute's weight."""
    return math.floor(limit - previous * (1.0 - (now % WINDOW_S) / WINDOW_S))


def exceeded(decision: Decision) -> ApiError:
    """The 429 of a refused request, with RetryInfo / Retry-After and the limit headers."""
    return ApiError(
        Kind.RATE_LIMITED,
        "rate_limit_exceeded",
        f"This organisation's limit of {decision.limit} requests per minute is used up (all its "
        f"API keys share it). Retry in {decision.retry_after_s} s, or ask for a higher limit "
        "or tier.",
        retry_after_s=decision.retry_after_s,
        headers=decision.headers(),
    )
