"""One exception class per Embedd error code, built from a failed call's rich status.

The server sends every failure as a gRPC status plus `grpc-status-details-bin`: a
`google.rpc.Status` whose `ErrorInfo.reason` is the Embedd error code (the REST body's
`error.code`), with the request id in `ErrorInfo.metadata` and, for bad input, `BadRequest`
field violations. `from_rpc_error` turns that into the class registered for the code; a code
this version does not know becomes its family's class (chosen by gRPC status), and a
failure without details (a transport error) too.

Every class is a `grpc.aio.AioRpcError`, so `code()`, `details()` and `trailing_metadata()`
work as for any gRPC error and `except grpc.RpcError` still catches them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import grpc
from google.rpc import error_details_pb2, status_pb2

_DETAILS_KEY = "grpc-status-details-bin"

Metadata = tuple[tuple[str, str | bytes], ...]


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid request field: `field` is its path (`credentials.port`)."""

    field: str
    description: str


class _Call(Protocol):
    """What a failed call offers, sync (`grpc.RpcError` + `grpc.Call`) or async."""

    def code(self) -> grpc.StatusCode: ...
    def details(self) -> str | None: ...
    def initial_metadata(self) -> object: ...
    def trailing_metadata(self) -> object: ...
    def debug_error_string(self) -> str | None: ...


class EmbeddError(grpc.aio.AioRpcError):
    """A failed call. `reason` is the Embedd error code ("" when the server sent none, e.g.
    when the connection failed), `message` says what to do, `request_id` is the server's id
    for the call (quote it when reporting a problem), `violations` name bad fields."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        request_id: str | None = None,
        violations: tuple[FieldViolation, ...] = (),
        info: Mapping[str, str] | None = None,
        initial_metadata: Metadata = (),
        trailing_metadata: Metadata = (),
        debug_error_string: str | None = None,
    ) -> None:
        super().__init__(
            code,
            grpc.aio.Metadata(*initial_metadata),
            grpc.aio.Metadata(*trailing_metadata),
            message,
            debug_error_string,
        )
        self.reason = reason
        self.message = message
        self.request_id = request_id
        self.violations = violations
        self.info: Mapping[str, str] = dict(info or {})

    def __str__(self) -> str:
        head = f"{self.reason or self.code().name.lower()}: {self.message}"
        fields = "".join(f"\n  {v.field}: {v.description}" for v in self.violations)
        rid = f" (request id {self.request_id})" if self.request_id else ""
        return head + rid + fields


# Families: what kind of failure, whatever the exact code. Over REST they are the HTTP statuses.
class InvalidRequestError(EmbeddError):
    """400: the request is malformed or a value is out of range."""


class AuthenticationError(EmbeddError):
    """401: no valid API key."""


class PermissionDeniedError(EmbeddError):
    """403 `permission_denied`: the key (or the database role) may not do this."""


class NotFoundError(EmbeddError):
    """404: no such resource in this organisation and environment."""


class ConflictError(EmbeddError):
    """409: the name is taken, or the resource's state refuses the request."""


class NotReadyError(EmbeddError):
    """422: the resource is not ready for this yet."""


class RateLimitedError(EmbeddError):
    """429: too many requests (or the embedding provider's quota)."""


class UnimplementedError(EmbeddError):
    """501 `not_implemented`: this version of the service does not do that yet."""


class UnavailableError(EmbeddError):
    """503: try again shortly (idempotent calls are retried by the client already)."""


class DeadlineExceededError(EmbeddError):
    """The call's deadline passed before the server answered."""


class InternalError(EmbeddError):
    """500 `internal_error`: a fault on the server; report the request id."""


# One class per code the server sends (grep the server for `ApiError(` and `not_found(`;
# tests/unit/test_client_errors.py fails when a code has no class here).
class ValidationError(InvalidRequestError):
    """`validation_error`: `violations` names every offending field."""


class UnauthorizedError(AuthenticationError):
    """`unauthorized`: the API key is missing, malformed or unknown."""


class KeyRevokedError(AuthenticationError):
    """`key_revoked`: the API key was revoked."""


