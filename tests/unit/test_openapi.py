"""envoy/openapi.json: a valid OpenAPI 3 description, with the corrections tools/openapi.py makes
to the generator's output (test_generated.py proves it is what `make gen` writes)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openapi_spec_validator import validate

from tests.harness import ROOT

DOC: dict[str, Any] = json.loads((ROOT / "envoy" / "openapi.json").read_text())
SCHEMAS = DOC["components"]["schemas"]
OPERATIONS = [
    (method.upper(), path, op) for path, item in DOC["paths"].items() for method, op in item.items()
]


def test_is_valid_openapi() -> None:
    validate(DOC)
    assert DOC["openapi"].startswith("3.0") and OPERATIONS


def test_one_template_per_path() -> None:
    """Not `{vector_table.id}` beside `{vector_table_id}` (the generator's; OpenAPI forbids it)."""
    assert not [path for path in DOC["paths"] if "." in path]
    assert set(DOC["paths"]["/v1/vector-tables/{vector_table_id}"]) == {"get", "delete", "put", "patch"}


@pytest.mark.parametrize(("method", "path", "op"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS])
def test_every_operation_has_auth_errors_and_rate_limit_headers(method: str, path: str, op: Any) -> None:
    assert DOC["security"] == [{"apiKey": []}]
    assert {"$ref": "#/components/parameters/EnvironmentId"} in op["parameters"]
    expected = {"200", "400", "401", "403", "404", "413", "429", "431", "5XX"}
    if method != "GET":
        expected |= {"409", "422"}
    assert set(op["responses"]) == expected
    assert set(op["responses"]["200"]["headers"]) == {
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
    }
    for status in expected - {"200"}:
        assert op["responses"][status] == {"$ref": f"#/components/responses/Error{status}"}


def test_error_body_and_429() -> None:
    error = SCHEMAS["Error"]["properties"]["error"]
    assert error["required"] == ["code", "message", "request_id"]
    assert set(error["properties"]) == {"code", "message", "request_id", "details"}
    too_many = DOC["components"]["responses"]["Error429"]
    assert "Retry-After" in too_many["headers"] and "X-RateLimit-Reset" in too_many["headers"]
    assert DOC["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "sk_...",
        "description": DOC["components"]["securitySchemes"]["apiKey"]["description"],
    }


@pytest.mark.parametrize(
    ("path", "schema"),
    [
        ("/v1/tasks/{task_id}/watch", "v1WatchTaskResponse"),
        ("/v1/vector-tables/{vector_table_id}/watch", "v1VectorTableEvent"),
    ],
)
def test_watches_are_ndjson(path: str, schema: str) -> None:
    ok = DOC["paths"][path]["get"]["responses"]["200"]
    assert list(ok["content"]) == ["application/x-ndjson"]
    assert ok["content"]["application/x-ndjson"]["schema"] == {"$ref": f"#/components/schemas/{schema}"}


def test_field_behavior_and_printed_fields() -> None:
    table = SCHEMAS["v1VectorTable"]
    # REQUIRED, plus always-printed output fields (readOnly: required in responses only).
    assert {"name", "connection_id", "source_table", "primary_key_column", "columns"} <= set(
        table["required"]
    )
    assert table["properties"]["id"]["readOnly"] and "id" in table["required"]
    assert "created_at" not in table["required"]  # a Timestamp is printed only when set
    assert "cursor_column" not in table["required"]  # proto3 optional: absent when unset
    password = SCHEMAS["v1PostgresCredentials"]["properties"]["password"]
    assert password.get("writeOnly") is True
    # A response-only message: every always-printed field, and no other field.
    status = SCHEMAS["v1GetSyncStatusResponse"]
    assert set(status["required"]) == {
        "sync_status",
        "synced_rows",
        "total_rows",
        "vector_table_id",
        "rows_pending",
        "rows_skipped",
        "rows_imported",
        "batch_tokens",
        "estimated_saving_tokens",
        "index_status",
    }
    assert status["additionalProperties"] is False
    assert "additionalProperties" not in table  # requests: the transcoder ignores unknown fields


def test_counts_are_whole_numbers_and_well_known_types_plain_json() -> None:
    sync_status = SCHEMAS["v1VectorTable"]["properties"]["sync_status"]
    # Beside a $ref OpenAPI 3.0 ignores everything: readOnly and the description go with allOf.
    assert sync_status == {
        "description": "The sync state.",
        "allOf": [{"$ref": "#/components/schemas/v1SyncStatusValue"}],
        "readOnly": True,
    }
    for name, fields in {
        "v1GetSyncStatusResponse": ("synced_rows", "total_rows", "rows_pending", "rows_skipped"),
        "v1TaskProgress": ("rows_processed", "rows_total", "rows_failed", "rows_skipped"),
    }.items():
        for field in fields:
            assert SCHEMAS[name]["properties"][field]["type"] == "integer"
    assert SCHEMAS["v1QueryResult"]["properties"]["score"]["type"] == "number"
    filters = SCHEMAS["v1QueryVectorTableRequestBody"]["properties"]["filters"]
    assert (filters["type"], filters["additionalProperties"]) == ("object", True)
    assert "operators" in filters["description"]  # the field's own words survive
    assert not {"protobufStruct", "googleprotobufValue", "protobufFieldMask"} & set(SCHEMAS)


def test_enums_are_the_lowercase_names() -> None:
    assert SCHEMAS["v1SyncStatusValue"]["enum"] == [
        "unspecified",
        "pending",
        "backfilling",
        "synced",
        "paused",
        "error",
        "pending_rebackfill",
    ]
    for name, schema in SCHEMAS.items():
        if "enum" in schema:
            assert all(v == v.lower() for v in schema["enum"]), name


def test_bodies_bind_no_path_field_and_update_takes_a_mask() -> None:
    create = DOC["paths"]["/v1/providers/{provider}/connections"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert "provider" not in SCHEMAS[body]["properties"]
    for method in ("put", "patch"):
        op = DOC["paths"]["/v1/vector-tables/{vector_table_id}"][method]
        names = {p.get("name") for p in op["parameters"]}
        assert {"vector_table_id", "update_mask"} <= names
        update = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert update == "#/components/schemas/v1VectorTableUpdate"
    assert "required" not in SCHEMAS["v1VectorTableUpdate"]
    assert DOC["paths"]["/v1/vector-tables/{vector_table_id}"]["patch"]["operationId"] == "PatchVectorTable"


def test_ids_and_page_sizes_are_bounded() -> None:
    get = DOC["paths"]["/v1/connections/{connection_id}"]["get"]
    param = next(p for p in get["parameters"] if p.get("name") == "connection_id")
    assert param["schema"] == {"type": "string", "pattern": "^conn_", "maxLength": 64}
    listing = DOC["paths"]["/v1/connections"]["get"]
    limit = next(p for p in listing["parameters"] if p.get("name") == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (0, 100)
