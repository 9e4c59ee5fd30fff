"""Shared test plumbing: a real PostgreSQL, the server in-process on port 0, a real Envoy,
and helpers that run the same call over gRPC and over REST."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import secrets
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import httpx
from embedd.v1 import environment_pb2, vector_table_pb2
from embedd_client import EmbeddClient, error_reason
from embedd_server import app
from embedd_server.devtools.pg import LocalPostgres
from embedd_server.domain.credentials import ConnectionTestResult, PgCredentials
from embedd_server.domain.models import EmbeddingProvider
from embedd_server.providers.base import Embedder, EmbedResult, InputType
from embedd_server.providers.http import RetryPolicy
from embedd_server.providers.registry import EmbedderRegistry, SaveLearned
from embedd_server.secretbox import SecretBox
from embedd_server.services.connections import Checker

ROOT = Path(__file__).resolve().parent.parent
# Where vector tables keep their vectors; the behavioural tests run in both (tests/modes.py).
MODES = ("platform", "managed")
# The request limit of test organisations: tests measure the service, not a free tier's 25 rpm.
UNTHROTTLED = 10_000_000


@dataclass
class Org:
    """A fresh organisation with a full and a read_only key."""

    org_id: str
    key: str
    read_key: str
    grpc_target: str
    rest: httpx.AsyncClient

    def client(self, key: str | None = None, environment_id: str | None = None) -> EmbeddClient:
        return EmbeddClient(self.grpc_target, key or self.key, environment_id=environment_id)

    def headers(self, key: str | None = None, environment_id: str | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {key or self.key}"}
        if environment_id:
            h["X-Environment-Id"] = environment_id
        return h

    async def http(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        environment_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        all_headers = {**self.headers(key, environment_id), **(headers or {})}
        return await self.rest.request(method, path, json=body, headers=all_headers)


async def grpc_error(call: Any) -> tuple[grpc.StatusCode, str, list[tuple[str, str]], str]:
    """Runs a call that must fail: (status, Embedd code, field violations, message)."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        reason, violations = error_reason(err)
        return err.code(), reason, violations, err.details() or ""
    raise AssertionError("the call succeeded but was expected to fail")


def rest_error(response: httpx.Response) -> tuple[int, str, dict[str, Any]]:
    """(HTTP status, Embedd code, error object) of a REST error response."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"}, body
    return response.status_code, body["error"]["code"], body["error"]


# A test that makes the server fail on purpose puts this in the exception's text; the session's
# log check (tests/conftest.py) accepts those tracebacks, and no other.
INJECTED = "failure injected by a test"


def unexpected_tracebacks(log_text: str) -> list[str]:
    """Tracebacks in a server log that no test asked for: each is a request (or a task) that
    made the server fail on its own side - hostile input must never get that far."""
    found = []
    for line in log_text.splitlines():
        if not line.startswith("{"):
            if "Traceback (most recent call last)" in line:  # a stdlib logger's traceback
                found.append(line)
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        text = record.get("exception") if isinstance(record, dict) else None
        if text and INJECTED not in text:
            last = text.strip().splitlines()[-1]
            found.append(f"{record.get('event')} [{record.get('method') or record.get('task_id')}]: {last}")
    return found


def random_secret_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


async def wait_for(
    predicate: Callable[[], Awaitable[bool] | bool],
    timeout: float = 15.0,  # noqa: ASYNC109 - a polling deadline, not a cancellation scope
    *,
    what: str = "the condition",
) -> None:
    """Waits until `predicate()` holds (it may be a coroutine function), polling every 20 ms;
    fails the test when `timeout` seconds pass first. Tests wait for conditions, never sleep
    for them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert loop.time() < deadline, f"{what} did not happen within {timeout:g}s"
        await asyncio.sleep(0.02)


async def task_ended(org: Org, task_id: str, within_s: float, *, what: str) -> dict[str, Any]:
    """The task over REST once it is `completed` or `failed`."""
    task: dict[str, Any] = {}

    async def ended() -> bool:
        task.update((await org.http("GET", f"/v1/tasks/{task_id}")).json())
        return task["status"] in ("completed", "failed")

    await wait_for(ended, within_s, what=what)
    return task


def lua_errors(log_text: str) -> list[str]:
    """The lines of an Envoy log written by its Lua filter (at `warn` level and above, which
    is what the tests run Envoy with: a Lua runtime error shows only there)."""
    return [line for line in log_text.splitlines() if "[lua]" in line]


def assert_no_lua_errors(log_path: Path) -> None:
    """For an Envoy fixture's teardown: fails the session if Envoy's Lua filter logged."""
    found = lua_errors(log_path.read_text()) if log_path.exists() else []
    assert not found, "Envoy's Lua filter logged errors:\n" + "\n".join(found[-20:])