class TierLimitReachedError(PermissionDeniedError):
    """`tier_limit_reached`: the organisation has every managed vector table its tier allows."""


class ImportColumnNotVectorError(InvalidRequestError):
    """`import_column_not_vector`: `embedding_import.column` is not a pgvector `vector(n)` or
    `halfvec(n)` column."""


class ImportDimensionsMismatchError(InvalidRequestError):
    """`import_dimensions_mismatch`: the imported vectors' size is not the vector table's
    `embedding_dimensions`."""


class ImportModelMismatchError(InvalidRequestError):
    """`import_model_mismatch`: the imported vectors were made with another model than the
    vector table's `embedding_model`."""


class BatchStrategyUnsupportedError(InvalidRequestError):
    """`batch_strategy_unsupported`: `embedding_strategy` 'batch' with a provider that has no
    batch API the service speaks (OpenAI's only)."""


class SourceTableAccessDeniedError(PermissionDeniedError):
    """`source_table_access_denied`: the connection's role may not read the source table."""


class ConnectionNotFoundError(NotFoundError):
    """`connection_not_found`."""


class EmbeddingProviderNotFoundError(NotFoundError):
    """`embedding_provider_not_found`."""


class VectorTableNotFoundError(NotFoundError):
    """`vector_table_not_found`."""


class TaskNotFoundError(NotFoundError):
    """`task_not_found`."""


class ApiKeyNotFoundError(NotFoundError):
    """`api_key_not_found`."""


class EnvironmentNotFoundError(NotFoundError):
    """`environment_not_found` (also for an unknown `X-Environment-Id`)."""


class ConnectionConflictError(ConflictError):
    """`connection_conflict`: the name is taken, or vector tables still use the connection."""


class EmbeddingProviderConflictError(ConflictError):
    """`embedding_provider_conflict`: the name is taken, or vector tables still use it."""


class EnvironmentConflictError(ConflictError):
    """`environment_conflict`: the name is taken, or the environment is not empty."""


class BackfillInProgressError(ConflictError):
    """`backfill_in_progress`: the table already has a backfill queued or running."""


class SyncAlreadyPausedError(ConflictError):
    """`sync_already_paused`."""


class SyncNotPausedError(ConflictError):
    """`sync_not_paused`."""


class ConnectionNotReadyError(NotReadyError):
    """`connection_not_ready`: test the connection first (or fix what its test reported)."""


class VectorTableNotReadyError(NotReadyError):
    """`vector_table_not_ready`: the table was never backfilled."""


class VectorTableSwappingError(UnavailableError):
    """`vector_table_swapping`: a re-backfill is swapping the table in; retry."""


class EmbeddingProviderError(EmbeddError):
    """`embedding_provider_error`: the embedding provider failed (quota or outage)."""


class RateLimitExceededError(RateLimitedError):
    """`rate_limit_exceeded`: the organisation's requests per minute are used up (all its keys
    share them); the trailing metadata's `retry-after` says in how many seconds to retry."""


class ManagedModeUnavailableError(UnavailableError):
    """`managed_mode_unavailable`: this server has no Qdrant configured; use platform mode."""


class ServerStoppingError(UnavailableError):
    """`server_stopping`: the server is shutting down; a watch reconnects (to another replica)
    and resumes."""


class VectorsNotDroppedError(UnavailableError):
    """`vectors_not_dropped`: the vector table was deleted but its vectors could not be
    dropped; the message has the DROP TABLE statements to run."""


