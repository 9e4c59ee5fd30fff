"""Property: no hostile value makes the service fail on its side.

Hypothesis sends generated hostile values - NUL characters, huge and negative numbers, deep
nesting, unknown enum numbers, long strings, lone surrogates, bad UTF-8 in paths, unknown
fields and query parameters - in place of any field of a valid request, to every create, get,
list, query and update endpoint, over REST (through Envoy) and over gRPC. No answer may be a
5xx or `internal_error` (the one 5xx allowed is 501 `not_implemented`: a documented feature
gap, e.g. Snowflake). The session's log check (conftest) then finds no traceback either.
"""

from __future__ import annotations

import itertools
import json
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from embedd.v1 import (
    api_key_pb2,
    connection_pb2,
    embedding_provider_pb2,
    environment_pb2,
    query_pb2,
    sync_pb2,
    task_pb2,
    vector_table_pb2,
)
from embedd_client import error_reason
from embedd_server import app
from embedd_server.request_checks import body_field
from google.protobuf import json_format
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import UserDb
from tests.harness import UNTHROTTLED, Org
from tests.integration.test_vector_tables import wait_synced

# -- the service under attack ------------------------------------------------------------------


@dataclass
class Target:
    org: Org
    ids: dict[str, str]
    creds: dict[str, Any]
    source: str


@pytest.fixture(scope="module")
async def target(service: app.Service, rest: httpx.AsyncClient, user_db: UserDb) -> AsyncIterator[Target]:
    org_id = await service.orgs.create_org(f"hostile-{secrets.token_hex(3)}", requests_per_minute=UNTHROTTLED)
    _, key = await service.orgs.create_api_key(org_id, "full", "full")
    key_record, read_key = await service.orgs.create_api_key(org_id, "reader", "read_only")
    org = Org(org_id, key, read_key, f"127.0.0.1:{service.port}", rest)
    source = f"hostile_{secrets.token_hex(3)}"
    owner = await asyncpg.connect(user_db.owner_dsn)
    await owner.execute(
        f"CREATE TABLE {source} (id int PRIMARY KEY, name text, price numeric,"
        " updated_at timestamptz NOT NULL DEFAULT now());"
        f"INSERT INTO {source} SELECT g, 'item ' || g, g FROM generate_series(1, 20) g;"
        f"GRANT SELECT ON {source} TO embedd_user"
    )
    creds = user_db.credentials()
    conn = (
        await org.http(
            "POST",
            "/v1/providers/postgresql/connections",
            {"name": "c", "mode": "platform", "credentials": creds},
        )
    ).json()
    emb = (
        await org.http(
            "POST",
            "/v1/embedding-providers",
            {"name": "p", "provider": "local", "default_model": "local-lexical-384"},
        )
    ).json()
    ids = {"conn": conn["id"], "emb": emb["id"], "key": key_record.id}
    for name in ("query", "update"):
        body = _vector_table(ids, source) | {"name": name}
        ids[name] = (await org.http("POST", "/v1/vector-tables", body)).json()["id"]
    ids["task"] = (await org.http("POST", f"/v1/vector-tables/{ids['query']}/backfill")).json()["task_id"]
    assert (await wait_synced(org, ids["query"]))["sync_status"] == "synced"
    ids["env"] = (await org.http("POST", "/v1/environments", {"name": "staging"})).json()["id"]
    try:
        yield Target(org, ids, creds, source)
    finally:
        for vt in (await org.http("GET", "/v1/vector-tables?limit=100")).json()["vector_tables"]:
            await org.http("DELETE", f"/v1/vector-tables/{vt['id']}?drop_vectors=true")
        await owner.execute(f"DROP TABLE {source}")
        await owner.close()


def _vector_table(ids: dict[str, str], source: str) -> dict[str, Any]:
    return {
        "name": "t",
        "connection_id": ids["conn"],
        "embedding_provider_id": ids["emb"],
        "source_table": source,
        "primary_key_column": "id",
        "embedding_model": "local-lexical-384",
        "columns": [
            {"name": "name", "role": "embedding", "ordinal": 1, "name_prefix": "N: "},
            {"name": "price", "role": "metadata", "filter_type": "float"},
            {"name": "updated_at", "role": "metadata", "filter_type": "datetime"},
        ],
    }


# -- the endpoints -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    http: str
    path: str  # "{id}" is the path parameter
    method: str  # gRPC
    request: type[Message]
    id_field: str | None = None  # the request field bound to {id}
    id_kind: str = ""  # which fixture id is the valid value
    body: Callable[[Target], dict[str, Any]] = lambda _: {}
    extra_fields: tuple[str, ...] = ()  # more field paths worth attacking
    stream: bool = False


