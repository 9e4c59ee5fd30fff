"""Server plumbing: health, reflection, graceful shutdown, migrations."""

from __future__ import annotations

import asyncio
import select
import socket

import asyncpg
import grpc
import pytest
from embedd.v1 import connection_pb2, environment_pb2, values_pb2
from embedd_client import EmbeddClient
from embedd_server import app
from embedd_server.config import load_settings
from embedd_server.domain.credentials import ConnectionTestResult
from embedd_server.store.db import migrate
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import UserDb
from tests.harness import (
    INJECTED,
    UNTHROTTLED,
    Org,
    SwitchableChecker,
    grpc_error,
    random_secret_key,
    rest_error,
    wait_for,
)


def _pending_connection(listener: socket.socket) -> bool:
    """True once a client connection waits on the listening socket (nobody accepts it)."""
    return bool(select.select([listener], [], [], 0)[0])


async def test_health_needs_no_key(service: app.Service) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for name in ("", "embedd.v1.ConnectionService"):
            res = await stub.Check(health_pb2.HealthCheckRequest(service=name))
            assert res.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services(service: app.Service) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        async for res in stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        ):
            names = {s.name for s in res.list_services_response.service}
            break
    assert set(app.SERVICE_NAMES) <= names


async def test_migrations_are_idempotent(control_dsn: str) -> None:
    conn = await asyncpg.connect(control_dsn)
    try:
        assert await migrate(conn) == []
        versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert versions[0]["version"] == 1
    finally:
        await conn.close()


async def test_graceful_shutdown_lets_in_flight_calls_finish(control_dsn: str) -> None:
    """stop() lets a call in flight finish, then refuses new ones. The in-flight call is a
    connection test against a port that accepts TCP but never answers (it times out)."""
    svc = await app.start(
        load_settings(
            database_url=control_dsn,
            grpc_host="127.0.0.1",
            grpc_port=0,
            secret_key=random_secret_key(),
            connect_timeout_s=1.5,
        )
    )
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes handshakes; nobody ever answers
    org_id = await svc.orgs.create_org("drain", requests_per_minute=UNTHROTTLED)
    _, key = await svc.orgs.create_api_key(org_id, "k", "full")
    try:
        async with EmbeddClient(f"127.0.0.1:{svc.port}", key) as c:
            made = await c.connections.CreateConnection(
                connection_pb2.CreateConnectionRequest(
                    provider=values_pb2.ConnectionProvider.postgresql,
                    name="silent",
                    mode=values_pb2.Mode.managed,
                    credentials=connection_pb2.PostgresCredentials(
                        host="127.0.0.1", port=silent.getsockname()[1], database="d", user="u", password="p"
                    ),
                )
            )
            call = asyncio.ensure_future(
                c.connections.TestConnection(connection_pb2.TestConnectionRequest(connection_id=made.id))
            )
            # in flight: the server's check has connected to the silent port
            await wait_for(lambda: _pending_connection(silent), what="the connection test to connect")
            assert not call.done()
            await svc.stop(5.0)
            result = await call
            assert (
                result.status == values_pb2.TestStatus.failed
                and result.reason == values_pb2.ConnectionTestFailure.timeout
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await c.environments.ListEnvironments(environment_pb2.ListEnvironmentsRequest(), timeout=2)
            assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        silent.close()


async def test_internal_errors_never_show_python_text(
    org: Org, user_db: UserDb, checker: SwitchableChecker
) -> None:
    """An unexpected exception becomes internal_error with a request id, nothing else."""

    async def boom(creds: object, platform_mode: bool) -> ConnectionTestResult:
        raise RuntimeError(f"secret internals: password=hunter2 at /srv/x.py line 3 ({INJECTED})")

    made = await org.http(
        "POST",
        "/v1/providers/postgresql/connections",
        {"name": "boom", "mode": "platform", "credentials": user_db.credentials()},
    )
    conn_id = made.json()["id"]
    with checker.replaced(boom):
        status, code, err = rest_error(await org.http("POST", f"/v1/connections/{conn_id}/test"))
        async with org.client() as c:
            gcode, reason, _, message = await grpc_error(
                c.connections.TestConnection(connection_pb2.TestConnectionRequest(connection_id=conn_id))
            )
    assert (status, code) == (500, "internal_error")
    assert (
        "hunter2" not in str(err) and "RuntimeError" not in str(err) and err["request_id"] in err["message"]
    )
    assert gcode == grpc.StatusCode.INTERNAL and reason == "internal_error" and "hunter2" not in message
