"""A backfill through a real remote-provider client whose provider fails a fifth of its calls
(429 with Retry-After, or 500) still yields a complete table, with no row failed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.conftest import UserDb
from tests.fakes.providers import FakeOpenAI
from tests.harness import Org
from tests.integration.test_vector_tables import wait_synced

ROWS = 12_000


@pytest.fixture
async def flaky_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-flaky", flaky_share=0.2) as fake:
        yield fake


async def test_backfill_completes_through_429s_and_500s(
    org: Org, user_db: UserDb, flaky_openai: FakeOpenAI
) -> None:
    owner = await asyncpg.connect(user_db.owner_dsn)
    try:
        await owner.execute(
            "CREATE TABLE IF NOT EXISTS flaky_items (id int PRIMARY KEY, title text);"
            "TRUNCATE flaky_items;"
            f"INSERT INTO flaky_items SELECT g, 'flaky item number ' || g FROM generate_series(1, {ROWS}) g;"
            "GRANT SELECT ON flaky_items TO embedd_user;"
        )
        conn = await org.http(
            "POST",
            "/v1/providers/postgresql/connections",
            {"name": "src", "mode": "platform", "credentials": user_db.credentials()},
        )
        emb = await org.http(
            "POST",
            "/v1/embedding-providers",
            {
                "name": "flaky",
                "provider": "openai",
                "api_key": "sk-flaky",
                "default_model": "text-embedding-3-small",
                "base_url": flaky_openai.base_url,
            },
        )
        vt = await org.http(
            "POST",
            "/v1/vector-tables",
            {
                "name": "flaky",
                "connection_id": conn.json()["id"],
                "embedding_provider_id": emb.json()["id"],
                "source_table": "flaky_items",
                "primary_key_column": "id",
                "embedding_dimensions": 256,
                "columns": [{"name": "title", "role": "embedding"}],
            },
        )
        assert vt.status_code == 200, vt.text
        vt_id, ref = vt.json()["id"], vt.json()["platform_vector_ref"]
        task = (await org.http("POST", f"/v1/vector-tables/{vt_id}/backfill")).json()
        assert (await wait_synced(org, vt_id, 60))["sync_status"] == "synced"
        got = (await org.http("GET", f"/v1/tasks/{task['task_id']}")).json()
        assert got["status"] == "completed" and got["progress"]["rows_failed"] == 0
        stored = await owner.fetchval(
            f'SELECT count(DISTINCT pk_value) FROM "{ref}" WHERE embedding IS NOT NULL'
        )
        assert stored == ROWS
    finally:
        await owner.close()
    statuses = flaky_openai.counters.statuses
    assert statuses[429] > 0 and statuses[500] > 0, statuses  # the faults really happened
    failed = statuses[429] + statuses[500]
    assert failed / sum(statuses.values()) > 0.1, statuses