ENDPOINTS = [
    Endpoint(
        "POST",
        "/v1/providers/{id}/connections",
        "/embedd.v1.ConnectionService/CreateConnection",
        connection_pb2.CreateConnectionRequest,
        "provider",
        "postgresql",
        lambda t: {"name": "c", "mode": "platform", "credentials": dict(t.creds)},
        ("credentials.port", "credentials.ssl_mode", "credentials.schema"),
    ),
    Endpoint(
        "GET",
        "/v1/connections/{id}",
        "/embedd.v1.ConnectionService/GetConnection",
        connection_pb2.GetConnectionRequest,
        "connection_id",
        "conn",
    ),
    Endpoint(
        "GET",
        "/v1/connections",
        "/embedd.v1.ConnectionService/ListConnections",
        connection_pb2.ListConnectionsRequest,
        extra_fields=("limit", "cursor"),
    ),
    Endpoint(
        "POST",
        "/v1/connections/{id}/test",
        "/embedd.v1.ConnectionService/TestConnection",
        connection_pb2.TestConnectionRequest,
        "connection_id",
        "conn",
    ),
    Endpoint(
        "POST",
        "/v1/embedding-providers",
        "/embedd.v1.EmbeddingProviderService/CreateEmbeddingProvider",
        embedding_provider_pb2.CreateEmbeddingProviderRequest,
        body=lambda _: {"name": "p", "provider": "local", "default_model": "local-lexical-384"},
        extra_fields=("api_key", "base_url"),
    ),
    Endpoint(
        "GET",
        "/v1/embedding-providers/{id}",
        "/embedd.v1.EmbeddingProviderService/GetEmbeddingProvider",
        embedding_provider_pb2.GetEmbeddingProviderRequest,
        "embedding_provider_id",
        "emb",
    ),
    Endpoint(
        "GET",
        "/v1/embedding-providers",
        "/embedd.v1.EmbeddingProviderService/ListEmbeddingProviders",
        embedding_provider_pb2.ListEmbeddingProvidersRequest,
        extra_fields=("limit", "cursor"),
    ),
    Endpoint(
        "GET",
        "/v1/embedding-models",
        "/embedd.v1.EmbeddingProviderService/ListEmbeddingModels",
        embedding_provider_pb2.ListEmbeddingModelsRequest,
        extra_fields=("provider",),
    ),
    Endpoint(
        "POST",
        "/v1/vector-tables",
        "/embedd.v1.VectorTableService/CreateVectorTable",
        vector_table_pb2.CreateVectorTableRequest,
        body=lambda t: _vector_table(t.ids, t.source),
        extra_fields=(
            "columns[0].ordinal",
            "columns[1].filter_type",
            "embedding_dimensions",
            "sync_mode",
            "cursor_column",
            "sync_interval_seconds",
            "mode",
        ),
    ),
    Endpoint(
        "GET",
        "/v1/vector-tables/{id}",
        "/embedd.v1.VectorTableService/GetVectorTable",
        vector_table_pb2.GetVectorTableRequest,
        "vector_table_id",
        "query",
    ),
    Endpoint(
        "GET",
        "/v1/vector-tables",
        "/embedd.v1.VectorTableService/ListVectorTables",
        vector_table_pb2.ListVectorTablesRequest,
        extra_fields=("limit", "cursor"),
    ),
    Endpoint(
        "PATCH",
        "/v1/vector-tables/{id}",
        "/embedd.v1.VectorTableService/UpdateVectorTable",
        vector_table_pb2.UpdateVectorTableRequest,
        "vector_table.id",
        "update",
        lambda _: {"name": "renamed", "sync_interval_seconds": 30},
        ("sync_mode", "columns[0].role", "columns[0].ordinal", "embedding_dimensions", "cursor_column"),
    ),
    Endpoint(
        "POST",
        "/v1/vector-tables/{id}/query",
        "/embedd.v1.QueryService/QueryVectorTable",
        query_pb2.QueryVectorTableRequest,
        "vector_table_id",
        "query",
        lambda _: {"query": "item", "limit": 3, "filters": {"price": {"gt": 1}}},
        ("min_score", "filters.updated_at.gt", "filters.price.in", "filters.$or", "include_embedded_text"),
    ),
    Endpoint(
        "GET",
        "/v1/vector-tables/{id}/sync/status",
        "/embedd.v1.SyncService/GetSyncStatus",
        sync_pb2.GetSyncStatusRequest,
        "vector_table_id",
        "query",
    ),
    Endpoint(
        "GET",
        "/v1/tasks/{id}",
        "/embedd.v1.TaskService/GetTask",
        task_pb2.GetTaskRequest,
        "task_id",
        "task",
    ),
    Endpoint(
        "GET",
        "/v1/tasks",
        "/embedd.v1.TaskService/ListTasks",
        task_pb2.ListTasksRequest,
        extra_fields=("limit", "cursor", "status", "target_id"),
    ),
    Endpoint(
        "GET",
        "/v1/tasks/{id}/watch",
        "/embedd.v1.TaskService/WatchTask",
        task_pb2.WatchTaskRequest,
        "task_id",
        "task",
        stream=True,
    ),
    Endpoint(
        "POST",
        "/v1/api-keys",
        "/embedd.v1.ApiKeyService/CreateApiKey",
        api_key_pb2.CreateApiKeyRequest,
        body=lambda _: {"name": "k", "permission": "read_only"},
    ),
    Endpoint(
        "GET",
        "/v1/api-keys",
        "/embedd.v1.ApiKeyService/ListApiKeys",
        api_key_pb2.ListApiKeysRequest,
        extra_fields=("limit", "cursor"),
    ),
    Endpoint(
        "POST",
        "/v1/environments",
        "/embedd.v1.EnvironmentService/CreateEnvironment",
        environment_pb2.CreateEnvironmentRequest,
        body=lambda _: {"name": "e-" + secrets.token_hex(3)},
    ),
    Endpoint(
        "GET",
        "/v1/environments/{id}",
        "/embedd.v1.EnvironmentService/GetEnvironment",
        environment_pb2.GetEnvironmentRequest,
        "environment_id",
        "env",
    ),
    Endpoint(
        "GET",
        "/v1/environments",
        "/embedd.v1.EnvironmentService/ListEnvironments",
        environment_pb2.ListEnvironmentsRequest,
        extra_fields=("limit", "cursor"),
    ),
]

