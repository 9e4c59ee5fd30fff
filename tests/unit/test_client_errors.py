"""The client's typed errors: one class per Embedd code the server sends, decoded from the
exact bytes the server's error mapping writes."""

from __future__ import annotations

import ast

import grpc
import pytest
from embedd_client import errors
from embedd_client.errors import EmbeddError, error_reason, from_rpc_error
from embedd_server import errors as server_errors
from embedd_server.domain.errors import ApiError, FieldViolation, Kind, validation_error

from tests.harness import ROOT


def server_error_codes() -> set[str]:
    """Every literal Embedd code in the server: `ApiError(kind, "code", ...)` and
    `not_found("code", ...)` calls."""
    codes: set[str] = set()
    for path in (ROOT / "server" / "embedd_server").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            index = {"ApiError": 1, "not_found": 0}.get(name or "")
            if index is None or len(node.args) <= index:
                continue
            arg = node.args[index]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                codes.add(arg.value)
    return codes


def rpc_error(err: ApiError, request_id: str = "req-1") -> grpc.aio.AioRpcError:
    """A failed call as grpc delivers it, carrying what the server's interceptor sends."""
    return grpc.aio.AioRpcError(
        server_errors.grpc_code(err.kind),
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*server_errors.trailing_metadata(err, request_id)),
        err.message,
    )


def test_every_code_the_server_sends_has_its_own_class() -> None:
    codes = server_error_codes()
    assert {"validation_error", "connection_not_found", "sync_already_paused"} <= codes  # the scan works
    missing = sorted(codes - set(errors.ERROR_CLASSES))
    assert not missing, f"add a class to clients/python/embedd_client/errors.py for: {missing}"
    # Distinct classes: `except ConnectionNotFoundError` never catches another code.
    assert len(set(errors.ERROR_CLASSES.values())) == len(errors.ERROR_CLASSES)


@pytest.mark.parametrize("code", sorted(errors.ERROR_CLASSES))
def test_each_code_decodes_to_its_class(code: str) -> None:
    typed = from_rpc_error(rpc_error(ApiError(Kind.NOT_FOUND, code, "what to do")))
    assert type(typed) is errors.ERROR_CLASSES[code]
    assert isinstance(typed, EmbeddError) and typed.reason == code and typed.message == "what to do"


def test_a_validation_error_carries_message_request_id_and_violations() -> None:
    err = validation_error([FieldViolation("credentials.port", "must be between 1 and 65535")])
    typed = from_rpc_error(rpc_error(err, request_id="0123abcd"))
    assert isinstance(typed, errors.ValidationError) and isinstance(typed, errors.InvalidRequestError)
    assert typed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert typed.request_id == "0123abcd" and typed.info["request_id"] == "0123abcd"
    assert typed.violations == (errors.FieldViolation("credentials.port", "must be between 1 and 65535"),)
    assert typed.details() == typed.message == err.message
    text = str(typed)
    assert text.startswith("validation_error: ") and "0123abcd" in text and "credentials.port" in text
    # Still a gRPC error: generic handlers and the old helper keep working.
    assert isinstance(typed, grpc.RpcError) and isinstance(typed, grpc.aio.AioRpcError)
    assert (
        error_reason(typed)
        == error_reason(rpc_error(err))
        == (
            "validation_error",
            [("credentials.port", "must be between 1 and 65535")],
        )
    )


@pytest.mark.parametrize(
    ("kind", "family"),
    [
        (Kind.NOT_FOUND, errors.NotFoundError),
        (Kind.ALREADY_EXISTS, errors.ConflictError),
        (Kind.UNAVAILABLE, errors.UnavailableError),
        (Kind.RATE_LIMITED, errors.RateLimitedError),
        (Kind.INVALID, errors.InvalidRequestError),
        # FAILED_PRECONDITION is 409 or 422 over REST: no family to guess.
        (Kind.CONFLICT, EmbeddError),
    ],
)
def test_an_unknown_code_maps_to_its_family(kind: Kind, family: type[EmbeddError]) -> None:
    typed = from_rpc_error(rpc_error(ApiError(kind, "code_from_a_newer_server", "m")))
    assert type(typed) is family and typed.reason == "code_from_a_newer_server"  # type: ignore[attr-defined]


def test_a_transport_failure_has_no_code_but_a_family() -> None:
    raw = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "Connection reset"
    )
    typed = from_rpc_error(raw)
    assert type(typed) is errors.UnavailableError
    assert typed.reason == "" and typed.request_id is None  # type: ignore[attr-defined]
    assert str(typed) == "unavailable: Connection reset"
    assert from_rpc_error(typed) is typed
