"""The service's error vocabulary, free of any transport.

Every user-facing failure is an `ApiError` carrying a stable Embedd error code (the
`reason` of `google.rpc.ErrorInfo`, and `error.code` over REST), a message that says what
to do, and a `Kind` that fixes its gRPC status and HTTP status in one place
(`embedd_server.errors`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field


class Kind(enum.Enum):
    """Error families. Each maps to one gRPC status and one HTTP status."""

    INVALID = "invalid"  # 400 INVALID_ARGUMENT
    UNAUTHENTICATED = "unauthenticated"  # 401
    PERMISSION_DENIED = "permission_denied"  # 403
    NOT_FOUND = "not_found"  # 404
    ALREADY_EXISTS = "already_exists"  # 409 ALREADY_EXISTS: the name is taken
    CONFLICT = "conflict"  # 409 FAILED_PRECONDITION: wrong state (paused, busy, dependents)
    NOT_READY = "not_ready"  # 422 FAILED_PRECONDITION: not ready for this yet
    RATE_LIMITED = "rate_limited"  # 429 RESOURCE_EXHAUSTED
    UNIMPLEMENTED = "unimplemented"  # 501
    UNAVAILABLE = "unavailable"  # 503
    INTERNAL = "internal"  # 500


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid request field: `field` is its path (`credentials.port`)."""

    field: str
    description: str


@dataclass(eq=False)
class ApiError(Exception):
    """A failure to show the caller: stable `code`, actionable `message`."""

    kind: Kind
    code: str
    message: str
    violations: Sequence[FieldViolation] = field(default_factory=tuple)
    metadata: dict[str, str] = field(default_factory=dict)
    # When to retry (a rate limit): google.rpc.RetryInfo over gRPC, Retry-After over REST.
    retry_after_s: int | None = None
    # Response headers (gRPC metadata) sent with the error, e.g. X-RateLimit-*.
    headers: Sequence[tuple[str, str]] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


# The message of a validation error summarises: the violations themselves travel as
# details (BadRequest over gRPC, `details` over REST), never repeated in full here (and the
# transport cuts any message to its size budget: embedd_server.errors).
SUMMARY_VIOLATIONS = 3


def validation_error(violations: Sequence[FieldViolation], message: str | None = None) -> ApiError:
    """A 400 naming every offending field (the message names the first few)."""
    if message is None:
        message = "; ".join(f"{v.field}: {v.description}" for v in violations[:SUMMARY_VIOLATIONS])
        if len(violations) > SUMMARY_VIOLATIONS:
            message += f"; and {len(violations) - SUMMARY_VIOLATIONS} more (see details)"
    return ApiError(Kind.INVALID, "validation_error", message, violations=tuple(violations))


def invalid_field(field_path: str, description: str) -> ApiError:
    """A 400 for one field."""
    return validation_error([FieldViolation(field_path, description)])


def not_found(code: str, what: str, ident: str) -> ApiError:
    """A 404. Resources of other organisations and environments answer this too."""
    return ApiError(
        Kind.NOT_FOUND,
        code,
        f"{what} {ident!r} does not exist in this environment. Check the id, and the "
        "X-Environment-Id header if you use several environments.",
    )


def unimplemented(what: str, issue: str) -> ApiError:
    """A 501 naming what is missing and where it is tracked."""
    return ApiError(
        Kind.UNIMPLEMENTED,
        "not_implemented",
        f"{what} is not implemented in this version of the service yet ({issue}).",
    )
