"""Rate limits per organisation: headers on every response (REST and gRPC), 429 with
Retry-After / RESOURCE_EXHAUSTED with RetryInfo, one budget for all keys and all replicas,
streams counted once, health checks exempt, admin changes heard at once."""

from __future__ import annotations

import asyncio
import secrets
import time

import grpc
from embedd.v1 import api_key_pb2, connection_pb2, environment_pb2, task_pb2
from embedd_client import EmbeddClient
from embedd_server import app
from embedd_server.devtools.pg import LocalPostgres, create_database
from embedd_server.devtools.serverproc import ServerProcess, create_org, new_secret_key
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import UserDb
from tests.harness import Org, drop_control_plane, rest_error


async def limited_org(service: app.Service, org: Org, rpm: int) -> Org:
    """A fresh organisation with a tiny limit and two keys (the limit is per organisation)."""
    org_id = await service.orgs.create_org(f"limited-{secrets.token_hex(3)}", "pro", rpm)
    _, key = await service.orgs.create_api_key(org_id, "one", "full")
    _, other = await service.orgs.create_api_key(org_id, "two", "read_only")
    return Org(org_id, key, other, org.grpc_target, org.rest)


async def test_rest_headers_and_429(service: app.Service, org: Org) -> None:
    small = await limited_org(service, org, 3)
    started = time.time()
    seen = []
    for key in (small.key, small.read_key, small.key):  # two keys, one budget
        r = await small.http("GET", "/v1/connections", key=key)
        assert r.status_code == 200, r.text
        seen.append(r.headers)
    assert [h["x-ratelimit-limit"] for h in seen] == ["3", "3", "3"]
    assert [h["x-ratelimit-remaining"] for h in seen] == ["2", "1", "0"]
    reset = int(seen[0]["x-ratelimit-reset"])
    assert started < reset <= started + 61
    refused = await small.http("GET", "/v1/connections", key=small.read_key)
    status, code, error = rest_error(refused)
    assert (status, code) == (429, "rate_limit_exceeded")
    assert "3 requests per minute" in error["message"] and error["request_id"]
    retry = int(refused.headers["retry-after"])
    assert 1 <= retry <= 120
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert refused.headers["x-ratelimit-limit"] == "3"


async def test_grpc_metadata_and_resource_exhausted(service: app.Service, org: Org) -> None:
    small = await limited_org(service, org, 2)
    async with small.client() as c:
        call = c.environments.ListEnvironments(environment_pb2.ListEnvironmentsRequest())
        await call
        initial = dict(await call.initial_metadata())
        assert initial["x-ratelimit-limit"] == "2" and initial["x-ratelimit-remaining"] == "1"
        await c.environments.ListEnvironments(environment_pb2.ListEnvironmentsRequest())
        try:
            await c.environments.ListEnvironments(environment_pb2.ListEnvironmentsRequest())
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            trailing = dict(err.trailing_metadata() or ())
            assert int(trailing["retry-after"]) >= 1
            status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
            kinds = {d.type_url.rsplit("/", 1)[-1]: d for d in status.details}
            info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
            kinds["google.rpc.ErrorInfo"].Unpack(info)
            kinds["google.rpc.RetryInfo"].Unpack(retry)
            assert info.reason == "rate_limit_exceeded"
            assert retry.retry_delay.seconds == int(trailing["retry-after"])
        else:
            raise AssertionError("the third call of a 2 rpm organisation was admitted")


async def test_a_call_admitted_then_refused_by_its_servicer_keeps_its_status_and_headers(
    service: app.Service, org: Org
) -> None:
    """Counted, then refused by its servicer: REST gets the servicer's status and body with
    the X-RateLimit-* headers, gRPC its status with ErrorInfo and the headers in trailers."""
    small = await limited_org(service, org, 5)
    missing = "conn_" + "0" * 16
    for _ in range(2):
        r = await small.http("GET", f"/v1/connections/{missing}")
        status, code, _ = rest_error(r)
        assert (status, code) == (404, "connection_not_found"), r.text
        assert r.headers["x-ratelimit-limit"] == "5" and "x-ratelimit-remaining" in r.headers
    async with small.client() as c:
        call = c.connections.GetConnection(connection_pb2.GetConnectionRequest(connection_id=missing))
        try:
            await call
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND
            trailing = dict(err.trailing_metadata() or ())
            assert trailing["x-ratelimit-limit"] == "5"
            status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
            info = error_details_pb2.ErrorInfo()
            status.details[0].Unpack(info)
            assert info.reason == "connection_not_found"
        else:
            raise AssertionError("an unknown connection was found")


async def test_health_checks_are_exempt_and_streams_count_once(service: app.Service, org: Org) -> None:
    small = await limited_org(service, org, 5)
    async with grpc.aio.insecure_channel(small.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(20):
            reply = await health.Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    async with small.client() as c:
        # A stream that fails early still counted once; then the unary call sees 3 left.
        stream = c.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id="task_doesnotexist0000"))
        try:
            async for _ in stream:
                pass
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND
        call = c.api_keys.ListApiKeys(api_key_pb2.ListApiKeysRequest())
        await call
        assert dict(await call.initial_metadata())["x-ratelimit-remaining"] == "3"


async def test_own_limit_change_takes_effect_at_once(service: app.Service, org: Org) -> None:
    small = await limited_org(service, org, 1)
    assert (await small.http("GET", "/v1/connections")).status_code == 200
    assert (await small.http("GET", "/v1/connections")).status_code == 429
    await service.orgs.set_request_limit(small.org_id, 1000)  # what `update-org` does
    for _ in range(50):  # the NOTIFY reaches the auth cache within milliseconds
        r = await small.http("GET", "/v1/connections")
        if r.status_code == 200:
            break
        await asyncio.sleep(0.02)
    assert r.status_code == 200 and r.headers["x-ratelimit-limit"] == "1000"
    await service.orgs.set_tier(small.org_id, "business")
    await service.orgs.set_request_limit(small.org_id, None)  # the tier's limit again
    for _ in range(50):
        r = await small.http("GET", "/v1/connections")
        if r.headers.get("x-ratelimit-limit") == "1000":
            break
        await asyncio.sleep(0.02)
    assert r.headers["x-ratelimit-limit"] == "1000"  # business: 1,000 per minute


async def test_two_server_processes_share_one_budget(pg: LocalPostgres, user_db: UserDb) -> None:
    name = f"control_{secrets.token_hex(4)}"
    await create_database(pg.superuser_dsn(), name, with_vector=False)
    control = pg.superuser_dsn(name)
    key = new_secret_key()
    servers = [ServerProcess(control, key).start(), ServerProcess(control, key).start()]
    try:
        api_key = create_org(control, key, requests_per_minute=10)
        clients = [EmbeddClient(f"127.0.0.1:{s.port}", api_key) for s in servers]
        outcomes = []
        for i in range(16):
            try:
                await clients[i % 2].connections.ListConnections(connection_pb2.ListConnectionsRequest())
                outcomes.append("ok")
            except grpc.aio.AioRpcError as err:
                outcomes.append(err.code().name)
        for c in clients:
            await c.close()
    finally:
        for s in servers:
            s.stop()
        await drop_control_plane(pg, name, user_db.owner_dsn)
    assert outcomes.count("ok") == 10 and outcomes.count("RESOURCE_EXHAUSTED") == 6, outcomes
    assert set(outcomes[:10]) == {"ok"}
