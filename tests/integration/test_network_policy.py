"""The network policy against loopback targets (the session's PostgreSQL and a fake provider):
`public_only` refuses them - connection tests, vector-table creation, provider tests - with the
stable reason `network_policy_denied`; the allow-list lets them through; `permissive` (the
default, the session's server) reaches them. Each setting is its own server (engine off: the
control plane is shared with the session's server), REST through its own Envoy and gRPC."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from embedd.v1 import connection_pb2, embedding_provider_pb2, values_pb2, vector_table_pb2
from embedd_server import app
from embedd_server.config import load_settings
from embedd_server.devtools.envoy import EnvoyProcess, render_config

from tests.conftest import UserDb
from tests.fakes.providers import FakeOpenAI
from tests.harness import ROOT, UNTHROTTLED, Org, grpc_error, random_secret_key, rest_error
from tests.integration.test_vector_tables import seed_body

DENIED = values_pb2.ConnectionTestFailure.network_policy_denied
MODEL = {"embedding_model": "text-embedding-3-small", "embedding_dimensions": 256}


@dataclass
class Server:
    service: app.Service
    envoy: EnvoyProcess
    rest: httpx.AsyncClient

    async def org(self) -> Org:
        org_id = await self.service.orgs.create_org(
            f"policy-{secrets.token_hex(3)}", requests_per_minute=UNTHROTTLED
        )
        _, key = await self.service.orgs.create_api_key(org_id, "full", "full")
        _, read_key = await self.service.orgs.create_api_key(org_id, "reader", "read_only")
        return Org(org_id, key, read_key, f"127.0.0.1:{self.service.port}", self.rest)


async def _server(control_dsn: str, work: Path, **policy: str) -> AsyncIterator[Server]:
    service = await app.start(
        load_settings(
            database_url=control_dsn,
            grpc_host="127.0.0.1",
            grpc_port=0,
            secret_key=random_secret_key(),
            connect_timeout_s=5.0,
            engine_enabled=False,
            **policy,
        )
    )
    config = render_config(
        ROOT / "envoy" / "envoy.yaml",
        grpc_host="127.0.0.1",
        grpc_port=service.port,
        http_host="127.0.0.1",
        http_port=0,
        admin_port=0,
        descriptor=ROOT / "envoy" / "embedd.binpb",
    )
    envoy = EnvoyProcess(config, work_dir=work)
    try:
        await asyncio.to_thread(envoy.start)  # it health-checks the server on this loop
        async with httpx.AsyncClient(base_url=envoy.http_url, timeout=30) as rest:
            yield Server(service, envoy, rest)
    finally:
        await asyncio.to_thread(envoy.stop)
        await service.stop(1.0)


@pytest.fixture(scope="module")
async def public_only(control_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    async for server in _server(control_dsn, tmp_path_factory.mktemp("envoy"), network_policy="public_only"):
        yield server


@pytest.fixture(scope="module")
async def allow_listed(control_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    async for server in _server(
        control_dsn,
        tmp_path_factory.mktemp("envoy"),
        network_policy="public_only",
        network_allow="127.0.0.0/8",
    ):
        yield server


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-policy-test") as provider:
        yield provider


async def _setup(org: Org, user_db: UserDb, fake: FakeOpenAI, host: str = "127.0.0.1") -> tuple[str, str]:
    conn = await org.http(
        "POST",
        "/v1/providers/postgresql/connections",
        {"name": "db", "mode": "platform", "credentials": user_db.credentials(host=host)},
    )
    emb = await org.http(
        "POST",
        "/v1/embedding-providers",
        {
            "name": "p",
            "provider": "openai",
            "api_key": "sk-policy-test",
            "default_model": "text-embedding-3-small",
            "base_url": fake.base_url,
        },
    )
    assert conn.status_code == 200 and emb.status_code == 200, (conn.text, emb.text)
    return conn.json()["id"], emb.json()["id"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_public_only_refuses_loopback_with_a_stable_reason(
    public_only: Server, user_db: UserDb, fake: FakeOpenAI, host: str
) -> None:
    org = await public_only.org()
    conn_id, emb_id = await _setup(org, user_db, fake, host)
    tested = (await org.http("POST", f"/v1/connections/{conn_id}/test")).json()
    assert (tested["status"], tested["reason"]) == ("failed", "network_policy_denied"), tested
    assert "network policy" in tested["message"] and host in tested["message"]
    assert (await org.http("GET", f"/v1/connections/{conn_id}")).json()["status"] == "error"

    status, code, err = rest_error(
        await org.http("POST", "/v1/vector-tables", seed_body(conn_id, emb_id, **MODEL))
    )
    assert (status, code) == (403, "network_policy_denied") and "EMBEDD_NETWORK_ALLOW" in err["message"]

    provider = (await org.http("POST", f"/v1/embedding-providers/{emb_id}/test")).json()
    assert (provider["status"], provider["reason"]) == ("failed", "network_policy_denied"), provider
    assert fake.counters.requests == 0  # never reached

    async with org.client() as c:
        result = await c.connections.TestConnection(
            connection_pb2.TestConnectionRequest(connection_id=conn_id)
        )
        assert (result.status, result.reason) == (values_pb2.TestStatus.failed, DENIED)
        result_p = await c.embedding_providers.TestEmbeddingProvider(
            embedding_provider_pb2.TestEmbeddingProviderRequest(embedding_provider_id=emb_id)
        )
        assert result_p.reason == values_pb2.EmbeddingProviderTestFailure.network_policy_denied
        gcode, reason, _, _ = await grpc_error(
            c.vector_tables.CreateVectorTable(
                vector_table_pb2.CreateVectorTableRequest(
                    vector_table=vector_table_pb2.VectorTable(
                        name="t",
                        connection_id=conn_id,
                        embedding_provider_id=emb_id,
                        source_table="public.products",
                        primary_key_column="id",
                        columns=[vector_table_pb2.Column(name="name", role=values_pb2.ColumnRole.embedding)],
                    )
                )
            )
        )
    assert (gcode, reason) == (grpc.StatusCode.PERMISSION_DENIED, "network_policy_denied")


async def test_the_allow_list_lets_loopback_through(
    allow_listed: Server, user_db: UserDb, fake: FakeOpenAI
) -> None:
    org = await allow_listed.org()
    conn_id, emb_id = await _setup(org, user_db, fake)
    tested = (await org.http("POST", f"/v1/connections/{conn_id}/test")).json()
    assert tested["status"] == "ok", tested
    provider = (await org.http("POST", f"/v1/embedding-providers/{emb_id}/test")).json()
    assert provider["status"] == "ok", provider
    r = await org.http(
        "POST",
        "/v1/vector-tables",
        seed_body(conn_id, emb_id, name=f"allowed-{secrets.token_hex(3)}", **MODEL),
    )
    assert r.status_code == 200, r.text
    assert (
        await org.http("DELETE", f"/v1/vector-tables/{r.json()['id']}?drop_vectors=true")
    ).status_code == 200


async def test_permissive_reaches_loopback(org: Org, user_db: UserDb, fake: FakeOpenAI) -> None:
    """The default (the session's server): the dev stack's loopback databases work."""
    conn_id, emb_id = await _setup(org, user_db, fake, "localhost")
    assert (await org.http("POST", f"/v1/connections/{conn_id}/test")).json()["status"] == "ok"
    assert (await org.http("POST", f"/v1/embedding-providers/{emb_id}/test")).json()["status"] == "ok"
