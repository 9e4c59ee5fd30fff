"""API-key authentication, permission and environment scoping."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar

from embedd_server.domain.errors import ApiError, Kind, not_found
from embedd_server.domain.models import Principal
from embedd_server.store.orgs import OrgStore

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
    """Turns request metadata into a `Principal`, or an ApiError saying what to fix."""

    def __init__(self, orgs: OrgStore) -> None:
        self._orgs = orgs

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
        found = await self._orgs.find_key_and_environment(secret, env_ref)
        if found is None:
            raise _unauthorized("This API key is not valid. Check it, or create a new one.")
        key, env_id = found
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
        return Principal(org_id=key.org_id, key_id=key.id, permission=key.permission, env_id=env_id)
