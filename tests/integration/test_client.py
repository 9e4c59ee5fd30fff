"""The Python client package against the real server: typed errors, retries of idempotent
calls from the service config, default deadlines, and watches that survive a dropped
connection - for the async client and the blocking one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from embedd.v1 import connection_pb2, environment_pb2, sync_pb2, task_pb2, values_pb2
from embedd_client import EmbeddClient, Reconnect, SyncEmbeddClient, errors
from embedd_server import app
from embedd_server.domain.errors import ApiError, Kind

from tests.conftest import UserDb
from tests.harness import Org, counting
from tests.integration.test_vector_tables import create_vt
from tests.tcpproxy import TcpProxy

T = TypeVar("T")


async def in_thread(fn: Callable[[], T]) -> T:
    """Blocking client calls run off the event loop that serves them."""
    return await asyncio.to_thread(fn)


def bad_port_request() -> connection_pb2.CreateConnectionRequest:
    return connection_pb2.CreateConnectionRequest(
        provider=values_pb2.ConnectionProvider.postgresql,
        name="bad",
        mode=values_pb2.Mode.platform,
        credentials=connection_pb2.PostgresCredentials(
            host="db", port=70000, database="d", user="u", password="p"
        ),
    )


async def test_failures_are_typed_with_code_request_id_and_violations(org: Org) -> None:
    async with org.client() as c:
        with pytest.raises(errors.ConnectionNotFoundError) as missing:
            await c.connections.GetConnection(connection_pb2.GetConnectionRequest(connection_id="conn_nope"))
        with pytest.raises(errors.ValidationError) as invalid:
            await c.connections.CreateConnection(bad_port_request())
        with pytest.raises(errors.TaskNotFoundError):  # a stream's failure is typed too
            async for _ in c.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id="task_nope")):
                pass
    assert missing.value.reason == "connection_not_found" and "conn_nope" in missing.value.message
    assert missing.value.request_id and len(missing.value.request_id) == 32
    assert isinstance(missing.value, errors.NotFoundError)
    assert [v.field for v in invalid.value.violations] == ["credentials.port"]
    async with org.client(key=org.read_key) as reader:
        with pytest.raises(errors.PermissionDeniedError):
            await reader.connections.CreateConnection(bad_port_request())
    async with org.client(key="sk_not_a_real_key") as stranger:
        with pytest.raises(errors.UnauthorizedError):
            await stranger.connections.ListConnections(connection_pb2.ListConnectionsRequest())


async def test_the_blocking_client_raises_the_same_classes(org: Org) -> None:
    def calls() -> tuple[errors.EmbeddError, errors.EmbeddError, int]:
        with SyncEmbeddClient(org.grpc_target, org.key) as c:
            listed = c.connections.ListConnections(connection_pb2.ListConnectionsRequest())
            try:
                c.connections.GetConnection(connection_pb2.GetConnectionRequest(connection_id="conn_nope"))
            except errors.EmbeddError as err:
                missing = err
            try:
                for _ in c.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id="task_nope")):
                    pass
            except errors.EmbeddError as err:
                stream = err
        return missing, stream, len(listed.connections)

    missing, stream, count = await in_thread(calls)
    assert type(missing) is errors.ConnectionNotFoundError and missing.request_id
    assert type(stream) is errors.TaskNotFoundError
    assert count == 0


class Flaky:
    """Replaces a store method: the first `failures` calls answer UNAVAILABLE."""

    def __init__(self, original: Callable[..., Any], failures: int = 1, delay_s: float = 0.0) -> None:
        self.original = original
        self.failures = failures
        self.delay_s = delay_s
        self.calls = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        if self.calls <= self.failures:
            raise ApiError(Kind.UNAVAILABLE, "control_plane_unavailable", "try again")
        return await self.original(*args, **kwargs)


@pytest.fixture
def flaky_envs(service: app.Service) -> Any:
    """Makes listing and creating environments fail once each."""
    listing, creating = Flaky(service.orgs.list_environments), Flaky(service.orgs.create_environment)
    service.orgs.list_environments = listing  # type: ignore[method-assign]
    service.orgs.create_environment = creating  # type: ignore[method-assign]
    yield listing, creating
    service.orgs.list_environments = listing.original  # type: ignore[method-assign]
    service.orgs.create_environment = creating.original  # type: ignore[method-assign]


async def test_idempotent_calls_are_retried_on_unavailable_and_others_are_not(
    org: Org, flaky_envs: tuple[Flaky, Flaky]
) -> None:
    listing, creating = flaky_envs
    async with org.client() as c:
        listed = await c.environments.ListEnvironments(environment_pb2.ListEnvironmentsRequest())
        with pytest.raises(errors.UnavailableError) as refused:
            await c.environments.CreateEnvironment(environment_pb2.CreateEnvironmentRequest(name="staging"))
    assert [e.name for e in listed.environments] == ["prod"] and listing.calls == 2
    assert creating.calls == 1 and refused.value.reason == "control_plane_unavailable"


async def test_the_blocking_client_retries_too(org: Org, flaky_envs: tuple[Flaky, Flaky]) -> None:
    listing, _ = flaky_envs

    def call() -> int:
        with SyncEmbeddClient(org.grpc_target, org.key) as c:
            return len(
                c.environments.ListEnvironments(environment_pb2.ListEnvironmentsRequest()).environments
            )

    assert await in_thread(call) == 1 and listing.calls == 2


async def test_unary_calls_have_a_default_deadline_that_one_call_may_lift(
    org: Org, service: app.Service
) -> None:
    slow = Flaky(service.orgs.list_environments, failures=0, delay_s=0.5)
    service.orgs.list_environments = slow  # type: ignore[method-assign]
    try:
        async with EmbeddClient(org.grpc_target, org.key, timeout_s=0.1) as c:
            request = environment_pb2.ListEnvironmentsRequest()
            with pytest.raises(errors.DeadlineExceededError):
                await c.environments.ListEnvironments(request)
            assert (await c.environments.ListEnvironments(request, timeout=10)).environments
    finally:
        service.orgs.list_environments = slow.original  # type: ignore[method-assign]


async def test_a_watch_survives_a_dropped_connection(org: Org, user_db: UserDb, service: app.Service) -> None:
    made = await create_vt(org, user_db)
    retries: list[float] = []
    async with TcpProxy("127.0.0.1", service.port) as proxy:
        # Embedding is slowed so that the backfill is still running when the connection drops.
        with counting(service, delay_s=1.0):
            async with EmbeddClient(proxy.target, org.key, reconnect=Reconnect(initial_backoff_s=0.05)) as c:
                task = await c.sync.BackfillVectorTable(backfill(made["id"]))
                events = []
                async for event in c.watch_task(task.task_id, on_retry=lambda err, s: retries.append(s)):
                    events.append(event)
                    if len(events) == 1:
                        proxy.cut()
    assert retries and proxy.connections >= 2
    assert events[-1].done and events[-1].task.status == values_pb2.TaskStatus.completed
    assert all(not e.done for e in events[:-1])
    await drop_table(org, made["id"])


async def test_the_blocking_watch_survives_a_dropped_connection(
    org: Org, user_db: UserDb, service: app.Service
) -> None:
    made = await create_vt(org, user_db)
    async with TcpProxy("127.0.0.1", service.port) as proxy:
        loop = asyncio.get_running_loop()
        retries: list[float] = []

        def watch() -> list[task_pb2.WatchTaskResponse]:
            events = []
            with SyncEmbeddClient(proxy.target, org.key, reconnect=Reconnect(initial_backoff_s=0.05)) as c:
                task = c.sync.BackfillVectorTable(backfill(made["id"]))
                for event in c.watch_task(task.task_id, on_retry=lambda err, s: retries.append(s)):
                    events.append(event)
                    if len(events) == 1:
                        asyncio.run_coroutine_threadsafe(cut(proxy), loop).result()
            return events

        with counting(service, delay_s=1.0):
            events = await in_thread(watch)
    assert retries and proxy.connections >= 2
    assert events[-1].done and events[-1].task.status == values_pb2.TaskStatus.completed
    await drop_table(org, made["id"])


async def cut(proxy: TcpProxy) -> None:
    proxy.cut()


def backfill(vt_id: str) -> sync_pb2.BackfillVectorTableRequest:
    return sync_pb2.BackfillVectorTableRequest(vector_table_id=vt_id)


async def drop_table(org: Org, vt_id: str) -> None:
    r = await org.http("DELETE", f"/v1/vector-tables/{vt_id}?drop_vectors=true")
    assert r.status_code == 200, r.text
