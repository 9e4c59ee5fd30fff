"""Hostile input over both surfaces (REST through Envoy, gRPC direct): every cause of a 500 that
issue 15 found is a 400 `validation_error` naming the field (or a clean 4xx), never
`internal_error`, and nothing is stored for a refused request."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from embedd.v1 import (
    api_key_pb2,
    connection_pb2,
    embedding_provider_pb2,
    environment_pb2,
    query_pb2,
    task_pb2,
    values_pb2,
    vector_table_pb2,
)
from embedd_client import error_reason
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from tests.conftest import UserDb
from tests.harness import Org, grpc_error, rest_error
from tests.integration.test_vector_tables import platform, seed_body, wait_synced

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def assert_400(response: Any, field: str | None, text: str = "") -> dict[str, Any]:
    status, code, err = rest_error(response)
    assert (status, code) == (400, "validation_error"), err
    assert err["request_id"] == response.headers["x-request-id"]
    if field is not None:
        assert field in [d["field"] for d in err["details"]], err
    assert text in err["message"], err
    return err


async def assert_grpc_400(call: Any, field: str | None, text: str = "") -> None:
    code, reason, violations, message = await grpc_error(call)
    assert (code, reason) == (INVALID, "validation_error"), (code, reason, message)
    if field is not None:
        assert field in [f for f, _ in violations], violations
    assert text in message, message


# -- NUL characters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/vector-tables/vt_%00abc",
        "/v1/tasks/task_%00abc/watch",
        "/v1/connections/conn_%00abc",
        "/v1/embedding-providers/emb_%00abc",
        "/v1/vector-tables/vt_%00abc/sync/status",
    ],
)
async def test_nul_in_a_path_is_400(org: Org, path: str) -> None:
    assert_400(await org.http("GET", path), None, "NUL")


async def test_nul_in_bodies_and_credentials_is_400_over_both_surfaces(org: Org, user_db: UserDb) -> None:
    for field, creds, name in (
        ("name", user_db.credentials(), "db\x00"),
        ("credentials.host", user_db.credentials(host="127.0.0.1\x00"), "db"),
        ("credentials.user", user_db.credentials(user="embedd\x00user"), "db"),
        ("credentials.password", user_db.credentials(password="pw\x00"), "db"),
    ):
        body = {"name": name, "mode": "platform", "credentials": creds}
        assert_400(await org.http("POST", "/v1/providers/postgresql/connections", body), field, "NUL")
    async with org.client() as c:
        await assert_grpc_400(
            c.vector_tables.GetVectorTable(
                vector_table_pb2.GetVectorTableRequest(vector_table_id="vt_\x00a")
            ),
            "vector_table_id",
            "NUL",
        )
        request = connection_pb2.CreateConnectionRequest(
            provider=values_pb2.ConnectionProvider.postgresql,
            name="db",
            mode=values_pb2.Mode.platform,
            credentials=connection_pb2.PostgresCredentials(
                host="h\x00", database="d", user="u", password="p"
            ),
        )
        await assert_grpc_400(c.connections.CreateConnection(request), "credentials.host", "NUL")
        listed = await c.connections.ListConnections(connection_pb2.ListConnectionsRequest())
    assert list(listed.connections) == []


# -- enum numbers ------------------------------------------------------------------------------


async def test_unknown_enum_numbers_are_400_and_store_nothing(org: Org, user_db: UserDb) -> None:
    creds = user_db.credentials()
    for mode in (99, -1):
        body = {"name": "db", "mode": mode, "credentials": creds}
        assert_400(
            await org.http("POST", "/v1/providers/postgresql/connections", body), "mode", "not a valid"
        )
    body = {"name": "p", "provider": 99, "default_model": "local-lexical-384"}
    assert_400(await org.http("POST", "/v1/embedding-providers", body), "provider")
    keys_before = (await org.http("GET", "/v1/api-keys")).json()["api_keys"]
    assert_400(await org.http("POST", "/v1/api-keys", {"name": "k", "permission": 99}), "permission")
    assert (await org.http("GET", "/v1/api-keys")).json()["api_keys"] == keys_before  # no `full` key

    conn_id, emb_id = await platform(org, user_db)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"mode": 99}, "mode"),
        ({"sync_mode": 7}, "sync_mode"),
        ({"columns": [{"name": "name", "role": 99}]}, "columns[0].role"),
        (
            {
                "columns": [
                    {"name": "name", "role": "embedding"},
                    {"name": "price", "role": "metadata", "filter_type": 99},
                ]
            },
            "columns[1].filter_type",
        ),
    ]
    for change, field in cases:
        assert_400(await org.http("POST", "/v1/vector-tables", seed_body(conn_id, emb_id, **change)), field)
    assert (await org.http("GET", "/v1/vector-tables")).json()["vector_tables"] == []

    async with org.client() as c:
        await assert_grpc_400(
            c.api_keys.CreateApiKey(api_key_pb2.CreateApiKeyRequest(name="k", permission=99)),  # type: ignore[arg-type]
            "permission",
        )
        await assert_grpc_400(
            c.tasks.ListTasks(task_pb2.ListTasksRequest(status=42)),  # type: ignore[arg-type]
            "status",
        )


async def test_patch_with_an_unknown_sync_mode_is_400(org: Org, user_db: UserDb) -> None:
    conn_id, emb_id = await platform(org, user_db)
    made = await org.http("POST", "/v1/vector-tables", seed_body(conn_id, emb_id))
    vt = made.json()
    for mode in (99, 0):
        r = await org.http(
            "PATCH", f"/v1/vector-tables/{vt['id']}?update_mask=sync_mode", {"sync_mode": mode}
        )
        assert_400(r, "sync_mode")  # named as in the body, by the generic check and the servicer alike
    assert (await org.http("GET", f"/v1/vector-tables/{vt['id']}")).json()["sync_mode"] == "batch"


# -- cursors -----------------------------------------------------------------------------------


def _forged(created: str, ident: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created, ident]).encode()).decode()


FORGED = [
    _forged("9999-12-31T23:59:59-12:00", "x"),
    _forged("0001-01-01T00:00:00+14:00", "x"),
    _forged("2026-01-01T00:00:00Z", "conn_a\x00b"),
    "not-base64-at-all",
]
LISTS = [
    "/v1/connections",
    "/v1/embedding-providers",
    "/v1/vector-tables",
    "/v1/tasks",
    "/v1/api-keys",
    "/v1/environments",
]


@pytest.mark.parametrize("path", LISTS)
async def test_forged_cursors_are_400_on_every_list(org: Org, path: str) -> None:
    for cursor in FORGED:
        assert_400(await org.rest.get(path, params={"cursor": cursor}, headers=org.headers()), "cursor")


async def test_forged_cursors_over_grpc_and_real_ones_still_page(org: Org, user_db: UserDb) -> None:
    async with org.client() as c:
        for cursor in FORGED:
            await assert_grpc_400(
                c.connections.ListConnections(connection_pb2.ListConnectionsRequest(cursor=cursor)), "cursor"
            )
            await assert_grpc_400(c.tasks.ListTasks(task_pb2.ListTasksRequest(cursor=cursor)), "cursor")
        for i in range(3):
            await org.http(
                "POST",
                "/v1/providers/postgresql/connections",
                {"name": f"c{i}", "mode": "managed", "credentials": user_db.credentials()},
            )
        first = await c.connections.ListConnections(connection_pb2.ListConnectionsRequest(limit=2))
        assert first.next_cursor
        second = await c.connections.ListConnections(
            connection_pb2.ListConnectionsRequest(limit=2, cursor=first.next_cursor)
        )
        assert len(first.connections) == 2 and len(second.connections) == 1 and not second.next_cursor
        # a cursor is bound to its list: the connections' cursor means nothing to the tasks
        await assert_grpc_400(
            c.tasks.ListTasks(task_pb2.ListTasksRequest(cursor=first.next_cursor)), "cursor"
        )


# -- decode errors -----------------------------------------------------------------------------


def _deep_filter(depth: int) -> dict[str, Any]:
    f: dict[str, Any] = {"price": {"gt": 1}}
    for _ in range(depth):
        f = {"$or": [f]}
    return f


def _nested_list(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return v


@pytest.mark.parametrize("depth", [20, 30, 40, 60])
async def test_deep_nesting_is_400_not_a_raw_500(org: Org, depth: int) -> None:
    for body in (
        {"query": "x", "filters": _deep_filter(depth)},
        {"query": "x", "filters": {"price": {"in": _nested_list(max(60, depth * 2))}}},
    ):
        r = await org.http("POST", "/v1/vector-tables/vt_abc/query", body)
        # Envoy refuses the deepest itself (its own JSON parser, a 400 in the same shape)
        assert_400(r, None)


@pytest.mark.parametrize("path", ["/v1/connections/conn_%ED%A0%80", "/v1/vector-tables/vt_%FF%FE"])
async def test_bad_utf8_in_a_path_is_400(org: Org, path: str) -> None:
    assert_400(await org.http("GET", path), None, "UTF-8")


async def _raw_call(org: Org, method: str, payload: bytes) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(org.grpc_target) as channel:
        call = channel.unary_unary(method)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(payload, metadata=(("authorization", f"Bearer {org.key}"),))
    return info.value


async def test_undecodable_messages_over_grpc_are_invalid_argument_with_error_info(org: Org) -> None:
    bad_utf8 = b"\x0a\x08conn_\xed\xa0\x80"  # GetConnectionRequest.connection_id
    err = await _raw_call(org, "/embedd.v1.ConnectionService/GetConnection", bad_utf8)
    assert err.code() == INVALID and error_reason(err)[0] == "validation_error"
    assert "UTF-8" in (err.details() or "")

    request = query_pb2.QueryVectorTableRequest(vector_table_id="vt_abc", query="q")
    level = request.filters
    for _ in range(40):  # built by hand: json_format refuses to parse this deep
        level = level.fields["$or"].list_value.values.add().struct_value
    level.fields["price"].number_value = 1
    err = await _raw_call(org, "/embedd.v1.QueryService/QueryVectorTable", request.SerializeToString())
    assert err.code() == INVALID and error_reason(err)[0] == "validation_error"
    assert "nests too deeply" in (err.details() or "")


# -- long strings and identifiers ---------------------------------------------------------------


async def test_long_identifiers_are_400_before_anything_is_written(org: Org, user_db: UserDb) -> None:
    conn_id, emb_id = await platform(org, user_db)
    long = "p" * 10_000
    for change, field in (
        ({"source_table": long}, "source_table"),
        ({"source_table": f"public.{'t' * 64}"}, "source_table"),
        ({"primary_key_column": "k" * 64}, "primary_key_column"),
        ({"columns": [{"name": "c" * 64, "role": "embedding"}]}, "columns[0].name"),
        ({"sync_mode": "cdc", "cursor_column": "u" * 64}, "cursor_column"),
        ({"connection_id": "conn_" + "a" * 10_000}, "connection_id"),
    ):
        assert_400(await org.http("POST", "/v1/vector-tables", seed_body(conn_id, emb_id, **change)), field)
    for creds, field in (
        (user_db.credentials(database="d" * 64), "credentials.database"),
        (user_db.credentials(user="u" * 64), "credentials.user"),
        (user_db.credentials(host="h" * 300), "credentials.host"),
        (user_db.credentials(host="127.0.0.1,10.0.0.1"), "credentials.host"),
    ):
        body = {"name": "x", "mode": "platform", "credentials": creds}
        assert_400(await org.http("POST", "/v1/providers/postgresql/connections", body), field)
    assert (await org.http("GET", "/v1/vector-tables")).json()["vector_tables"] == []
    async with org.client() as c:
        request = vector_table_pb2.CreateVectorTableRequest(
            vector_table=vector_table_pb2.VectorTable(
                **seed_body(conn_id, emb_id, source_table=long, columns=[])
            )
        )
        request.vector_table.columns.add(name="name", role=values_pb2.ColumnRole.embedding)
        await assert_grpc_400(c.vector_tables.CreateVectorTable(request), "source_table", "63 bytes")


# -- filter values at the edges ----------------------------------------------------------------


EDGE_FILTERS = [
    ({"updated_at": {"gt": "0001-01-01T00:00:00+14:00"}}, "filters.updated_at.gt", "in UTC"),
    ({"updated_at": {"lt": "9999-12-31T23:59:59-14:00"}}, "filters.updated_at.lt", "in UTC"),
    ({"id": {"gt": 9007199254740993}}, "filters.id.gt", "lose precision"),
    ({"id": {"in": [1, -9007199254740993]}}, "filters.id.in[1]", "2^53-1"),
]


async def test_filter_values_at_the_edges(org: Org, user_db: UserDb) -> None:
    conn_id, emb_id = await platform(org, user_db)
    columns = [
        {"name": "name", "role": "embedding"},
        {"name": "id", "role": "metadata", "filter_type": "integer"},
        {"name": "updated_at", "role": "metadata", "filter_type": "datetime"},
    ]
    vt = (await org.http("POST", "/v1/vector-tables", seed_body(conn_id, emb_id, columns=columns))).json()
    assert (await org.http("POST", f"/v1/vector-tables/{vt['id']}/backfill")).status_code == 200
    assert (await wait_synced(org, vt["id"]))["sync_status"] == "synced"
    for filters, field, text in EDGE_FILTERS:
        r = await org.http(
            "POST", f"/v1/vector-tables/{vt['id']}/query", {"query": "jacket", "filters": filters}
        )
        assert_400(r, field, text)
    # the extremes that stay in range work
    ok = {
        "updated_at": {"gt": "0001-01-01T00:00:00-14:00", "lt": "9999-12-31T23:59:59+14:00"},
        "id": {"lte": 9007199254740991},
    }
    r = await org.http(
        "POST", f"/v1/vector-tables/{vt['id']}/query", {"query": "jacket", "filters": ok, "limit": 3}
    )
    assert r.status_code == 200 and len(r.json()["results"]) == 3, r.text
    async with org.client(key=org.read_key) as c:
        for filters, field, text in EDGE_FILTERS:
            request = query_pb2.QueryVectorTableRequest(vector_table_id=vt["id"], query="jacket")
            json_format.ParseDict(filters, request.filters)
            await assert_grpc_400(c.query.QueryVectorTable(request), field, text)


# -- consistency -------------------------------------------------------------------------------


async def test_a_401_carries_the_request_id_of_its_header(org: Org) -> None:
    for headers in ({}, {"Authorization": "Bearer sk_wrong"}, {"Authorization": "Basic x"}):
        r = await org.rest.get("/v1/connections", headers=headers)
        status, _, err = rest_error(r)
        assert status == 401 and err["request_id"] == r.headers["x-request-id"]
    request_id = uuid.uuid4().hex
    async with grpc.aio.insecure_channel(org.grpc_target) as channel:
        stub = channel.unary_unary(
            "/embedd.v1.ConnectionService/ListConnections",
            request_serializer=connection_pb2.ListConnectionsRequest.SerializeToString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub(connection_pb2.ListConnectionsRequest(), metadata=(("x-request-id", request_id),))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for key, value in info.value.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            error_info = error_details_pb2.ErrorInfo()
            assert status.details[0].Unpack(error_info)
            assert error_info.metadata["request_id"] == request_id
            break
    else:
        raise AssertionError("no rich status")


async def test_environments_are_listed_oldest_first(org: Org) -> None:
    names = ["prod"]
    for name in ("staging", "dev", "qa"):
        assert (await org.http("POST", "/v1/environments", {"name": name})).status_code == 200
        names.append(name)
    assert [e["name"] for e in (await org.http("GET", "/v1/environments")).json()["environments"]] == names
    seen: list[str] = []
    async with org.client() as c:
        cursor = ""
        while True:
            page = await c.environments.ListEnvironments(
                environment_pb2.ListEnvironmentsRequest(limit=3, cursor=cursor)
            )
            seen += [e.name for e in page.environments]
            cursor = page.next_cursor
            if not cursor:
                break
    assert seen == names


async def test_embedding_provider_base_url_with_credentials_is_400(org: Org) -> None:
    body = {
        "name": "p",
        "provider": "openai",
        "api_key": "k" * 20,
        "default_model": "text-embedding-3-small",
        "base_url": "https://user:secret@proxy.example/v1",
    }
    assert_400(await org.http("POST", "/v1/embedding-providers", body), "base_url", "credentials")
    async with org.client() as c:
        request = embedding_provider_pb2.CreateEmbeddingProviderRequest(
            name="p",
            provider=values_pb2.EmbeddingProviderType.openai,
            api_key="k" * 20,
            default_model="text-embedding-3-small",
            base_url="https://user:secret@proxy.example/v1",
        )
        await assert_grpc_400(c.embedding_providers.CreateEmbeddingProvider(request), "base_url")


# -- size limits -------------------------------------------------------------------------------


async def test_size_limits_are_envoys_first_with_embedd_bodies(org: Org) -> None:
    """docs/limits.md: REST meets Envoy's 1 MiB body and 16 KiB header limits (413/431, Embedd
    bodies); just under them the server answers as usual (no raw 429 from the gRPC server's own
    limits); a gRPC client meets the server's 8 MiB message limit."""
    big = await org.rest.post(
        "/v1/api-keys",
        content=b'{"name": "' + b"a" * (2 * 1024 * 1024) + b'"}',
        headers={**org.headers(), "content-type": "application/json"},
    )
    status, code, err = rest_error(big)
    assert (status, code) == (413, "payload_too_large") and err["request_id"] == big.headers["x-request-id"]
    for headers, path in (
        ({"Authorization": "Bearer sk_" + "a" * 20_000}, "/v1/connections"),
        ({**org.headers(), "X-Environment-Id": "e" * 20_000}, "/v1/connections"),
        (org.headers(), "/v1/connections/conn_" + "a" * 20_000),
    ):
        r = await org.rest.get(path, headers=headers)
        status, code, err = rest_error(r)
        assert (status, code) == (431, "request_headers_too_large"), err
        assert err["request_id"] == r.headers["x-request-id"]
    just_under = await org.rest.get("/v1/connections", headers={"Authorization": "Bearer sk_" + "a" * 15_000})
    assert rest_error(just_under)[:2] == (401, "unauthorized")
    path_under = await org.rest.get("/v1/connections/conn_" + "a" * 15_000, headers=org.headers())
    assert rest_error(path_under)[:2] == (400, "validation_error")
    async with org.client() as c:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await c.api_keys.CreateApiKey(api_key_pb2.CreateApiKeyRequest(name="a" * (9 * 1024 * 1024)))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_header_values_that_are_not_utf8_are_answered_cleanly(org: Org, log_path: Path) -> None:
    """Envoy passes such bytes on; grpc decodes them as latin-1 after logging a traceback that
    is the client's doing, not the server's (logs.py turns it into a warning line)."""
    before = len(log_path.read_bytes())  # noqa: ASYNC240 - a small file
    for name, value in ((b"x-environment-id", b"\xff\xfe"), (b"authorization", b"Bearer sk_\xff\xfe")):
        headers = [(b"authorization", f"Bearer {org.key}".encode())] if name != b"authorization" else []
        r = await org.rest.get("/v1/connections", headers=[*headers, (name, value)])
        assert rest_error(r)[:2] in ((404, "environment_not_found"), (401, "unauthorized")), r.text
    logged = log_path.read_bytes()[before:].decode()  # noqa: ASYNC240 - a small file
    assert "Invalid encoding" in logged and "Traceback" not in logged
