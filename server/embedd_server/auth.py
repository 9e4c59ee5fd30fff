"""API-key authentication, permission and environment scoping."""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextvars import ContextVar

from embedd_server.domain.errors import ApiError, Kind, not_found
from embedd_server.domain.models import ApiKey, Principal
from embedd_server.store.orgs import OrgStore, hash_key

_principal: ContextVar[Principal] = ContextVar("principal")

# Methods a read_only key may call: every Get/List/Watch, and the query (a read in Embedd).
_READ_PREFIXES = ("Get", "List", "Watch")
_READ_METHODS = frozenset({"QueryVectorTable"})


def current_principal() -> Principal:
    """The caller of the RPC being served (set by the interceptor)."""
    return _principal.get()


def set_principal(principal: Principal) -> object:
    return _principal.set(principal)


def is_read_method(full_method: str) -> bool:
    """`/embedd.v1.ConnectionService/GetConnection` -> True."""
    name = full_method.rsplit("/", 1)[-1]
    return name.startswith(_READ_PREFIXES) or name in _READ_METHODS


def _unauthorized(message: str) -> ApiError:
    return ApiError(Kind.UNAUTHENTICATED, "unauthorized", message)


class Authenticator:
    """Turns request metadata into a `Principal`, or an ApiError saying what to fix.

    Every call needs its key looked up, so valid lookups are cached for `ttl_s`. Revocation
    still takes effect at once: the revoking process drops the entry itself, and every other
    replica hears it through NOTIFY (`invalidate`); while that channel is down, nothing is
    cached (`caching` off). A lookup still in flight when an invalidation lands may have read
    the key before the revoke: it is answered but not cached (`_generation` moved on)."""

    def __init__(self, orgs: OrgStore, ttl_s: float = 30.0) -> None:
        self._orgs = orgs
        self._ttl = ttl_s
        # (key hash, environment reference) -> (expiry, key, environment id, request limit)
        self._cache: dict[tuple[str, str], tuple[float, ApiKey, str, int | None]] = {}
        self.caching = False
        # Bumped by every invalidation: a lookup caches its answer only if none landed while
        # it ran.
        self._generation = 0

    def cached(self, key_id: str) -> bool:
        return any(entry[1].id == key_id for entry in self._cache.values())

    def invalidate(self, ident: str) -> None:
        """Forget what is cached about a key, an environment or an organisation (by id)."""
        self._generation += 1
        for cache_key, (_, key, env_id, _) in list(self._cache.items()):
            if ident in (key.id, env_id, key.org_id):
                self._cache.pop(cache_key, None)

    def enable_cache(self) -> None:
        self.caching = True

    def disable_cache(self) -> None:
        """Invalidations may be missed now: cache nothing until they can be heard again."""
        self.caching = False
        self._generation += 1
        self._cache.clear()

    async def _lookup(self, secret: str, env_ref: str) -> tuple[ApiKey, str | None, int | None] | None:
        cache_key = (hash_key(secret).hex(), env_ref)  # the secret itself is never kept
        now = time.monotonic()
        hit = self._cache.get(cache_key)
        if hit is not None and hit[0] > now and self.caching:
            return hit[1], hit[2], hit[3]
        generation = self._generation
        found = await self._orgs.find_key_and_environment(secret, env_ref)
        fresh = generation == self._generation
        if (
            found is not None
            and found[0].revoked_at is None
            and found[1] is not None
            and self.caching
            and fresh
        ):
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[cache_key] = (now + self._ttl, found[0], found[1], found[2])
        return found

    async def authenticate(self, metadata: Mapping[str, str], full_method: str) -> Principal:
        header = metadata.get("authorization", "")
        if not header:
            raise _unauthorized(
                "Missing API key. Send the header 'Authorization: Bearer sk_...' "
                "(gRPC metadata 'authorization')."
            )
        scheme, _, secret = header.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret.startswith("sk_"):
            raise _unauthorized("Malformed Authorization header. Use 'Authorization: Bearer sk_...'.")
        env_ref = metadata.get("x-environment-id", "").strip()
        found = await self._lookup(secret, env_ref)
        if found is None:
            raise _unauthorized("This API key is not valid. Check it, or create a new one.")
        key, env_id, limit = found
        if key.revoked_at is not None:
            raise ApiError(
                Kind.UNAUTHENTICATED,
                "key_revoked",
                "This API key was revoked. Create a new key and use it instead.",
            )
        if key.permission != "full" and not is_read_method(full_method):
            raise ApiError(
                Kind.PERMISSION_DENIED,
                "permission_denied",
                "This API key is read_only: it may read and query, nothing else. "
                "Use a key with permission 'full'.",
            )
        if env_id is None:
            raise not_found("environment_not_found", "Environment", env_ref)
        return Principal(
            org_id=key.org_id,
            key_id=key.id,
            permission=key.permission,
            env_id=env_id,
            requests_per_minute=limit,
        )
