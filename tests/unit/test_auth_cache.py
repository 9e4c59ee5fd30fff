"""The API-key cache: a revocation holds at once, even for a lookup that was already in flight
when it landed (it read the key before the revoke and must not cache it)."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from embedd_server.auth import Authenticator
from embedd_server.domain.errors import ApiError
from embedd_server.domain.models import ApiKey

SECRET = "sk_" + "a" * 40
METHOD = "/embedd.v1.ConnectionService/ListConnections"
HEADERS = {"authorization": f"Bearer {SECRET}"}


class BlockingStore:
    """Answers lookups from `key`; the next lookup waits at `gate` once `hold` is set."""

    def __init__(self) -> None:
        self.key = ApiKey("key_1", "org_1", "k", SECRET[:8], "full", dt.datetime.now(dt.UTC), None)
        self.lookups = 0
        self.hold = False
        self.reading = asyncio.Event()
        self.gate = asyncio.Event()

    async def find_key_and_environment(
        self, secret: str, env_ref: str
    ) -> tuple[ApiKey, str | None, int | None] | None:
        self.lookups += 1
        answer = (self.key, "env_1", None)  # read before the revoke commits
        if self.hold:
            self.reading.set()
            await self.gate.wait()
        return answer

    def revoke(self) -> None:
        self.key = ApiKey(
            self.key.id, "org_1", "k", SECRET[:8], "full", self.key.created_at, dt.datetime.now(dt.UTC)
        )


async def test_a_lookup_in_flight_during_a_revoke_does_not_cache_the_key() -> None:
    store = BlockingStore()
    auth = Authenticator(store)  # type: ignore[arg-type]
    auth.enable_cache()
    store.hold = True
    in_flight = asyncio.ensure_future(auth.authenticate(HEADERS, METHOD))
    await store.reading.wait()  # the lookup has read the (still valid) key...
    store.revoke()  # ...the revoke commits, and its NOTIFY arrives
    auth.invalidate("key_1")
    store.gate.set()
    await in_flight  # it began before the revoke: it may still pass
    assert not auth.cached("key_1")
    store.hold = False
    with pytest.raises(ApiError) as info:
        await auth.authenticate(HEADERS, METHOD)
    assert info.value.code == "key_revoked" and store.lookups == 2


async def test_valid_keys_are_cached_until_invalidated() -> None:
    store = BlockingStore()
    auth = Authenticator(store)  # type: ignore[arg-type]
    auth.enable_cache()
    for _ in range(3):
        await auth.authenticate(HEADERS, METHOD)
    assert store.lookups == 1 and auth.cached("key_1")
    auth.invalidate("key_1")
    assert not auth.cached("key_1")
    await auth.authenticate(HEADERS, METHOD)
    assert store.lookups == 2
