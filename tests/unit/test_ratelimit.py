"""The sliding-window rate limiter: the window's arithmetic, the exact path near the limit, the
local fast path far from it, and one budget shared by replicas (a fake control plane)."""

from __future__ import annotations

import asyncio

from embedd_server.ratelimit import WINDOW_S, RateLimiter, estimate, seconds_until_allowed


class Store:
    """RateLimitStore's contract in memory: atomic capped adds per (org, minute)."""

    def __init__(self) -> None:
        self.by_minute: dict[tuple[str, int], int] = {}
        self.adds = 0

    async def add(self, org_id: str, minute: int, n: int, cap: int | None = None) -> int | None:
        self.adds += 1
        now = self.by_minute.get((org_id, minute), 0)
        if cap is not None and now + n > cap:
            return None
        self.by_minute[(org_id, minute)] = now + n
        return now + n

    async def counts(self, org_id: str, minute: int) -> tuple[int, int]:
        return self.by_minute.get((org_id, minute - 1), 0), self.by_minute.get((org_id, minute), 0)

    async def prune(self, before_minute: int) -> None:
        return None


def test_window_arithmetic() -> None:
    assert estimate(100, 10, 0.25) == 85
    # 10 of 10 used this minute: next minute, once its weight 10 * (1 - f) + 1 <= 10 (f 0.1).
    assert seconds_until_allowed(0, 10, 10, now=120.0) == 66
    # 5 this minute, 20 in the previous one, limit 20 at the minute's start: 20 * (1 - f) <= 14
    # once f >= 0.3, i.e. 18 s in.
    assert seconds_until_allowed(20, 5, 20, now=120.0) == 18
    assert seconds_until_allowed(0, 0, 5, now=120.5) == 1  # never less than a second


async def test_exact_near_the_limit() -> None:
    store, clock = Store(), [1000 * WINDOW_S + 1.0]
    rl = RateLimiter(store, clock=lambda: clock[0])  # type: ignore[arg-type]
    decisions = [await rl.admit("org", 3) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    refused = decisions[-1]
    # Next minute, once 3 * (1 - f) + 1 <= 3: f = 1/3, 20 s in; 79 s from 1 s into this one.
    assert refused.retry_after_s == 79 and refused.reset_at == int(clock[0]) + 79
    assert dict(refused.headers())["retry-after"] == "79"
    assert dict(decisions[0].headers()) == {
        "x-ratelimit-limit": "3",
        "x-ratelimit-remaining": "2",
        "x-ratelimit-reset": str(1001 * WINDOW_S),
    }
    # A minute later the previous minute still weighs: 3 * (1 - 0.5) = 1.5 of 3 used.
    clock[0] += WINDOW_S + 29.0
    assert (await rl.admit("org", 3)).allowed
    assert not (await rl.admit("org", 3)).allowed


async def test_replicas_share_one_budget() -> None:
    store, clock = Store(), [5000 * WINDOW_S]
    a = RateLimiter(store, clock=lambda: clock[0])  # type: ignore[arg-type]
    b = RateLimiter(store, clock=lambda: clock[0])  # type: ignore[arg-type]
    results = [(await (a if i % 2 else b).admit("org", 20)).allowed for i in range(30)]
    assert sum(results) == 20 and results[:20] == [True] * 20


async def test_fast_path_costs_no_round_trip() -> None:
    store, clock = Store(), [9000 * WINDOW_S]
    rl = RateLimiter(store, clock=lambda: clock[0])  # type: ignore[arg-type]
    decisions = [await rl.admit("org", 1000) for _ in range(500)]
    assert all(d.allowed for d in decisions)
    assert store.adds == 10  # slices of 50 (5 % of the limit): one round trip per 50 requests
    assert [d.remaining for d in decisions[:3]] == [999, 998, 997]
    # The minute ends: the unused rest of the slice goes back, the count is what was used.
    clock[0] += WINDOW_S
    await rl.admit("org", 1000)
    assert store.by_minute[("org", 9000)] == 500


async def test_slices_shrink_to_one_request_near_the_limit() -> None:
    store, clock = Store(), [3000 * WINDOW_S]
    a = RateLimiter(store, clock=lambda: clock[0])  # type: ignore[arg-type]
    b = RateLimiter(store, clock=lambda: clock[0])  # type: ignore[arg-type]
    allowed = [(await (a if i % 3 else b).admit("org", 100)).allowed for i in range(150)]
    # Reservations never pass the cap, and what a replica reserved is the replica's to use:
    # the budget may come out a little short (slices held by the other), never over.
    assert 95 <= sum(allowed) <= 100
    assert store.by_minute[("org", 3000)] <= 100


async def test_concurrent_admits_never_pass_the_cap() -> None:
    store, clock = Store(), [7000 * WINDOW_S]
    replicas = [RateLimiter(store, clock=lambda: clock[0]) for _ in range(3)]  # type: ignore[arg-type]
    decisions = await asyncio.gather(*(replicas[i % 3].admit("org", 7) for i in range(30)))
    assert sum(d.allowed for d in decisions) == 7
