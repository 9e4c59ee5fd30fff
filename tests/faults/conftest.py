"""Fixtures of the fault suite (`make test-faults`): see stack.py and check.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from embedd_server.devtools.pg import create_database

from tests.fakes.providers import FakeOpenAI
from tests.faults.stack import Clusters, Stack, start_clusters

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)


@pytest.fixture(scope="session")
async def clusters(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Clusters]:
    made = await start_clusters(tmp_path_factory.mktemp("faults-pg"))
    yield made
    for cluster in (made.control, made.user):
        await asyncio.to_thread(cluster.stop)


@pytest.fixture
async def provider() -> AsyncIterator[FakeOpenAI]:
    """The embedding provider: the fake OpenAI, with a little latency per request so that
    backfills and sync cycles last long enough to be interrupted."""
    async with FakeOpenAI(latency_s=0.02) as fake:
        yield fake  # type: ignore[misc]


@pytest.fixture
async def stack(clusters: Clusters, provider: FakeOpenAI, tmp_path: Path) -> AsyncIterator[Stack]:
    for cluster in (clusters.control, clusters.user):  # a failed scenario may have left one down
        if not cluster.running:
            await asyncio.to_thread(cluster.start)
    made = Stack(clusters, tmp_path, provider)
    await create_database(clusters.control.superuser_dsn(direct=True), made.control_db, with_vector=False)
    yield made
    tracebacks = await made.close()
    assert not tracebacks, "the servers logged tracebacks:\n" + "\n".join(tracebacks[:20])
