"""Connections end to end: the seed's step 1-2 shapes, validation, real tests, deletion."""

from __future__ import annotations

import socket
from typing import Any

import asyncpg
import grpc
import pytest
from embedd.v1 import connection_pb2, values_pb2

from tests.conftest import UserDb
from tests.harness import Org, grpc_error, rest_error

SEED_KEYS = {"id", "name", "provider", "mode", "status", "created_at"}


async def create(org: Org, body: dict[str, Any]) -> dict[str, Any]:
    r = await org.http("POST", "/v1/providers/postgresql/connections", body)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_create_has_exactly_the_seed_shape(org: Org, user_db: UserDb) -> None:
    made = await create(org, {"name": "product-db", "mode": "platform", "credentials": user_db.credentials()})
    assert set(made) == SEED_KEYS
    assert made["id"].startswith("conn_")
    assert (made["name"], made["provider"], made["mode"], made["status"]) == (
        "product-db",
        "postgresql",
        "platform",
        "created",
    )
    assert made["created_at"].endswith("Z") and "." not in made["created_at"]
    got = (await org.http("GET", f"/v1/connections/{made['id']}")).json()
    assert got == made


async def test_create_over_grpc(org: Org, user_db: UserDb) -> None:
    async with org.client() as c:
        resp = await c.connections.CreateConnection(
            connection_pb2.CreateConnectionRequest(
                provider=values_pb2.ConnectionProvider.postgresql,
                name="g",
                mode=values_pb2.Mode.managed,
                credentials=connection_pb2.PostgresCredentials(
                    host=user_db.host,
                    port=user_db.port,
                    database=user_db.database,
                    user=user_db.user,
                    password=user_db.password,
                ),
            )
        )
        assert resp.status == values_pb2.ConnectionStatus.created
        listed = await c.connections.ListConnections(connection_pb2.ListConnectionsRequest())
        assert [x.id for x in listed.connections] == [resp.id]


BAD_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("empty name", {"name": "", "mode": "platform"}, "name"),
    ("long name", {"name": "x" * 101, "mode": "platform"}, "name"),
    ("no mode", {"name": "n"}, "mode"),
    ("no host", {"name": "n", "mode": "platform", "credentials": {"host": ""}}, "credentials.host"),
    (
        "no password",
        {"name": "n", "mode": "platform", "credentials": {"password": ""}},
        "credentials.password",
    ),
    ("bad port", {"name": "n", "mode": "platform", "credentials": {"port": 70000}}, "credentials.port"),
    (
        "bad ssl",
        {"name": "n", "mode": "platform", "credentials": {"ssl_mode": "always"}},
        "credentials.ssl_mode",
    ),
    (
        "bad schema",
        {"name": "n", "mode": "platform", "credentials": {"schema": "a;drop"}},
        "credentials.schema",
    ),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_validation_errors_over_both_surfaces(
    org: Org, user_db: UserDb, case: str, body: dict[str, Any], field: str
) -> None:
    body = dict(body)
    body["credentials"] = user_db.credentials(**body.get("credentials", {}))
    status, code, err = rest_error(await org.http("POST", "/v1/providers/postgresql/connections", body))
    assert (status, code) == (400, "validation_error")
    assert field in [d["field"] for d in err["details"]], err
    assert field.rsplit(".", maxsplit=1)[-1] in err["message"]

    request = connection_pb2.CreateConnectionRequest(
        provider=values_pb2.ConnectionProvider.postgresql, name=body["name"]
    )
    if "mode" in body:
        request.mode = values_pb2.Mode.Value.Value(body["mode"])
    creds = body["credentials"]
    request.credentials.CopyFrom(connection_pb2.PostgresCredentials(**creds))
    async with org.client() as c:
        gcode, reason, violations, _ = await grpc_error(c.connections.CreateConnection(request))
    assert gcode == grpc.StatusCode.INVALID_ARGUMENT and reason == "validation_error"
    assert field in [f for f, _ in violations]
    assert (await org.http("GET", "/v1/connections")).json()["connections"] == []  # nothing half-written


async def test_missing_credentials(org: Org) -> None:
    status, code, err = rest_error(
        await org.http("POST", "/v1/providers/postgresql/connections", {"name": "n", "mode": "platform"})
    )
    assert (status, code) == (400, "validation_error") and err["details"][0]["field"] == "credentials"


async def test_transcoder_rejections_are_json(org: Org, user_db: UserDb) -> None:
    body = {"name": "n", "mode": "bogus", "credentials": user_db.credentials()}
    status, code, _ = rest_error(await org.http("POST", "/v1/providers/postgresql/connections", body))
    assert (status, code) == (400, "validation_error")
    status, code, _ = rest_error(
        await org.http("POST", "/v1/providers/mysql/connections", {**body, "mode": "platform"})
    )
    assert status == 400 and code == "validation_error"
    status, code, _ = rest_error(await org.http("GET", "/v1/connections?bogus=1"))
    assert (status, code) == (400, "validation_error")
    status, code, _ = rest_error(await org.http("GET", "/v1/nothing-here"))
    assert (status, code) == (404, "not_found")


async def test_snowflake_is_unimplemented_with_a_clear_message(org: Org, user_db: UserDb) -> None:
    body = {"name": "n", "mode": "platform", "credentials": user_db.credentials()}
    status, code, err = rest_error(await org.http("POST", "/v1/providers/snowflake/connections", body))
    assert (status, code) == (501, "not_implemented")
    assert "Snowflake" in err["message"]


