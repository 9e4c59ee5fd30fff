"""The query-embedding cache: concurrent misses share one provider call, and a waiter that is
cancelled (its client went away) never takes the others down with it."""

from __future__ import annotations

import asyncio

import pytest
from embedd_server.domain.errors import ApiError, Kind
from embedd_server.engine.query import QueryEmbeddingCache

KEY = ("emb_1", "model", 3, "a tent")


class Provider:
    """One slow provider call at a time, released by the test."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.error: Exception | None = None

    async def compute(self) -> bytes:
        self.calls += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return b"vector"


async def _waiting(cache: QueryEmbeddingCache, provider: Provider) -> asyncio.Task[bytes]:
    task = asyncio.ensure_future(cache.get_or_compute(KEY, provider.compute))
    await asyncio.sleep(0)  # let it reach the shared call
    return task


async def test_a_cancelled_first_waiter_does_not_cancel_the_others() -> None:
    cache, provider = QueryEmbeddingCache(), Provider()
    first = await _waiting(cache, provider)  # starts the provider call
    second = await _waiting(cache, provider)
    third = await _waiting(cache, provider)
    first.cancel()
    await asyncio.sleep(0)
    provider.release.set()
    assert await second == b"vector" and await third == b"vector"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert provider.calls == 1 and cache.get(KEY) == b"vector"


async def test_when_every_waiter_left_the_call_still_fills_the_cache() -> None:
    cache, provider = QueryEmbeddingCache(), Provider()
    only = await _waiting(cache, provider)
    only.cancel()
    await asyncio.sleep(0)
    provider.release.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert cache.get(KEY) == b"vector"
    assert await cache.get_or_compute(KEY, provider.compute) == b"vector" and provider.calls == 1


async def test_a_failed_call_reaches_every_waiter_and_is_not_cached() -> None:
    cache, provider = QueryEmbeddingCache(), Provider()
    provider.error = ApiError(Kind.UNAVAILABLE, "embedding_provider_error", "down")
    waiters = [await _waiting(cache, provider) for _ in range(3)]
    provider.release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, ApiError) and r.code == "embedding_provider_error" for r in results)
    assert cache.get(KEY) is None
    provider.error = None
    assert await cache.get_or_compute(KEY, provider.compute) == b"vector" and provider.calls == 2
