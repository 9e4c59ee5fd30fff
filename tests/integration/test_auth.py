"""Authentication, permissions, environments and isolation - over gRPC and REST."""

from __future__ import annotations

import grpc
import pytest
from embedd.v1 import api_key_pb2, connection_pb2, environment_pb2
from embedd_client import EmbeddClient
from embedd_server import app
from embedd_server.config import load_settings

from tests.harness import UNTHROTTLED, Org, grpc_error, random_secret_key, rest_error, wait_for


async def test_missing_key(org: Org) -> None:
    async with org.client() as c:
        stub = c.connections.__class__(grpc.aio.insecure_channel(org.grpc_target))
        code, reason, _, msg = await grpc_error(stub.ListConnections(connection_pb2.ListConnectionsRequest()))
    assert code == grpc.StatusCode.UNAUTHENTICATED and reason == "unauthorized"
    assert "Bearer" in msg
    status, code_, body = rest_error(await org.rest.get("/v1/connections"))
    assert (status, code_) == (401, "unauthorized")
    assert body["request_id"]


@pytest.mark.parametrize("header", ["Bearer sk_not_a_real_key", "Basic abc", "sk_live", "Bearer x"])
async def test_wrong_or_malformed_key(org: Org, header: str) -> None:
    status, code, _ = rest_error(await org.rest.get("/v1/connections", headers={"Authorization": header}))
    assert (status, code) == (401, "unauthorized")
    async with org.client(key="sk_not_a_real_key") as c:
        code_, reason, _, _ = await grpc_error(
            c.connections.ListConnections(connection_pb2.ListConnectionsRequest())
        )
    assert code_ == grpc.StatusCode.UNAUTHENTICATED and reason == "unauthorized"


async def test_revoked_key_is_refused_at_once(org: Org) -> None:
    async with org.client() as c:
        made = await c.api_keys.CreateApiKey(api_key_pb2.CreateApiKeyRequest(name="temp"))
        async with org.client(key=made.key) as temp:
            await temp.connections.ListConnections(connection_pb2.ListConnectionsRequest())
            revoked = await c.api_keys.DeleteApiKey(api_key_pb2.DeleteApiKeyRequest(api_key_id=made.id))
            assert revoked.HasField("revoked_at")
            code, reason, _, msg = await grpc_error(
                temp.connections.ListConnections(connection_pb2.ListConnectionsRequest())
            )
    assert code == grpc.StatusCode.UNAUTHENTICATED and reason == "key_revoked"
    assert "new key" in msg
    status, code_, _ = rest_error(await org.http("GET", "/v1/connections", key=made.key))
    assert (status, code_) == (401, "key_revoked")


async def test_read_only_may_read_but_not_write(org: Org) -> None:
    r = await org.http("GET", "/v1/connections", key=org.read_key)
    assert r.status_code == 200, r.text
    r = await org.http("GET", "/v1/embedding-models", key=org.read_key)
    assert r.status_code == 200
    body = {"name": "x", "provider": "local", "default_model": "local-lexical-384"}
    status, code, body_ = rest_error(
        await org.http("POST", "/v1/embedding-providers", body, key=org.read_key)
    )
    assert (status, code) == (403, "permission_denied")
    assert "read_only" in body_["message"]
    async with org.client(key=org.read_key) as c:
        code_, reason, _, _ = await grpc_error(
            c.api_keys.CreateApiKey(api_key_pb2.CreateApiKeyRequest(name="x"))
        )
    assert code_ == grpc.StatusCode.PERMISSION_DENIED and reason == "permission_denied"
    # A query is a read in Embedd: read_only keys get past auth (and reach the not-yet-built RPC).
    r = await org.http("POST", "/v1/vector-tables/vt_x/query", {"query": "q"}, key=org.read_key)
    assert r.status_code != 403


async def test_other_organisation_sees_404_never_403(org: Org, service: app.Service) -> None:
    r = await org.http(
        "POST",
        "/v1/embedding-providers",
        {"name": "mine", "provider": "local", "default_model": "local-lexical-384"},
    )
    assert r.status_code == 200, r.text
    mine = r.json()["id"]
    other_id = await service.orgs.create_org("intruder", requests_per_minute=UNTHROTTLED)
    _, other_key = await service.orgs.create_api_key(other_id, "k", "full")
    for method, path in (
        ("GET", f"/v1/embedding-providers/{mine}"),
        ("DELETE", f"/v1/embedding-providers/{mine}"),
    ):
        status, code, _ = rest_error(await org.http(method, path, key=other_key))
        assert (status, code) == (404, "embedding_provider_not_found")
    listed = (await org.http("GET", "/v1/embedding-providers", key=other_key)).json()
    assert listed["embedding_providers"] == []
    # still there for its owner
    assert (await org.http("GET", f"/v1/embedding-providers/{mine}")).status_code == 200


