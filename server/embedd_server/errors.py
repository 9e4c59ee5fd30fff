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

import json
from collections.abc import Sequence

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from embedd_server.domain.errors import ApiError, Kind

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
    """Trailing metadata carrying the rich status and the REST rendering of the error."""
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
