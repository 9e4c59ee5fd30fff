"""A batch-strategy fill survives its server: killed while its batches are in flight at the
provider, the fill is resumed by the next server from the control plane's record - every
batch submitted once, every row stored once, nothing through the normal API."""

from __future__ import annotations

from typing import Any

import asyncpg
from embedd.v1 import (
    connection_pb2,
    embedding_provider_pb2,
    sync_pb2,
    task_pb2,
    values_pb2,
    vector_table_pb2,
)
from embedd_client import EmbeddClient
from embedd_server.devtools.serverproc import ServerProcess, create_org, new_secret_key

from tests.conftest import PRODUCT_ROWS, UserDb
from tests.fakes.providers import FakeOpenAI
from tests.harness import wait_for
from tests.integration.test_backfill_durability import assert_exactly_once, control  # noqa: F401 - a fixture

KEY = "test-key"
ROWS_PER_BATCH = 100
BATCHES = PRODUCT_ROWS // ROWS_PER_BATCH
# A batch takes about 3 s here (its day-long window would last 86 s): the kill finds them running.
SLOW = {"batch_durations": (3600.0, 36_000.0, 3600.0), "batch_time_scale": 1 / 12_000}
SETTINGS = {
    "engine_lease_s": "2",
    "batch_poll_s": "0.2",
    "batch_rows_per_batch": str(ROWS_PER_BATCH),
    "batch_max_in_flight": "3",
}


async def make_table(c: EmbeddClient, user_db: UserDb, base_url: str) -> str:
    conn = await c.connections.CreateConnection(
        connection_pb2.CreateConnectionRequest(
            provider=values_pb2.ConnectionProvider.postgresql,
            name="src",
            mode=values_pb2.Mode.platform,
            credentials=connection_pb2.PostgresCredentials(**user_db.credentials()),  # type: ignore[arg-type]
        )
    )
    emb = await c.embedding_providers.CreateEmbeddingProvider(
        embedding_provider_pb2.CreateEmbeddingProviderRequest(
            name="openai",
            provider=values_pb2.EmbeddingProviderType.openai,
            api_key=KEY,
            default_model="text-embedding-3-small",
            base_url=base_url,
        )
    )
    vt = await c.vector_tables.CreateVectorTable(
        vector_table_pb2.CreateVectorTableRequest(
            vector_table=vector_table_pb2.VectorTable(
                name="batch-crash",
                connection_id=conn.id,
                embedding_provider_id=emb.id,
                source_table="public.products",
                primary_key_column="id",
                embedding_dimensions=256,
                embedding_strategy=values_pb2.EmbeddingStrategy.batch,
                columns=[
                    vector_table_pb2.Column(name="name", role=values_pb2.ColumnRole.embedding),
                    vector_table_pb2.Column(name="description", role=values_pb2.ColumnRole.embedding),
                ],
            )
        )
    )
    return vt.id


async def _submitted(ctl: asyncpg.Connection[Any], task_id: str, at_least: int) -> bool:
    n = await ctl.fetchval(
        "SELECT count(*) FROM embedding_batches WHERE task_id = $1 AND state = 'submitted'", task_id
    )
    return bool(n >= at_least)


async def test_a_killed_server_s_batches_are_collected_by_the_next_one(
    user_db: UserDb,
    control: str,  # noqa: F811 - the fixture
) -> None:
    key = new_secret_key()
    async with FakeOpenAI(api_key=KEY, **SLOW) as fake:  # type: ignore[arg-type]
        first = ServerProcess(control, key, **SETTINGS).start()
        second: ServerProcess | None = None
        try:
            api_key = create_org(control, key)
            async with EmbeddClient(f"127.0.0.1:{first.port}", api_key) as c:
                vt_id = await make_table(c, user_db, fake.base_url)
                task = await c.sync.BackfillVectorTable(
                    sync_pb2.BackfillVectorTableRequest(vector_table_id=vt_id)
                )
            ctl = await asyncpg.connect(control)
            try:
                await wait_for(lambda: _submitted(ctl, task.task_id, 3), 20, what="3 batches in flight")
                first.kill()  # SIGKILL, with its batches running at the provider
                ref = await ctl.fetchval("SELECT platform_vector_ref FROM vector_tables WHERE id = $1", vt_id)
            finally:
                await ctl.close()
            running = [b for b in fake.batches.batches.values() if b.status in ("validating", "in_progress")]
            assert len(running) == 3, "the batches finished before the kill; make them slower"
            second = ServerProcess(control, key, **SETTINGS).start()
            async with EmbeddClient(f"127.0.0.1:{second.port}", api_key) as c:
                async for event in c.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id)):
                    if event.done:
                        final = event.task
                        break
        finally:
            first.stop()
            if second is not None:
                second.stop()
        assert final.status == values_pb2.TaskStatus.completed, final
        assert final.progress.batches_completed == BATCHES and final.progress.rows_processed == PRODUCT_ROWS
        assert fake.batches.calls["POST /batches"] == BATCHES, "a batch was submitted twice"
        assert fake.batches.calls["POST /files"] == BATCHES
        assert fake.counters.requests == 0  # everything came from the batches
        assert final.progress.batch_tokens == fake.batches.counters.tokens
        await assert_exactly_once(user_db, ref, "public.products")