ERROR_CLASSES: Mapping[str, type[EmbeddError]] = {
    "validation_error": ValidationError,
    "import_column_not_vector": ImportColumnNotVectorError,
    "import_dimensions_mismatch": ImportDimensionsMismatchError,
    "import_model_mismatch": ImportModelMismatchError,
    "batch_strategy_unsupported": BatchStrategyUnsupportedError,
    "unauthorized": UnauthorizedError,
    "key_revoked": KeyRevokedError,
    "permission_denied": PermissionDeniedError,
    "source_table_access_denied": SourceTableAccessDeniedError,
    "tier_limit_reached": TierLimitReachedError,
    "connection_not_found": ConnectionNotFoundError,
    "embedding_provider_not_found": EmbeddingProviderNotFoundError,
    "vector_table_not_found": VectorTableNotFoundError,
    "task_not_found": TaskNotFoundError,
    "api_key_not_found": ApiKeyNotFoundError,
    "environment_not_found": EnvironmentNotFoundError,
    "connection_conflict": ConnectionConflictError,
    "embedding_provider_conflict": EmbeddingProviderConflictError,
    "environment_conflict": EnvironmentConflictError,
    "backfill_in_progress": BackfillInProgressError,
    "sync_already_paused": SyncAlreadyPausedError,
    "sync_not_paused": SyncNotPausedError,
    "connection_not_ready": ConnectionNotReadyError,
    "vector_table_not_ready": VectorTableNotReadyError,
    "vector_table_swapping": VectorTableSwappingError,
    "embedding_provider_error": EmbeddingProviderError,
    "rate_limit_exceeded": RateLimitExceededError,
    "vectors_not_dropped": VectorsNotDroppedError,
    "managed_mode_unavailable": ManagedModeUnavailableError,
    "server_stopping": ServerStoppingError,
    "not_implemented": UnimplementedError,
    "internal_error": InternalError,
}

_FAMILIES: Mapping[grpc.StatusCode, type[EmbeddError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: ConflictError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimitedError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def error_class(reason: str, code: grpc.StatusCode) -> type[EmbeddError]:
    """The class for an Embedd code; for an unknown one, its family's (FAILED_PRECONDITION
    is both 409 and 422 over REST, so an unknown code there is a plain `EmbeddError`)."""
    return ERROR_CLASSES.get(reason) or _FAMILIES.get(code, EmbeddError)


def _pairs(metadata: object) -> Metadata:
    pairs: list[tuple[str, str | bytes]] = []
    for item in metadata or ():  # type: ignore[attr-defined]
        key, value = item
        pairs.append((str(key), value))
    return tuple(pairs)


def from_rpc_error(err: grpc.RpcError) -> grpc.RpcError:
    """The typed error for a failed call (sync or async); other exceptions pass unchanged."""
    if isinstance(err, EmbeddError) or not _is_call(err):
        return err
    call: _Call = err  # type: ignore[assignment]
    trailing = _pairs(call.trailing_metadata())
    reason, request_id = "", None
    info: dict[str, str] = {}
    violations: tuple[FieldViolation, ...] = ()
    for key, value in trailing:
        if key == _DETAILS_KEY and isinstance(value, bytes):
            reason, request_id, info, violations = _parse_status(value)
    code = call.code()
    return error_class(reason, code)(
        code,
        call.details() or "",
        reason=reason,
        request_id=request_id,
        violations=violations,
        info=info,
        initial_metadata=_pairs(call.initial_metadata()),
        trailing_metadata=trailing,
        debug_error_string=call.debug_error_string(),
    )


def _is_call(err: object) -> bool:
    return all(callable(getattr(err, name, None)) for name in ("code", "details", "trailing_metadata"))


def _parse_status(
    raw: bytes,
) -> tuple[str, str | None, dict[str, str], tuple[FieldViolation, ...]]:
    status = status_pb2.Status.FromString(raw)
    reason, request_id = "", None
    info: dict[str, str] = {}
    violations: tuple[FieldViolation, ...] = ()
    for detail in status.details:
        error_info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(error_info):
            reason = error_info.reason
            info = dict(error_info.metadata)
            request_id = info.get("request_id") or None
        elif detail.Unpack(bad):
            violations = tuple(FieldViolation(v.field, v.description) for v in bad.field_violations)
    return reason, request_id, info, violations


def error_reason(err: grpc.RpcError) -> tuple[str, list[tuple[str, str]]]:
    """The Embedd error code and field violations of a failed call, typed or not."""
    typed = from_rpc_error(err)
    if not isinstance(typed, EmbeddError):
        return "", []
    return typed.reason, [(v.field, v.description) for v in typed.violations]
