"""Error payloads are bounded whatever the request held: gRPC's default limit for all the
metadata of a response is 8 KiB, and the error travels in it three times."""

from __future__ import annotations

import json
import urllib.parse

from embedd_server import errors
from embedd_server.domain.errors import ApiError, FieldViolation, Kind, validation_error
from google.rpc import error_details_pb2, status_pb2

GRPC_METADATA_LIMIT = 8 * 1024


def _wire_size(err: ApiError, request_id: str) -> int:
    """What the trailers weigh as gRPC counts them (name + value + 32 per entry), with the
    grpc-message as sent: percent-encoded, and the binary entry base64-encoded."""
    message = urllib.parse.quote(
        errors.bounded(err).message.encode(), safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"
    )
    entries = [("grpc-status", "3"), ("grpc-message", message)]
    for key, value in errors.trailing_metadata(err, request_id):
        size = len(value) * 4 // 3 + 4 if isinstance(value, bytes) else len(value.encode())
        entries.append((key, "x" * size))
    return sum(len(k) + len(v) + 32 for k, v in entries)


def test_a_thousand_violations_stay_under_the_limit_and_say_what_was_left_out() -> None:
    violations = [
        FieldViolation(f"filters.category.in[{i}]", "must be a string (got 5)") for i in range(1000)
    ]
    err = validation_error(violations)
    assert "and 997 more" in err.message and err.message.count("filters.category") == 3
    md = dict(errors.trailing_metadata(err, "req-1"))
    body = json.loads(md[errors.ERROR_BODY_HEADER])  # type: ignore[arg-type]
    details = body["error"]["details"]
    assert len(details) <= errors.MAX_VIOLATIONS + 1
    assert details[0]["field"] == "filters.category.in[0]"
    assert (
        details[-1]["field"] == "(omitted)"
        and f"{1000 - len(details) + 1} more" in details[-1]["description"]
    )
    status = status_pb2.Status.FromString(md["grpc-status-details-bin"])  # type: ignore[arg-type]
    bad = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad) and len(bad.field_violations) == len(details)
    assert _wire_size(err, "req-1") < GRPC_METADATA_LIMIT


def test_hostile_sizes_are_cut_everywhere() -> None:
    """Huge non-ASCII descriptions, field paths, messages, metadata and request ids."""
    wide = "é" * 5_000
    err = ApiError(
        Kind.INVALID,
        "validation_error",
        "ü" * 50_000,
        violations=[FieldViolation(wide, wide) for _ in range(200)],
        metadata={f"k{i}": wide for i in range(50)},
    )
    size = _wire_size(err, "r" * 10_000)
    assert size < GRPC_METADATA_LIMIT, size
    bounded = errors.bounded(err)
    assert len(bounded.message.encode()) <= errors.MAX_MESSAGE_BYTES and bounded.message.endswith("…")
    assert bounded.violations[-1].field == "(omitted)"


def test_small_errors_are_untouched() -> None:
    err = validation_error([FieldViolation("name", "is required")])
    bounded = errors.bounded(err)
    assert bounded.message == err.message == "name: is required"
    assert tuple(bounded.violations) == tuple(err.violations)