async def test_environments_scope_resources(org: Org) -> None:
    r = await org.http("POST", "/v1/environments", {"name": "staging"})
    assert r.status_code == 200, r.text
    staging = r.json()
    assert staging["id"].startswith("env_") and staging["name"] == "staging" and not staging["is_default"]
    made = await org.http(
        "POST",
        "/v1/embedding-providers",
        {"name": "s", "provider": "local", "default_model": "local-lexical-384"},
        environment_id=staging["id"],
    )
    assert made.status_code == 200
    pid = made.json()["id"]
    # invisible from prod (the default), visible from staging (by id or by name)
    assert (await org.http("GET", f"/v1/embedding-providers/{pid}")).status_code == 404
    assert (
        await org.http("GET", f"/v1/embedding-providers/{pid}", environment_id=staging["id"])
    ).status_code == 200
    assert (
        await org.http("GET", f"/v1/embedding-providers/{pid}", environment_id="staging")
    ).status_code == 200
    # an environment that holds resources cannot be deleted
    status, code, _ = rest_error(await org.http("DELETE", f"/v1/environments/{staging['id']}"))
    assert (status, code) == (409, "environment_conflict")
    assert (
        await org.http("DELETE", f"/v1/embedding-providers/{pid}", environment_id="staging")
    ).status_code == 200
    r = await org.http("DELETE", f"/v1/environments/{staging['id']}")
    assert r.status_code == 200 and r.json() == {"id": staging["id"], "deleted": True}


async def test_unknown_environment_is_404(org: Org) -> None:
    status, code, _ = rest_error(await org.http("GET", "/v1/connections", environment_id="env_nope"))
    assert (status, code) == (404, "environment_not_found")
    async with org.client(environment_id="env_nope") as c:
        code_, reason, _, _ = await grpc_error(
            c.connections.ListConnections(connection_pb2.ListConnectionsRequest())
        )
    assert code_ == grpc.StatusCode.NOT_FOUND and reason == "environment_not_found"


async def test_environment_rules(org: Org) -> None:
    envs = (await org.http("GET", "/v1/environments")).json()["environments"]
    prod = next(e for e in envs if e["name"] == "prod")
    assert prod["is_default"]
    status, code, _ = rest_error(await org.http("DELETE", f"/v1/environments/{prod['id']}"))
    assert (status, code) == (409, "environment_conflict")
    for bad in ("Prod!", "", "x" * 51):
        status, code, body = rest_error(await org.http("POST", "/v1/environments", {"name": bad}))
        assert (status, code) == (400, "validation_error")
        assert body["details"][0]["field"] == "name"
    status, code, _ = rest_error(await org.http("POST", "/v1/environments", {"name": "prod"}))
    assert (status, code) == (409, "environment_conflict")
    async with org.client() as c:
        env = await c.environments.CreateEnvironment(environment_pb2.CreateEnvironmentRequest(name="dev"))
        got = await c.environments.GetEnvironment(
            environment_pb2.GetEnvironmentRequest(environment_id=env.id)
        )
        assert got.name == "dev"


async def test_api_keys_shown_once_and_listed_with_prefix(org: Org) -> None:
    r = await org.http("POST", "/v1/api-keys", {"name": "ci", "permission": "read_only"})
    assert r.status_code == 200, r.text
    made = r.json()
    assert made["key"].startswith("sk_") and made["permission"] == "read_only"
    assert made["key"].startswith(made["key_prefix"])
    listed = (await org.http("GET", "/v1/api-keys")).json()
    assert made["key"] not in str(listed)
    ids = [k["id"] for k in listed["api_keys"]]
    assert made["id"] in ids
    assert all("key" not in k for k in listed["api_keys"])  # the secret field is absent, not empty
    r = await org.http("DELETE", f"/v1/api-keys/{made['id']}")
    assert r.status_code == 200 and r.json()["revoked_at"] and "key" not in r.json()
    listed = (await org.http("GET", "/v1/api-keys")).json()["api_keys"]
    assert any(k["id"] == made["id"] and k.get("revoked_at") for k in listed)
    status, code, _ = rest_error(await org.http("DELETE", "/v1/api-keys/key_doesnotexist"))
    assert (status, code) == (404, "api_key_not_found")


async def test_revocation_reaches_other_replicas_at_once(org: Org, control_dsn: str) -> None:
    """Replicas cache key lookups; a revoke on one is heard by the others through NOTIFY."""
    other = await app.start(
        load_settings(
            database_url=control_dsn,
            grpc_host="127.0.0.1",
            grpc_port=0,
            secret_key=random_secret_key(),
            engine_enabled=False,
        )
    )
    try:
        async with org.client() as c:
            made = await c.api_keys.CreateApiKey(api_key_pb2.CreateApiKeyRequest(name="replicated"))
            async with EmbeddClient(f"127.0.0.1:{other.port}", made.key) as there:
                request = connection_pb2.ListConnectionsRequest()
                await there.connections.ListConnections(request)
                assert other.authenticator.cached(made.id)  # so only an invalidation helps
                await c.api_keys.DeleteApiKey(api_key_pb2.DeleteApiKeyRequest(api_key_id=made.id))

                async def refused() -> bool:
                    try:
                        await there.connections.ListConnections(request)
                    except grpc.aio.AioRpcError as err:
                        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
                        return True
                    return False

                await wait_for(refused, 2.0, what="the revoke to reach the replica")
    finally:
        await other.stop(1.0)
