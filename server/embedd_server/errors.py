"""Domain errors -> gRPC status with rich details, in one place.

Over gRPC a failure is a status code plus `grpc-status-details-bin` holding a
`google.rpc.Status` with `ErrorInfo` (reason = the Embedd error code) and, for validation
failures, `BadRequest` field violations.

For the REST surface the same failure also travels as two trailing-metadata entries that
Envoy's Lua filter turns into the HTTP response (see envoy/envoy.yaml):
`x-embedd-error` is the complete JSON body `{"error": {...}}` and `x-embedd-http-status`
the HTTP status. This keeps the REST body shape decided here, in Python, instead of
parsing JSON in Lua, and lets statuses with no gRPC equivalent (422) through.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from embedd_server.domain.errors import ApiError, FieldViolation, Kind

ERROR_DOMAIN = "embedd.v1"
ERROR_BODY_HEADER = "x-embedd-error"
HTTP_STATUS_HEADER = "x-embedd-http-status"

_STATUS: dict[Kind, tuple[grpc.StatusCode, int]] = {
    Kind.INVALID: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    Kind.UNAUTHENTICATED: (grpc.StatusCode.UNAUTHENTICATED, 401),
    Kind.PERMISSION_DENIED: (grpc.StatusCode.PERMISSION_DENIED, 403),
    Kind.NOT_FOUND: (grpc.StatusCode.NOT_FOUND, 404),
    # AIP-193: a taken name is ALREADY_EXISTS; a request that the resource's state refuses
    # (already paused, a backfill running, dependents left) is FAILED_PRECONDITION. REST
    # keeps Embedd's 409 for both.
    Kind.ALREADY_EXISTS: (grpc.StatusCode.ALREADY_EXISTS, 409),
    Kind.CONFLICT: (grpc.StatusCode.FAILED_PRECONDITION, 409),
    Kind.NOT_READY: (grpc.StatusCode.FAILED_PRECONDITION, 422),
    Kind.RATE_LIMITED: (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    Kind.UNIMPLEMENTED: (grpc.StatusCode.UNIMPLEMENTED, 501),
    Kind.UNAVAILABLE: (grpc.StatusCode.UNAVAILABLE, 503),
    Kind.INTERNAL: (grpc.StatusCode.INTERNAL, 500),
}


def grpc_code(kind: Kind) -> grpc.StatusCode:
    return _STATUS[kind][0]


def http_status(kind: Kind) -> int:
    return _STATUS[kind][1]


def internal_error(request_id: str) -> ApiError:
    """What the client sees for an unexpected exception: no Python text, just a request id."""
    return ApiError(
        Kind.INTERNAL,
        "internal_error",
        f"Something went wrong on our side. Retry; if it persists, report request id {request_id}.",
    )


# Every rendering of an error is bounded, whatever the request held: the status travels in
# trailing metadata three times (grpc-message, grpc-status-details-bin, the REST body), and
# gRPC's default limit for all of it is 8 KiB (Envoy's is larger). At most these many
# violations are listed, within a budget of JSON-encoded bytes (an upper bound of their
# UTF-8 size), and one more says how many were left out.
MAX_VIOLATIONS = 20
VIOLATIONS_BUDGET = 1536
MAX_FIELD = 120
MAX_DESCRIPTION = 240
MAX_MESSAGE_BYTES = 400
METADATA_BUDGET = 512
MAX_REQUEST_ID = 128


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip_bytes(text: str, limit: int) -> str:
    """At most `limit` bytes of UTF-8 (grpc-message percent-encodes each non-ASCII byte)."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode(errors="ignore") + "…"


def _bounded_violations(violations: Sequence[FieldViolation]) -> tuple[FieldViolation, ...]:
    kept: list[FieldViolation] = []
    used = 0
    for v in violations[:MAX_VIOLATIONS]:
        clipped = FieldViolation(_clip(v.field, MAX_FIELD), _clip(v.description, MAX_DESCRIPTION))
        size = len(json.dumps([clipped.field, clipped.description]))
        if used + size > VIOLATIONS_BUDGET:
            break
        kept.append(clipped)
        used += size
    omitted = len(violations) - len(kept)
    if omitted:
        kept.append(
            FieldViolation(
                "(omitted)", f"{omitted} more problem(s) not listed; fix the ones above and retry to see them"
            )
        )
    return tuple(kept)


def _bounded_metadata(metadata: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    used = 0
    for key, value in metadata.items():
        item = (_clip(key, 64), _clip(value, 256))
        used += len(json.dumps(item))
        if used > METADATA_BUDGET:
            break
        out[item[0]] = item[1]
    return out


def bounded(err: ApiError) -> ApiError:
    """The error as it may travel: message, violations and metadata cut to their budgets."""
    return dataclasses.replace(
        err,
        message=_clip_bytes(err.message, MAX_MESSAGE_BYTES),
        violations=_bounded_violations(err.violations),
        metadata=_bounded_metadata(err.metadata),
    )


def rest_body(err: ApiError, request_id: str) -> dict[str, object]:
    """The Embedd REST error body."""
    body: dict[str, object] = {"code": err.code, "message": err.message, "request_id": request_id}
    if err.violations:
        body["details"] = [{"field": v.field, "description": v.description} for v in err.violations]
    return {"error": body}


def to_status(err: ApiError, request_id: str) -> status_pb2.Status:
    """The `google.rpc.Status` for an error, with ErrorInfo and BadRequest details."""
    code, _ = _STATUS[err.kind]
    info = error_details_pb2.ErrorInfo(
        reason=err.code,
        domain=ERROR_DOMAIN,
        metadata={"request_id": request_id, **err.metadata},
    )
    details: list[any_pb2.Any] = []
    packed = any_pb2.Any()
    packed.Pack(info)
    details.append(packed)
    if err.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in err.violations
            ]
        )
        packed_bad = any_pb2.Any()
        packed_bad.Pack(bad)
        details.append(packed_bad)
    if err.retry_after_s is not None:
        retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=err.retry_after_s))
        packed_retry = any_pb2.Any()
        packed_retry.Pack(retry)
        details.append(packed_retry)
    return status_pb2.Status(code=_grpc_code_number(code), message=err.message, details=details)


def trailing_metadata(err: ApiError, request_id: str) -> Sequence[tuple[str, str | bytes]]:
    """Trailing metadata carrying the rich status and the REST rendering of the error, each
    bounded (see `bounded`); the grpc-message to send with it is `bounded(err).message`."""
    err = bounded(err)
    request_id = _clip(request_id, MAX_REQUEST_ID)
    status = to_status(err, request_id)
    return (
        ("grpc-status-details-bin", status.SerializeToString()),
        (ERROR_BODY_HEADER, json.dumps(rest_body(err, request_id), ensure_ascii=True)),
        (HTTP_STATUS_HEADER, str(http_status(err.kind))),
        *err.headers,
    )


def _grpc_code_number(code: grpc.StatusCode) -> int:
    number = code.value[0]
    assert isinstance(number, int)
    # code_pb2 and grpc share the numbering; the assert documents that link.
    assert code_pb2.Code.Name(number).replace("_", "") == code.name.replace("_", "")
    return number