async def test_get_unknown_and_malformed_ids(org: Org) -> None:
    status, code, _ = rest_error(await org.http("GET", "/v1/connections/conn_doesnotexist"))
    assert (status, code) == (404, "connection_not_found")
    status, code, err = rest_error(await org.http("GET", "/v1/connections/vt_wrongkind"))
    assert (status, code) == (400, "validation_error") and err["details"][0]["field"] == "connection_id"


async def test_pagination(org: Org, user_db: UserDb) -> None:
    ids = [
        (await create(org, {"name": f"c{i}", "mode": "managed", "credentials": user_db.credentials()}))["id"]
        for i in range(5)
    ]
    seen: list[str] = []
    cursor = ""
    while True:
        page = (await org.http("GET", f"/v1/connections?limit=2&cursor={cursor}")).json()
        assert len(page["connections"]) <= 2
        seen += [c["id"] for c in page["connections"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))  # newest first, each exactly once
    status, code, _ = rest_error(await org.http("GET", "/v1/connections?limit=101"))
    assert (status, code) == (400, "validation_error")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("case", "mode", "overrides", "reason"),
    [
        ("ok platform", "platform", {}, None),
        ("ok managed", "managed", {}, None),
        ("wrong password", "platform", {"password": "wrong-password"}, "bad_credentials"),
        ("unknown database", "platform", {"database": "no_such_db"}, "database_not_found"),
        ("closed port", "platform", {"port": "CLOSED"}, "unreachable"),
        ("no pgvector", "platform", {"database": "novector"}, "vector_extension_missing"),
        ("no CREATE privilege", "platform", {"user": "READER"}, "create_privilege_missing"),
        ("no CREATE is fine in managed mode", "managed", {"user": "READER"}, None),
        ("missing schema", "platform", {"schema": "nope"}, "schema_not_found"),
    ],
)
async def test_connection_test_reasons(
    org: Org, user_db: UserDb, case: str, mode: str, overrides: dict[str, Any], reason: str | None
) -> None:
    if overrides.get("port") == "CLOSED":
        overrides = {**overrides, "port": _closed_port()}
    if overrides.get("user") == "READER":
        overrides = {**overrides, "user": user_db.reader, "password": user_db.reader_password}
    made = await create(org, {"name": case, "mode": mode, "credentials": user_db.credentials(**overrides)})
    r = await org.http("POST", f"/v1/connections/{made['id']}/test")
    assert r.status_code == 200, r.text
    result = r.json()
    after = (await org.http("GET", f"/v1/connections/{made['id']}")).json()
    assert after["last_tested_at"]
    if reason is None:
        assert result == {"status": "ok", "latency_ms": result["latency_ms"]}
        assert isinstance(result["latency_ms"], int) and result["latency_ms"] >= 0
        assert after["status"] == "connected"
    else:
        assert result["status"] == "failed" and result["reason"] == reason, result
        assert result["message"]
        assert after["status"] == "error"
        password = str(user_db.credentials(**overrides)["password"])
        assert password not in r.text


async def test_connection_test_over_grpc(org: Org, user_db: UserDb) -> None:
    made = await create(org, {"name": "t", "mode": "platform", "credentials": user_db.credentials()})
    async with org.client() as c:
        res = await c.connections.TestConnection(
            connection_pb2.TestConnectionRequest(connection_id=made["id"])
        )
    assert res.status == values_pb2.TestStatus.ok and not res.HasField("reason")


async def test_delete_and_conflict(org: Org, user_db: UserDb, control_dsn: str) -> None:
    made = await create(org, {"name": "d", "mode": "platform", "credentials": user_db.credentials()})
    emb = (
        await org.http(
            "POST",
            "/v1/embedding-providers",
            {"name": "e", "provider": "local", "default_model": "local-lexical-384"},
        )
    ).json()
    # Vector tables arrive with issue #4; a row in the control plane stands in for one here.
    conn = await asyncpg.connect(control_dsn)
    try:
        env_id = await conn.fetchval("SELECT env_id FROM connections WHERE id = $1", made["id"])
        await conn.execute(
            "INSERT INTO vector_tables (id, org_id, env_id, name, connection_id, embedding_provider_id, spec)"
            " VALUES ('vt_conflict' || $1, $2, $3, 'v', $1, $4, '{}')",
            made["id"],
            org.org_id,
            env_id,
            emb["id"],
        )
        status, code, err = rest_error(await org.http("DELETE", f"/v1/connections/{made['id']}"))
        assert (status, code) == (409, "connection_conflict") and "Delete them first" in err["message"]
        status, code, _ = rest_error(await org.http("DELETE", f"/v1/embedding-providers/{emb['id']}"))
        assert (status, code) == (409, "embedding_provider_conflict")
        await conn.execute("DELETE FROM vector_tables WHERE connection_id = $1", made["id"])
    finally:
        await conn.close()
    r = await org.http("DELETE", f"/v1/connections/{made['id']}")
    assert r.status_code == 200 and r.json() == {"id": made["id"], "deleted": True}
    status, code, _ = rest_error(await org.http("GET", f"/v1/connections/{made['id']}"))
    assert (status, code) == (404, "connection_not_found")
