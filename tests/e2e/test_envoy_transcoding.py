"""REST through a real Envoy (envoy/envoy.yaml) in front of an in-process gRPC stub server.

Checks the transcoding contract (snake_case, primitive defaults, lowercase enum values,
resources returned flat), the error protocol of `embedd_server.errors` (the Lua filter
turns `x-embedd-error` into the REST body and status), Envoy's own JSON replies, header
hygiene, NDJSON streaming and metadata propagation. One Envoy and one gRPC server per module.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio
from embedd.v1 import connection_pb2, connection_pb2_grpc, task_pb2, task_pb2_grpc, values_pb2
from embedd_server import errors
from embedd_server.app import server_options
from embedd_server.config import Settings
from embedd_server.devtools.envoy import (
    ENVOY_YAML,
    REPO_ROOT,
    EnvoyError,
    EnvoyProcess,
    buf_binary,
    render_config,
)
from embedd_server.domain.errors import ApiError, FieldViolation, Kind, not_found, validation_error
from google.protobuf import timestamp_pb2

from tests.harness import assert_no_lua_errors

CREATED_AT = datetime(2026, 3, 13, 10, 0, 0, tzinfo=UTC)
STREAM_GAP_S = 0.4
DEFAULT_ROUTE_TIMEOUT_S = 0.5  # < the 2 x STREAM_GAP_S the watch stream lasts


@dataclass
class Seen:
    """What the stub server observed, per method."""

    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    stream_sent_at: list[float] = field(default_factory=list)

    def record(self, method: str, context: grpc.aio.ServicerContext[object, object]) -> str:
        md = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        self.metadata[method] = md
        return md.get("x-request-id", "")


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def _connection(conn_id: str, name: str, mode: int) -> connection_pb2.Connection:
    return connection_pb2.Connection(
        id=conn_id,
        name=name,
        provider=values_pb2.ConnectionProvider.postgresql,
        mode=mode,  # type: ignore[arg-type]
        status=values_pb2.ConnectionStatus.created,
        created_at=_ts(CREATED_AT),
    )


async def _fail(context: grpc.aio.ServicerContext[object, object], err: ApiError, request_id: str) -> None:
    await context.abort(
        errors.grpc_code(err.kind),
        err.message,
        trailing_metadata=errors.trailing_metadata(err, request_id),
    )


class ConnectionStub(connection_pb2_grpc.ConnectionServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def CreateConnection(
        self,
        request: connection_pb2.CreateConnectionRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> connection_pb2.Connection:
        request_id = self.seen.record("CreateConnection", context)
        if not request.name or not request.credentials.host:
            violations = []
            if not request.name:
                violations.append(FieldViolation("name", "is required"))
            if not request.credentials.host:
                violations.append(FieldViolation("credentials.host", "is required"))
            await _fail(context, validation_error(violations), request_id)
        return _connection("conn_0123456789abcdef", request.name, request.mode)

    async def GetConnection(
        self,
        request: connection_pb2.GetConnectionRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> connection_pb2.Connection:
        request_id = self.seen.record("GetConnection", context)
        if request.connection_id == "conn_missing":
            err = not_found("connection_not_found", "Connection", request.connection_id)
            await _fail(context, err, request_id)
        if request.connection_id.startswith("conn_late"):
            # Initial metadata first: the error metadata travel as real trailers.
            await context.send_initial_metadata(())
        if request.connection_id.startswith(("conn_busy", "conn_late")):
            err = ApiError(
                Kind.NOT_READY,
                "backfill_in_progress",
                "A backfill is running on this connection; wait for it to finish.",
            )
            await _fail(context, err, request_id)
        return _connection(request.connection_id, "prod-db", values_pb2.Mode.managed)

    async def ListConnections(
        self,
        request: connection_pb2.ListConnectionsRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> connection_pb2.ListConnectionsResponse:
        self.seen.record("ListConnections", context)
        return connection_pb2.ListConnectionsResponse()

    async def DeleteConnection(
        self,
        request: connection_pb2.DeleteConnectionRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> connection_pb2.DeleteConnectionResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this stub")

    async def TestConnection(
        self,
        request: connection_pb2.TestConnectionRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> connection_pb2.TestConnectionResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this stub")


class TaskStub(task_pb2_grpc.TaskServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def GetTask(
        self,
        request: task_pb2.GetTaskRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> task_pb2.Task:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this stub")

    async def ListTasks(
        self,
        request: task_pb2.ListTasksRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> task_pb2.ListTasksResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this stub")

    async def WatchTask(
        self,
        request: task_pb2.WatchTaskRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[task_pb2.WatchTaskResponse]:
        self.seen.record("WatchTask", context)
        self.seen.stream_sent_at.clear()
        for i in range(3):
            if i:
                await asyncio.sleep(STREAM_GAP_S)
            done = i == 2
            task = task_pb2.Task(
                id=request.task_id,
                task_type=values_pb2.TaskType.backfill,
                target_id="vt_0123456789abcdef",
                status=values_pb2.TaskStatus.completed if done else values_pb2.TaskStatus.running,
                created_at=_ts(CREATED_AT),
                progress=task_pb2.TaskProgress(rows_processed=10 * (i + 1), rows_total=30),
            )
            self.seen.stream_sent_at.append(time.monotonic())
            yield task_pb2.WatchTaskResponse(task=task, rows_per_s=5.0, done=done)


# --------------------------------------------------------------------------- fixtures


@dataclass
class Stack:
    envoy: EnvoyProcess
    seen: Seen
    grpc_port: int
    descriptor: Path


@pytest.fixture(scope="module")
def descriptor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain `buf build` image, as tools/gen.py commits it."""
    out = tmp_path_factory.mktemp("descriptor") / "embedd.binpb"
    subprocess.run([str(buf_binary()), "build", "-o", str(out)], cwd=REPO_ROOT, check=True)
    return out