# -- hostile values ------------------------------------------------------------------------------


def _deep_or(depth: int) -> dict[str, Any]:
    f: dict[str, Any] = {"price": {"gt": 1}}
    for _ in range(depth):
        f = {"$or": [f]}
    return f


def _nested(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return v


_STRINGS = st.one_of(
    st.text(max_size=12).map(lambda s: f"{s}\x00{s}"),
    st.sampled_from([64, 254, 10_001, 17_000]).map(lambda n: "x" * n),
    st.sampled_from(["\ud800", "a\udfffb", "é" * 40, "../../etc", "'; DROP TABLE x; --", "$or", "", " "]),
    st.text(max_size=20),
)
_NUMBERS = st.one_of(
    st.sampled_from([2**31 - 1, 2**31, -(2**31) - 1, 2**53 + 1, 2**63, -(2**63) - 1, 2**64, 10**30, -1, 0]),
    st.integers(-3, 120),  # enum numbers, defined or not
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)
_PRIMITIVES = st.one_of(_STRINGS, _NUMBERS, st.booleans(), st.none())
HOSTILE = st.one_of(
    _PRIMITIVES,
    st.integers(1, 70).map(_deep_or),
    st.integers(1, 140).map(_nested),
    st.recursive(
        _PRIMITIVES,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=8,
    ),
)
# Path parameters: also raw percent-encodings that decode to invalid UTF-8.
_RAW = st.sampled_from(["%ED%A0%80", "%FF%FE", "conn_%C0%AF", "vt_%00x", "task_%00"])
# X-Environment-Id as bytes: not UTF-8, a control character, long, unknown, a real name.
_ENV_HEADER = st.none() | st.sampled_from(
    [b"\xff\xfe", "é".encode(), b"e" * 3000, b"a\x7f", b"env_nope", b"staging"]
)


@dataclass
class Attack:
    endpoint: Endpoint
    path_id: str | None  # None: the valid id
    raw_path_id: bool
    env_header: bytes | None
    changes: list[tuple[str, Any]] = field(default_factory=list)


def _leaves(value: Any, prefix: str = "") -> list[str]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaves(v, f"{prefix}.{k}" if prefix else k)] or [prefix]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaves(v, f"{prefix}[{i}]")] or [prefix]
    return [prefix]


@st.composite
def attacks(draw: st.DrawFn) -> Attack:
    endpoint = draw(st.sampled_from(ENDPOINTS))
    path_id: str | None = None
    raw = False
    if endpoint.id_field is not None and draw(st.booleans()):
        raw = draw(st.booleans())
        path_id = draw(_RAW if raw else _STRINGS)
    base_fields = [p for p in _leaves(endpoint.body(_PLACEHOLDER)) if p]
    candidates = [*base_fields, *endpoint.extra_fields, "unknown_field", "credentials.nope"]
    changes = draw(st.lists(st.tuples(st.sampled_from(candidates), HOSTILE), max_size=3))
    return Attack(endpoint, path_id, raw, draw(_ENV_HEADER), changes)


_PLACEHOLDER = Target(
    Org("", "", "", "", httpx.AsyncClient()), {k: "x" for k in ("conn", "emb", "query", "update")}, {}, "t"
)

# -- sending ---------------------------------------------------------------------------------------


