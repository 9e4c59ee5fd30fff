"""The limiter's copy of the provider's buckets, its AIMD window, and the learned batch size."""

from __future__ import annotations

import asyncio
import time

import pytest
from embedd_server.providers.batching import InputLimit
from embedd_server.providers.http import parse_duration
from embedd_server.providers.limiter import AdaptiveLimiter, Bucket, RateLimits


def headers(remaining: float, reset: str, limit: int = 60_000) -> dict[str, str]:
    return {
        "x-ratelimit-limit-tokens": str(limit),
        "x-ratelimit-remaining-tokens": str(int(remaining)),
        "x-ratelimit-reset-tokens": reset,
    }


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("6m0s", 360.0), ("1s", 1.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0s", 0.0), ("500µs", 0.0005)],
)
def test_openai_durations(value: str, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "1", "soon", "1.5.s", "-1s"])
def test_not_durations(value: str) -> None:
    assert parse_duration(value) is None


def test_a_sync_counts_what_was_sent_after_and_what_waits() -> None:
    bucket = Bucket(60_000, headroom=1.0, burst_s=60, now=0.0)
    for _ in range(3):
        bucket.reserve(1000, 0.0)
    first = bucket.send(1000)
    bucket.send(1000)  # sent after the first: the provider may not have counted it yet
    bucket.sync(60_000, 50_000, parse_duration("10s"), first, now=0.0)
    # 50,000 left when the first was admitted, minus the second (sent) and the third (waiting).
    assert bucket.available(0.0) == pytest.approx(48_000)
    assert bucket.capacity == pytest.approx(60_000)  # 50,000 + 10 s x 1,000/s
    # An answer to an earlier request, arriving late, is older news: ignored.
    bucket.sync(60_000, 10_000, None, first - 1, now=0.0)
    assert bucket.available(0.0) == pytest.approx(48_000)


def test_a_request_sent_before_but_still_unanswered_may_not_be_counted_yet() -> None:
    """Two requests go together; the second reaches the provider first and is answered first:
    its `remaining` does not include the first, which is still in flight."""
    bucket = Bucket(60_000, headroom=1.0, burst_s=60, now=0.0)
    bucket.reserve(1000, 0.0)
    bucket.reserve(2000, 0.0)
    first, second = bucket.send(1000), bucket.send(2000)
    bucket.sync(60_000, 58_000, None, second, now=0.0)
    assert bucket.available(0.0) == pytest.approx(57_000)
    bucket.answered(first)
    bucket.answered(second)
    bucket.reserve(500, 0.0)
    third = bucket.send(500)  # answered requests are in its `remaining`: nothing to subtract
    bucket.sync(60_000, 55_000, None, third, now=0.0)
    assert bucket.available(0.0) == pytest.approx(55_000)


def test_a_shorter_window_shows_in_the_reset() -> None:
    """A provider enforcing 5 s of budget rather than a minute: capacity = remaining + reset x rate."""
    bucket = Bucket(60_000, headroom=1.0, burst_s=60, now=0.0)
    bucket.sync(60_000, 1_000, parse_duration("4s"), 0.0, now=0.0)
    assert bucket.capacity == pytest.approx(5_000)
    assert bucket.available(100.0) == pytest.approx(5_000)  # refills to that, not to 60,000


async def test_the_remaining_allowance_is_spent_at_once() -> None:
    """The provider says 59,000 tokens remain: 50 requests of 1,000 go without waiting (pacing
    at the nominal rate from the start would spread them over ~50 s)."""
    limiter = AdaptiveLimiter(RateLimits(tpm=60_000), initial_window=64, max_window=64)
    probe = await limiter.acquire(1000)
    limiter.release(probe)
    limiter.on_success(probe, 1000, headers(59_000, "1s"))
    started = time.monotonic()
    tickets = await asyncio.wait_for(asyncio.gather(*(limiter.acquire(1000) for _ in range(50))), 2.0)
    assert time.monotonic() - started < 0.5 and len(tickets) == 50


