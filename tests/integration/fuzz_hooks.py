"""Schemathesis hooks for the REST fuzz (test_openapi_fuzz.py loads them with SCHEMATHESIS_HOOKS).

On top of Schemathesis' own checks: every error is the Embedd error body and never
`internal_error`, and the watch stream is read as what it is, newline-delimited JSON.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis

NDJSON = "application/x-ndjson"


@schemathesis.check
def no_server_error(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Any) -> None:
    """No 5xx, but for the one on purpose: a Snowflake connection is in the contract and not in
    this service yet (501 `not_implemented`, documented on CreateConnection)."""
    if response.status_code < 500:
        return
    if response.status_code == 501 and case.operation.label == "POST /v1/providers/{provider}/connections":
        body = json.loads(response.content)
        assert body["error"]["code"] == "not_implemented", body
        return
    raise AssertionError(f"server error {response.status_code}: {response.text}")


@schemathesis.check
def embedd_error_body(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Any) -> None:
    """Any status >= 400, documented or not: `{"error": {"code", "message", "request_id", ...}}`
    as JSON, and never `internal_error` (an unexpected exception on our side)."""
    if response.status_code < 400:
        return
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), f"error with content-type {content_type!r}"
    body = json.loads(response.content)
    assert isinstance(body, dict) and set(body) == {"error"}, f"not the Embedd error body: {body!r}"
    error = body["error"]
    assert {"code", "message", "request_id"} <= set(error) <= {"code", "message", "request_id", "details"}, (
        f"error fields {sorted(error)}"
    )
    assert all(isinstance(error[k], str) and error[k] for k in ("code", "message", "request_id")), error
    assert error["code"] != "internal_error", f"internal_error: {error['message']}"


@schemathesis.deserializer(NDJSON)
def ndjson_lines(ctx: Any, response: schemathesis.Response) -> Any:
    """The schema describes one line; every line is checked by `ndjson_each_line`, the last one
    (`done: true`) stands for the stream in the schema check."""
    lines = [json.loads(line) for line in response.content.splitlines() if line.strip()]
    if not lines:
        raise ValueError("an empty NDJSON stream")
    return lines[-1]


@schemathesis.check
def ndjson_each_line(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Any) -> None:
    """Each line of a 200 watch stream is one JSON object; only the last has `done: true`."""
    content_type = response.headers.get("content-type", [""])[0]
    if response.status_code != 200 or not content_type.startswith(NDJSON):
        return
    lines = [json.loads(line) for line in response.content.splitlines() if line.strip()]
    assert lines and all(isinstance(line, dict) for line in lines), response.text
    assert [bool(line.get("done")) for line in lines] == [False] * (len(lines) - 1) + [True], lines