def _set(body: dict[str, Any], path: str, value: Any) -> None:
    keys = [k for part in path.split(".") for k in part.replace("]", "").split("[")]
    node: Any = body
    for key, nxt in itertools.pairwise(keys):
        index = int(key) if key.isdigit() and isinstance(node, list) else key
        if isinstance(node, list):
            if not isinstance(index, int) or index >= len(node):
                return
            child = node[index]
        else:
            child = node.get(key)
        if not isinstance(child, dict | list):
            child = [] if nxt.isdigit() else {}
            node[index] = child
        node = child
    last = keys[-1]
    if isinstance(node, list):
        if last.isdigit() and int(last) < len(node):
            node[int(last)] = value
    else:
        node[last] = value


def _build(attack: Attack, t: Target) -> tuple[dict[str, Any], str]:
    body = json.loads(json.dumps(attack.endpoint.body(t)))
    for path, value in attack.changes:
        _set(body, path, value)
    valid = t.ids.get(attack.endpoint.id_kind, attack.endpoint.id_kind)
    path_id = valid if attack.path_id is None else attack.path_id
    return body, path_id


def _quote(text: str) -> str:
    return urllib.parse.quote(text.encode(errors="surrogatepass"), safe="")


def _allowed(status: int, code: str) -> bool:
    return code != "internal_error" and (status < 500 or (status == 501 and code == "not_implemented"))


async def _rest(t: Target, attack: Attack, body: dict[str, Any], path_id: str) -> None:
    ep = attack.endpoint
    url = ep.path.replace("{id}", path_id if attack.raw_path_id else _quote(path_id))
    headers: dict[str, str | bytes] = dict(t.org.headers())
    if attack.env_header is not None:
        headers["x-environment-id"] = attack.env_header
    params: dict[str, str] = {}
    content: bytes | None = None
    if ep.http == "GET":
        params = {k: v if isinstance(v, str) else json.dumps(v) for k, v in body.items()}
    else:
        content = json.dumps(body, allow_nan=True).encode()
        headers["content-type"] = "application/json"
    if ep.http == "PATCH":
        params["update_mask"] = ",".join(body) or "name"
    if params:  # encoded here: httpx refuses lone surrogates, which is the point of sending them
        url += "?" + "&".join(f"{_quote(k)}={_quote(v)}" for k, v in params.items())
    try:
        request = t.org.rest.build_request(ep.http, url, content=content, headers=headers)
        response = await t.org.rest.send(request, stream=ep.stream)
    except httpx.InvalidURL:
        return  # the client itself refuses (control characters, over 64 KiB): nothing was sent
    try:
        text = (await response.aread()).decode(errors="replace") if ep.stream else response.text
    finally:
        await response.aclose()
    code = ""
    if response.status_code != 200:
        try:
            code = json.loads(text)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            raise AssertionError(f"not an Embedd error body: {response.status_code} {text[:300]}") from None
    assert _allowed(response.status_code, code), (ep.http, url[:200], body, response.status_code, text[:500])


async def _grpc(
    t: Target, channel: grpc.aio.Channel, attack: Attack, body: dict[str, Any], path_id: str
) -> None:
    ep = attack.endpoint
    if attack.raw_path_id:
        return  # a gRPC message cannot carry bad UTF-8 in a string (test_hostile_input sends raw bytes)
    message = ep.request()
    # The REST body is the request, or one field of it (CreateVectorTable's `vector_table`).
    wrapper = body_field(ep.method)
    fields = {wrapper: dict(body)} if wrapper else dict(body)
    if ep.id_field is not None:
        _set(fields, ep.id_field, path_id)
    try:
        json_format.ParseDict(fields, message, ignore_unknown_fields=True)
        payload = message.SerializeToString()
    except (
        json_format.ParseError,
        ValueError,
        TypeError,
        UnicodeError,
        RecursionError,
        SystemError,
        OverflowError,
    ):
        return  # not representable as this message: only JSON can say it (REST covers it)
    metadata = (("authorization", f"Bearer {t.org.key}"),)
    try:
        if ep.stream:
            call = channel.unary_stream(ep.method)(payload, metadata=metadata, timeout=10)
            async for _ in call:
                pass
        else:
            await channel.unary_unary(ep.method)(payload, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as err:
        reason, _ = error_reason(err)
        bad = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
        ok = err.code() not in bad and reason != "internal_error"
        if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED):
            ok = reason == "not_implemented"
        assert ok, (ep.method, fields, err.code(), reason, err.details())


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(attack=attacks())
async def test_no_hostile_value_makes_the_service_fail(target: Target, attack: Attack) -> None:
    body, path_id = _build(attack, target)
    await _rest(target, attack, body, path_id)
    async with grpc.aio.insecure_channel(target.org.grpc_target) as channel:
        await _grpc(target, channel, attack, body, path_id)