async def test_then_requests_go_at_the_refill_rate() -> None:
    limiter = AdaptiveLimiter(RateLimits(tpm=6_000))  # 100 tokens/s
    probe = await limiter.acquire(100)
    limiter.release(probe)
    limiter.on_success(probe, 100, headers(0, "60s", limit=6_000))
    started = time.monotonic()
    ticket = await limiter.acquire(30)
    assert 0.25 <= time.monotonic() - started < 0.6  # 30 tokens at 100/s
    limiter.release(ticket)
    assert ticket.cost == pytest.approx(30)


async def test_a_429_with_rate_headers_is_the_budget_not_congestion() -> None:
    limiter = AdaptiveLimiter(RateLimits(tpm=60_000), initial_window=8)
    ticket = await limiter.acquire(1000)
    limiter.release(ticket)
    pause = limiter.on_throttle(ticket, 0.05, 1.0, headers(200, "59s"))
    assert pause == 0.05 and limiter.window == 8 and limiter.learned_window is None


async def test_a_429_without_headers_halves_the_window_and_is_remembered() -> None:
    limiter = AdaptiveLimiter(initial_window=8)
    ticket = await limiter.acquire(10)
    limiter.release(ticket)
    limiter.on_throttle(ticket, None, 0.01)
    assert limiter.window == 4 and limiter.learned_window == 7
    limiter.on_failure()  # the same congestion event: no second cut
    assert limiter.window == 4


async def test_limits_learned_while_requests_wait_for_the_window_still_apply_to_them() -> None:
    """Unknown limits: one probe in flight, the others wait for the window. The probe's answer
    says the budget is spent: those waiting do not go before it refills."""
    limiter = AdaptiveLimiter()
    probe = await limiter.acquire(100)
    waiting = asyncio.create_task(limiter.acquire(50))
    await asyncio.sleep(0.01)
    limiter.release(probe)  # as the embedder does: release, then the outcome (no await between)
    limiter.on_success(probe, 100, headers(0, "60s", limit=6_000))  # 100 tokens/s, none left
    started = time.monotonic()
    ticket = await asyncio.wait_for(waiting, 2.0)
    assert time.monotonic() - started >= 0.4  # 50 tokens at 100/s
    limiter.release(ticket)


async def test_a_cancelled_request_gives_its_reservation_back() -> None:
    limiter = AdaptiveLimiter(RateLimits(tpm=60_000), initial_window=1)
    first = await limiter.acquire(1000)
    limiter.on_success(first, 1000, headers(10_000, "50s"))
    blocked = asyncio.create_task(limiter.acquire(5000))  # budget taken, waits for the window
    await asyncio.sleep(0.01)
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    limiter.release(first)
    started = time.monotonic()
    await asyncio.wait_for(limiter.acquire(9000), 1.0)  # fits only if the 5,000 came back
    assert time.monotonic() - started < 0.2


def test_an_unknown_servers_batch_size_is_learned_from_refusals() -> None:
    limit = InputLimit(2048, 2048)
    assert limit.learned is None
    limit.on_too_large(1000, stated=32)  # TEI: "batch size 1000 > maximum allowed batch size 32"
    assert limit.value == 32 and limit.learned == 32
    limit.on_too_large(500)  # planned before the limit was lowered: says nothing new
    assert limit.value == 32
    limit.on_too_large(32)  # the server was reconfigured smaller, without saying to what
    assert limit.value == 16 and limit.learned == 16
    limit.on_too_large(1)  # one input too long: not the batch size
    assert limit.value == 16


def test_a_fixed_batch_size_never_changes() -> None:
    limit = InputLimit(100, 2048, fixed=True)
    limit.on_too_large(100, stated=10)
    assert limit.value == 100 and limit.learned is None


async def test_a_429_pauses_requests_already_waiting_for_the_window() -> None:
    limiter = AdaptiveLimiter(initial_window=1)
    first = await limiter.acquire(10)
    waiting = asyncio.create_task(limiter.acquire(10))
    await asyncio.sleep(0.01)
    limiter.release(first)
    limiter.on_throttle(first, 0.3, 1.0)
    started = time.monotonic()
    ticket = await asyncio.wait_for(waiting, 2.0)
    assert time.monotonic() - started >= 0.25
    limiter.release(ticket)
