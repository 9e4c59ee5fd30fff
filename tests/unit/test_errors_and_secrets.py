import json

import grpc
import pytest
from embedd_server import errors
from embedd_server.auth import is_read_method
from embedd_server.domain.credentials import PgCredentials
from embedd_server.domain.errors import ApiError, FieldViolation, Kind, validation_error
from embedd_server.domain.ids import new_api_key, new_id
from embedd_server.secretbox import SecretBox, SecretBoxError, decode_key
from google.rpc import error_details_pb2, status_pb2


def test_every_kind_has_a_status() -> None:
    for kind in Kind:
        assert isinstance(errors.grpc_code(kind), grpc.StatusCode)
        assert 400 <= errors.http_status(kind) < 600
    assert errors.http_status(Kind.NOT_READY) == 422
    assert errors.grpc_code(Kind.NOT_FOUND) is grpc.StatusCode.NOT_FOUND


def test_rich_status_carries_reason_and_field_violations() -> None:
    err = validation_error([FieldViolation("credentials.port", "must be between 1 and 65535")])
    md = dict(errors.trailing_metadata(err, "req-1"))
    status = status_pb2.Status.FromString(md["grpc-status-details-bin"])  # type: ignore[arg-type]
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "validation_error" and info.metadata["request_id"] == "req-1"
    bad = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad)
    assert bad.field_violations[0].field == "credentials.port"
    body = json.loads(md[errors.ERROR_BODY_HEADER])  # type: ignore[arg-type]
    assert body["error"]["code"] == "validation_error"
    assert body["error"]["details"][0]["field"] == "credentials.port"
    assert md[errors.HTTP_STATUS_HEADER] == "400"


def test_internal_error_hides_everything_but_the_request_id() -> None:
    err = errors.internal_error("abc")
    assert err.code == "internal_error" and "abc" in err.message


def test_read_methods() -> None:
    assert is_read_method("/embedd.v1.ConnectionService/GetConnection")
    assert is_read_method("/embedd.v1.ConnectionService/ListConnections")
    assert is_read_method("/embedd.v1.QueryService/QueryVectorTable")
    assert is_read_method("/embedd.v1.TaskService/WatchTask")
    assert not is_read_method("/embedd.v1.ConnectionService/TestConnection")
    assert not is_read_method("/embedd.v1.ConnectionService/CreateConnection")
    assert not is_read_method("/embedd.v1.ApiKeyService/DeleteApiKey")


def test_secret_box_roundtrip_binding_and_tamper() -> None:
    box = SecretBox(b"k" * 32)
    blob = box.encrypt("hunter2", bound_to="conn_a")
    assert b"hunter2" not in blob
    assert box.decrypt(blob, bound_to="conn_a") == "hunter2"
    with pytest.raises(SecretBoxError):
        box.decrypt(blob, bound_to="conn_b")  # copied onto another row
    with pytest.raises(SecretBoxError):
        SecretBox(b"x" * 32).decrypt(blob, bound_to="conn_a")  # another key
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(SecretBoxError):
        box.decrypt(tampered, bound_to="conn_a")


def test_decode_key_errors() -> None:
    with pytest.raises(ValueError, match="base64"):
        decode_key("***")
    with pytest.raises(ValueError, match="32 bytes"):
        decode_key("AAAA")


def test_credentials_repr_hides_password() -> None:
    creds = PgCredentials("h", 5432, "d", "u", "s3cret-pw")
    assert "s3cret-pw" not in repr(creds) and "s3cret-pw" not in str(creds)


def test_ids() -> None:
    assert new_id("connection").startswith("conn_")
    assert new_id("vector_table").startswith("vt_")
    key = new_api_key()
    assert key.startswith("sk_") and len(key) == 43
    assert new_api_key() != key


def test_api_error_str() -> None:
    assert str(ApiError(Kind.CONFLICT, "x_conflict", "m")) == "x_conflict: m"