LUA_MARK = "x-test-lua-ran"


def mark_lua_runs(http_filters: list[dict[str, object]]) -> None:
    """Make the error-reshaping Lua filter tag every response it runs on, so that a test can
    see on which responses it ran (the production config is otherwise unchanged)."""
    (wrapper,) = [f for f in http_filters if f["name"] == "embedd.rest_errors"]
    lua = wrapper["typed_config"]["extension_config"]["typed_config"]  # type: ignore[index]
    code = lua["default_source_code"]["inline_string"]
    head = "function envoy_on_response(handle)\n"
    assert head in code
    lua["default_source_code"]["inline_string"] = code.replace(
        head, f'{head}  handle:headers():add("{LUA_MARK}", "1")\n'
    )


@pytest_asyncio.fixture(scope="module")
async def stack(descriptor: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    seen = Seen()
    # The real server's transport limits, so that Envoy's are tested against them.
    server = grpc.aio.server(options=server_options(Settings(database_url="postgresql://unused")))
    connection_pb2_grpc.add_ConnectionServiceServicer_to_server(ConnectionStub(seen), server)
    task_pb2_grpc.add_TaskServiceServicer_to_server(TaskStub(seen), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    config = render_config(
        ENVOY_YAML,
        grpc_host="127.0.0.1",
        grpc_port=grpc_port,
        http_host="127.0.0.1",
        http_port=0,
        admin_port=0,
        descriptor=descriptor,
    )
    # A short default route timeout: the watch stream outlives it, which proves that the
    # stream's own route (gRPC path, `timeout: 0s`) is the one matched after transcoding.
    catch_all = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = catch_all["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert routes[-1]["match"] == {"prefix": "/"}
    routes[-1]["route"]["timeout"] = f"{DEFAULT_ROUTE_TIMEOUT_S}s"
    mark_lua_runs(catch_all["typed_config"]["http_filters"])
    envoy = EnvoyProcess(config, work_dir=tmp_path_factory.mktemp("envoy"))
    await asyncio.to_thread(envoy.start)
    try:
        yield Stack(envoy=envoy, seen=seen, grpc_port=grpc_port, descriptor=descriptor)
    finally:
        await asyncio.to_thread(envoy.stop)
        await server.stop(grace=None)
    assert_no_lua_errors(envoy.log_path)  # a Lua runtime error shows nowhere else


@pytest_asyncio.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    # Async: the gRPC stub server runs on this event loop.
    async with httpx.AsyncClient(base_url=stack.envoy.http_url, timeout=10.0) as http:
        yield http


AUTH = {"authorization": "Bearer sk_test_abc123"}
CREATE_BODY = {
    "name": "prod-db",
    "mode": "platform",
    "credentials": {"host": "db.internal", "database": "app", "user": "u", "password": "p"},
}


def assert_clean_headers(resp: httpx.Response) -> None:
    leaked = [h for h in resp.headers if h.startswith(("grpc-", "x-embedd-"))]
    assert not leaked, f"leaked headers: {leaked}"


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert_clean_headers(resp)
    body = resp.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert isinstance(error, dict)
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert error["request_id"] == resp.headers["x-request-id"]
    return error


# --------------------------------------------------------------------------- tests


async def test_create_returns_flat_resource(client: httpx.AsyncClient, stack: Stack) -> None:
    resp = await client.post("/v1/providers/postgresql/connections", json=CREATE_BODY, headers=AUTH)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert_clean_headers(resp)
    assert resp.json() == {
        "id": "conn_0123456789abcdef",
        "name": "prod-db",
        "provider": "postgresql",
        "mode": "platform",
        "status": "created",
        "created_at": "2026-03-13T10:00:00Z",
    }
    assert int(resp.headers["content-length"]) == len(resp.content)


async def test_success_path_runs_no_lua(client: httpx.AsyncClient) -> None:
    """The Lua filter only reshapes errors: the matcher skips it for every 200, unary and
    streaming alike, and it still runs for errors."""
    ok = await client.get("/v1/connections/conn_fedcba9876543210", headers=AUTH)
    listed = await client.get("/v1/connections", headers=AUTH)
    created = await client.post("/v1/providers/postgresql/connections", json=CREATE_BODY, headers=AUTH)
    async with client.stream("GET", "/v1/tasks/task_0123456789abcdef/watch", headers=AUTH) as stream:
        await stream.aread()
    for resp in (ok, listed, created, stream):
        assert resp.status_code == 200
        assert LUA_MARK not in resp.headers
    failed = await client.get("/v1/connections/conn_missing", headers=AUTH)
    late = await client.get("/v1/connections/conn_late", headers=AUTH)
    assert (failed.status_code, late.status_code) == (404, 422)
    assert failed.headers[LUA_MARK] == "1" and late.headers[LUA_MARK] == "1"


async def test_get_returns_flat_resource(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/connections/conn_fedcba9876543210", headers=AUTH)
    assert resp.status_code == 200, resp.text
    assert_clean_headers(resp)
    body = resp.json()
    assert body["id"] == "conn_fedcba9876543210"
    assert body["mode"] == "managed"
    assert body["created_at"] == "2026-03-13T10:00:00Z"
    assert "last_tested_at" not in body  # unset message fields stay absent


async def test_list_prints_primitive_defaults_snake_case(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/connections", params={"limit": 5}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    assert_clean_headers(resp)
    assert resp.json() == {"connections": [], "next_cursor": ""}


async def test_metadata_reaches_server(client: httpx.AsyncClient, stack: Stack) -> None:
    resp = await client.get("/v1/connections", headers=AUTH)
    assert resp.status_code == 200
    md = stack.seen.metadata["ListConnections"]
    assert md["authorization"] == "Bearer sk_test_abc123"
    assert md["x-request-id"] == resp.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f-]{36}", md["x-request-id"])


async def test_not_found_error_body(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/connections/conn_missing", headers=AUTH)
    error = assert_error(resp, 404, "connection_not_found")
    assert "conn_missing" in str(error["message"])
    assert "details" not in error


async def test_failed_precondition_becomes_422(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/connections/conn_busy", headers=AUTH)
    error = assert_error(resp, 422, "backfill_in_progress")
    assert int(resp.headers["content-length"]) == len(resp.content)
    assert error["message"] == "A backfill is running on this connection; wait for it to finish."


async def test_error_in_real_trailers_is_reshaped_too(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/connections/conn_late", headers=AUTH)
    assert_error(resp, 422, "backfill_in_progress")
    assert int(resp.headers["content-length"]) == len(resp.content)


async def test_bodies_up_to_one_mib_pass_larger_ones_are_413(client: httpx.AsyncClient) -> None:
    """Envoy's body limit (1 MiB, docs/limits.md) is the one a REST client meets: a raw gRPC
    RESOURCE_EXHAUSTED from the server's own limit must never show through."""
    name = "n" * (1024 * 1024 - 200)
    resp = await client.post(
        "/v1/providers/postgresql/connections", json={**CREATE_BODY, "name": name}, headers=AUTH
    )
    assert resp.status_code == 200, resp.text[:300]
    assert resp.json()["name"] == name
    for size in (1024 * 1024 + 1, 3 * 1024 * 1024):
        body = {**CREATE_BODY, "name": "n" * size}
        resp = await client.post("/v1/providers/postgresql/connections", json=body, headers=AUTH)
        error = assert_error(resp, 413, "payload_too_large")
        assert "1 MiB" in str(error["message"])


@pytest.mark.parametrize("where", ["authorization", "x-environment-id", "path"])
async def test_headers_over_16_kib_are_431_with_a_request_id(client: httpx.AsyncClient, where: str) -> None:
    """Request headers (the path included) over Envoy's 16 KiB: an Embedd 431 whose request_id
    is the x-request-id header (Envoy refuses them before it has made a request id)."""
    for size, expected in ((15 * 1024, 200), (17 * 1024, 431)):
        headers = dict(AUTH)
        path = "/v1/connections/conn_x"
        if where == "path":
            path += "a" * size
        else:
            headers[where] = ("Bearer sk_" if where == "authorization" else "") + "a" * size
        resp = await client.get(path, headers=headers)
        if expected == 200:
            assert resp.status_code == 200, resp.text[:300]
            continue
        error = assert_error(resp, 431, "request_headers_too_large")
        assert "16 KiB" in str(error["message"])
        assert str(error["request_id"]).startswith("envoy-")


async def test_codec_refusals_have_a_request_id(client: httpx.AsyncClient) -> None:
    """A header value with a control character is refused by Envoy's HTTP codec, before any
    request id exists: the 400 still carries one, in the body and the header."""
    resp = await client.get(
        "/v1/connections", headers=[(b"authorization", b"Bearer sk_x"), (b"x-environment-id", b"a\x7f")]
    )
    error = assert_error(resp, 400, "validation_error")
    assert str(error["request_id"]).startswith("envoy-")


async def test_unknown_body_fields_are_dropped(client: httpx.AsyncClient, stack: Stack) -> None:
    """Envoy's transcoder ignores JSON fields the request message does not have, and has no
    option to refuse them: the README's API conventions say so (this test keeps it true)."""
    body = {**CREATE_BODY, "nmae": "typo", "credentials": {**CREATE_BODY["credentials"], "prot": 1}}
    resp = await client.post("/v1/providers/postgresql/connections", json=body, headers=AUTH)
    assert resp.status_code == 200, resp.text
    assert resp.json()["name"] == "prod-db"


async def test_validation_error_keeps_details(client: httpx.AsyncClient) -> None:
    body = {"name": "", "mode": "platform", "credentials": {"database": "app"}}
    resp = await client.post("/v1/providers/postgresql/connections", json=body, headers=AUTH)
    error = assert_error(resp, 400, "validation_error")
    assert error["details"] == [
        {"field": "name", "description": "is required"},
        {"field": "credentials.host", "description": "is required"},
    ]


async def test_unknown_path_is_json_404(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/nothing-here", headers=AUTH)
    assert_error(resp, 404, "not_found")


async def test_unknown_query_parameter_is_json_400(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/connections", params={"bogus": "1"}, headers=AUTH)
    assert_error(resp, 400, "validation_error")


async def test_bad_enum_string_is_json_400(client: httpx.AsyncClient, stack: Stack) -> None:
    calls_before = dict(stack.seen.metadata)
    body = {**CREATE_BODY, "mode": "bogus"}
    resp = await client.post("/v1/providers/postgresql/connections", json=body, headers=AUTH)
    error = assert_error(resp, 400, "validation_error")
    assert "bogus" in str(error["message"]) or "mode" in str(error["message"])
    assert stack.seen.metadata == calls_before  # rejected by Envoy, never reached the server


async def test_malformed_json_is_json_400(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/v1/providers/postgresql/connections",
        content=b'{"name": ',
        headers={**AUTH, "content-type": "application/json"},
    )
    assert_error(resp, 400, "validation_error")


async def test_watch_streams_ndjson_incrementally(client: httpx.AsyncClient, stack: Stack) -> None:
    arrived: list[float] = []
    lines: list[dict[str, object]] = []
    raw: list[str] = []
    async with client.stream("GET", "/v1/tasks/task_0123456789abcdef/watch", headers=AUTH) as resp:
        assert resp.status_code == 200
        assert_clean_headers(resp)
        async for line in resp.aiter_lines():
            if line.strip():
                arrived.append(time.monotonic())
                raw.append(line)
                lines.append(json.loads(line))
    assert len(lines) == 3
    sent = stack.seen.stream_sent_at
    assert len(sent) == 3
    # Each line reached the client before the server even produced the next message.
    for i in range(2):
        assert arrived[i] < sent[i + 1], (arrived, sent)
    assert [m["done"] for m in lines] == [False, False, True]
    assert sent[-1] - sent[0] > DEFAULT_ROUTE_TIMEOUT_S  # outlived the default route timeout
    first = lines[0]
    assert first["rows_per_s"] == 5.0
    task = first["task"]
    assert isinstance(task, dict)
    assert task["task_type"] == "backfill"
    assert task["status"] == "running"
    assert task["progress"] == {
        "last_processed_pk": "",
        "rows_processed": 10,
        "rows_total": 30,
        "rows_failed": 0,
        "rows_skipped": 0,
        "rows_imported": 0,
        "batches_submitted": 0,
        "batches_completed": 0,
        "batch_rows_submitted": 0,
        "batch_rows_completed": 0,
        "batch_tokens": 0,
        "estimated_saving_tokens": 0,
    }
    # Counts are doubles in the proto so that JSON prints numbers; whole ones print without
    # a fraction, exactly as the seed shows them.
    assert '"rows_processed":10,"rows_total":30,"rows_failed":0' in raw[0], raw[0]
    last_task = lines[2]["task"]
    assert isinstance(last_task, dict) and last_task["status"] == "completed"


async def test_unimplemented_method_is_clean(client: httpx.AsyncClient) -> None:
    # A method the stub server does not implement: grpc's own UNIMPLEMENTED, no x-embedd-*.
    resp = await client.delete("/v1/connections/conn_x", headers=AUTH)
    assert resp.status_code == 501
    assert_clean_headers(resp)
    body = resp.json()
    assert body["code"] == 12  # the transcoder's google.rpc.Status rendering


async def test_upstream_down_is_json_503(descriptor: Path, tmp_path: Path) -> None:
    # A second Envoy on the same machine, pointing at a closed port.
    config = render_config(
        ENVOY_YAML,
        grpc_host="127.0.0.1",
        grpc_port=1,
        http_host="127.0.0.1",
        http_port=0,
        admin_port=0,
        descriptor=descriptor,
    )
    with EnvoyProcess(config, work_dir=tmp_path) as envoy:
        async with httpx.AsyncClient(base_url=envoy.http_url, timeout=10.0) as http:
            resp = await http.get("/v1/connections", headers=AUTH)
        assert_error(resp, 503, "unavailable")
        pid = envoy.pid
    assert pid is not None and envoy.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_bad_config_raises_with_log_tail(tmp_path: Path) -> None:
    config = render_config(
        ENVOY_YAML,
        grpc_host="127.0.0.1",
        grpc_port=1,
        http_host="127.0.0.1",
        http_port=0,
        admin_port=0,
        descriptor=tmp_path / "missing.binpb",
    )
    with pytest.raises(EnvoyError, match=r"missing\.binpb"):
        EnvoyProcess(config, work_dir=tmp_path).start()