class _CountedEmbedder:
    def __init__(self, inner: Embedder, counter: Counter) -> None:
        self._inner = inner
        self._counter = counter

    @property
    def model(self) -> str:
        return self._inner.model

    @property
    def dimensions(self) -> int:
        return self._inner.dimensions

    async def embed(self, texts: Sequence[str], input_type: InputType) -> EmbedResult:
        self._counter.texts += len(texts)
        if self._counter.delay_s:
            await asyncio.sleep(self._counter.delay_s)
        return await self._inner.embed(texts, input_type)

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class Counter:
    """Texts embedded while a `CountingRegistry.counting()` block is open (provider calls, as
    the fakes count them); `delay_s` slows each call to interleave processes."""

    texts: int = 0
    delay_s: float = 0.0


class CountingRegistry(EmbedderRegistry):
    """The embedder registry the test servers are started with (`app.start(embedders=...)`):
    the real one, whose embedders count what they embed while `counting()` is open."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        secrets: SecretBox,
        policy: RetryPolicy,
        save_learned: SaveLearned | None = None,
    ) -> None:
        super().__init__(session, secrets, policy, save_learned=save_learned)
        self._counter: Counter | None = None

    def get(self, record: EmbeddingProvider, model: str, dimensions: int) -> Embedder:
        embedder = super().get(record, model, dimensions)
        return embedder if self._counter is None else _CountedEmbedder(embedder, self._counter)

    @contextlib.contextmanager
    def counting(self, delay_s: float = 0.0) -> Iterator[Counter]:
        self._counter = Counter(delay_s=delay_s)
        try:
            yield self._counter
        finally:
            self._counter = None


def counting(service: app.Service, delay_s: float = 0.0) -> contextlib.AbstractContextManager[Counter]:
    """Counts the texts `service` embeds in the block (it must run a CountingRegistry)."""
    registry = service.embedders
    assert isinstance(registry, CountingRegistry), "start the server with embedders=CountingRegistry"
    return registry.counting(delay_s)


class SwitchableChecker:
    """The connection checker the session server is started with (`app.start(checker=...)`):
    the real one, unless a test puts another in its place for a block."""

    def __init__(self, real: Checker) -> None:
        self._real = real
        self._override: Checker | None = None

    async def __call__(self, creds: PgCredentials, platform_mode: bool) -> ConnectionTestResult:
        return await (self._override or self._real)(creds, platform_mode)

    @contextlib.contextmanager
    def replaced(self, checker: Checker) -> Iterator[None]:
        self._override = checker
        try:
            yield
        finally:
            self._override = None


async def delete_vector_tables(target: str, key: str) -> None:
    """Deletes every vector table of the key's organisation, in every environment, with its
    vectors: what each test leaves behind would otherwise keep the background sync busy."""
    async with EmbeddClient(target, key) as c:
        envs = await c.environments.ListEnvironments(environment_pb2.ListEnvironmentsRequest(limit=100))
        for env in envs.environments:
            async with EmbeddClient(target, key, environment_id=env.id) as scoped:
                while True:
                    page = await scoped.vector_tables.ListVectorTables(
                        vector_table_pb2.ListVectorTablesRequest(limit=100)
                    )
                    for vt in page.vector_tables:
                        await _delete(scoped, vt.id)
                    if not page.next_cursor:
                        break


async def _delete(client: EmbeddClient, vt_id: str) -> None:
    request = vector_table_pb2.DeleteVectorTableRequest(vector_table_id=vt_id, drop_vectors=True)
    try:
        await client.vector_tables.DeleteVectorTable(request)
    except grpc.aio.AioRpcError as err:
        if err.code() != grpc.StatusCode.FAILED_PRECONDITION:
            raise
        # the test broke its source database's connection: the row at least goes
        request.drop_vectors = False
        await client.vector_tables.DeleteVectorTable(request)


async def drop_control_plane(pg: LocalPostgres, name: str, owner_dsn: str) -> None:
    """Drops a test's own control-plane database, and first the vector tables it made in the
    user's database (`owner_dsn`: a connection that may drop them)."""
    try:
        ctl = await asyncpg.connect(pg.superuser_dsn(name))
    except asyncpg.InvalidCatalogNameError:
        return
    try:
        refs = [
            r["platform_vector_ref"] for r in await ctl.fetch("SELECT platform_vector_ref FROM vector_tables")
        ]
    except asyncpg.UndefinedTableError:
        refs = []  # no server ever migrated it
    finally:
        await ctl.close()
    owner = await asyncpg.connect(owner_dsn)
    admin = await asyncpg.connect(pg.superuser_dsn())
    try:
        for ref in refs:
            for table in (ref, f"{ref}_swap", f"{ref}_old"):
                await owner.execute(f'DROP TABLE IF EXISTS "{table}"')
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await owner.close()
        await admin.close()
