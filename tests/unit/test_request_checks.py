"""The generic request rules (request_checks.py): NUL characters, string lengths, unknown enum
numbers, anywhere in a request; and the 400 for bytes the protobuf decoder refuses."""

from __future__ import annotations

from typing import Any

import pytest
from embedd.v1 import (
    api_key_pb2,
    connection_pb2,
    query_pb2,
    values_pb2,
    vector_table_pb2,
)
from embedd_server.domain.errors import ApiError, Kind
from embedd_server.request_checks import MAX_STRING_CHARS, check_request, decode_error
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import DecodeError


def violations(message: Any, body_field: str = "") -> dict[str, str]:
    with pytest.raises(ApiError) as info:
        check_request(message, body_field=body_field)
    err = info.value
    assert (err.kind, err.code) == (Kind.INVALID, "validation_error")
    return {v.field: v.description for v in err.violations}


def test_a_clean_request_passes() -> None:
    check_request(
        connection_pb2.CreateConnectionRequest(
            name="db",
            mode=values_pb2.Mode.platform,
            credentials=connection_pb2.PostgresCredentials(host="db.example.com", user="u"),
        )
    )


def test_nul_anywhere_names_the_field() -> None:
    found = violations(
        connection_pb2.CreateConnectionRequest(
            name="a\x00b", credentials=connection_pb2.PostgresCredentials(host="h\x00", user="u")
        )
    )
    assert set(found) == {"name", "credentials.host"}
    assert "NUL" in found["name"]
    found = violations(vector_table_pb2.GetVectorTableRequest(vector_table_id="vt_\x00abc"))
    assert set(found) == {"vector_table_id"}
    update = vector_table_pb2.UpdateVectorTableRequest()
    update.update_mask.paths.append("na\x00me")
    update.vector_table.columns.add(name="ok").name_prefix = "x\x00"
    assert set(violations(update)) == {"update_mask.paths[0]", "vector_table.columns[0].name_prefix"}


@pytest.mark.parametrize("number", [99, -1, 3])
def test_unknown_enum_numbers_are_refused(number: int) -> None:
    found = violations(connection_pb2.CreateConnectionRequest(name="db", mode=number))  # type: ignore[arg-type]
    assert f"{number} is not a valid value" in found["mode"]
    assert "'platform', 'managed'" in found["mode"]


def test_enum_numbers_in_repeated_and_nested_fields() -> None:
    request = vector_table_pb2.CreateVectorTableRequest(vector_table=vector_table_pb2.VectorTable(name="t"))
    request.vector_table.columns.add(name="a", role=values_pb2.ColumnRole.embedding)
    request.vector_table.columns.add(name="b", role=99, filter_type=99)  # type: ignore[arg-type]
    assert set(violations(request)) == {"vector_table.columns[1].role", "vector_table.columns[1].filter_type"}
    # Named as REST sees them when the resource is the whole body (as the servicers name them).
    assert set(violations(request, "vector_table")) == {"columns[1].role", "columns[1].filter_type"}
    # The worst case: an unknown permission must not become 'full'.
    assert set(violations(api_key_pb2.CreateApiKeyRequest(name="k", permission=99))) == {"permission"}  # type: ignore[arg-type]


def test_struct_values_are_walked_as_json_paths() -> None:
    request = query_pb2.QueryVectorTableRequest(vector_table_id="vt_abc", query="q")
    json_format.ParseDict(
        {"$or": [{"category": "a\x00"}, {"ta\x00g": {"in": ["x", "y\x00"]}}]}, request.filters
    )
    found = violations(request)
    assert set(found) == {
        "filters.$or[0].category",
        "filters.$or[1].ta\x00g",
        "filters.$or[1].ta\x00g.in[1]",
    }
    assert "key" in found["filters.$or[1].ta\x00g"]
    # A Value's own enum (null_value) is checked too: gRPC clients may send any number.
    odd = query_pb2.QueryVectorTableRequest(vector_table_id="vt_abc", query="q")
    odd.filters.fields["category"].null_value = 7  # type: ignore[assignment]
    assert set(violations(odd)) == {"filters.category"}


def test_long_strings_are_bounded() -> None:
    found = violations(connection_pb2.GetConnectionRequest(connection_id="c" * (MAX_STRING_CHARS + 1)))
    assert f"at most {MAX_STRING_CHARS}" in found["connection_id"]
    check_request(connection_pb2.GetConnectionRequest(connection_id="c" * MAX_STRING_CHARS))


def test_a_flood_of_problems_is_reported_briefly() -> None:
    request = vector_table_pb2.CreateVectorTableRequest(vector_table=vector_table_pb2.VectorTable(name="t"))
    for _ in range(500):
        request.vector_table.columns.add(name="\x00")
    assert len(violations(request)) == 20


def _nested_struct(depth: int) -> struct_pb2.Struct:
    inner = struct_pb2.Struct()
    inner.fields["price"].number_value = 1
    for _ in range(depth):
        outer = struct_pb2.Struct()
        outer.fields["$or"].list_value.values.add().struct_value.CopyFrom(inner)
        inner = outer
    return inner


def test_decode_errors_become_validation_errors() -> None:
    deep = query_pb2.QueryVectorTableRequest(vector_table_id="vt_abc", query="q")
    deep.filters.CopyFrom(_nested_struct(40))
    with pytest.raises(DecodeError) as too_deep:
        query_pb2.QueryVectorTableRequest.FromString(deep.SerializeToString())
    err = decode_error(too_deep.value)
    assert (err.kind, err.code) == (Kind.INVALID, "validation_error")
    assert "nests too deeply" in err.message
    # connection_id (field 1) holding the bytes of an unpaired surrogate, as the path
    # /v1/connections/conn_%ED%A0%80 arrives after transcoding
    with pytest.raises(DecodeError) as bad_utf8:
        connection_pb2.GetConnectionRequest.FromString(b"\x0a\x08conn_\xed\xa0\x80")
    err = decode_error(bad_utf8.value)
    assert err.code == "validation_error" and "UTF-8" in err.message
