"""A provider that quotes the API key in its error texts (as OpenAI's 401 does): nothing the
service stores or returns shows it - provider tests, task failures, last_error, query errors -
whoever reads them (a read_only key), over REST and gRPC, and the server log neither."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from embedd.v1 import embedding_provider_pb2, query_pb2, sync_pb2, task_pb2, values_pb2

from tests.conftest import UserDb
from tests.fakes.providers import FakeOpenAI
from tests.harness import Org, grpc_error, rest_error, wait_for
from tests.integration.test_sync import status_is
from tests.integration.test_vector_tables import wait_synced

KEY = "sk-proj-" + secrets.token_hex(24)
WRONG = "sk-proj-" + secrets.token_hex(24)
POISON = "POISONED"


@pytest.fixture
async def leaky() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key=KEY, leak_key=True) as fake:
        fake.poison = POISON
        yield fake


async def _provider(org: Org, fake: FakeOpenAI, key: str) -> str:
    body = {
        "name": f"openai-{key[-4:]}",
        "provider": "openai",
        "api_key": key,
        "default_model": "text-embedding-3-small",
        "base_url": fake.base_url,
    }
    r = await org.http("POST", "/v1/embedding-providers", body)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


async def _table(org: Org, user_db: UserDb, emb_id: str, source: str) -> dict[str, Any]:
    conn = await org.http(
        "POST",
        "/v1/providers/postgresql/connections",
        {"name": "src", "mode": "platform", "credentials": user_db.credentials()},
    )
    body = {
        "name": f"leak-{emb_id[-6:]}",
        "connection_id": conn.json()["id"],
        "embedding_provider_id": emb_id,
        "source_table": source,
        "primary_key_column": "id",
        "embedding_dimensions": 256,
        "columns": [{"name": "title", "role": "embedding"}],
    }
    r = await org.http("POST", "/v1/vector-tables", body)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _clean(*texts: str) -> None:
    for text in texts:
        assert KEY not in text and WRONG not in text, text
        assert KEY[8:20] not in text and WRONG[8:20] not in text, text


async def test_provider_messages_never_show_the_key(
    org: Org, user_db: UserDb, leaky: FakeOpenAI, log_path: Path
) -> None:
    source = f"leak_{secrets.token_hex(3)}"
    owner = await asyncpg.connect(user_db.owner_dsn)
    try:
        await owner.execute(
            f"CREATE TABLE {source} (id int PRIMARY KEY, title text);"
            f"INSERT INTO {source} SELECT g, CASE WHEN g % 5 = 0 THEN '{POISON} ' ELSE '' END || 'item ' || g"
            " FROM generate_series(1, 20) g;"
            f"GRANT SELECT ON {source} TO embedd_user"
        )
    finally:
        await owner.close()
    good, bad = await _provider(org, leaky, KEY), await _provider(org, leaky, WRONG)
    seen: list[str] = []

    # 1. the provider test, over both surfaces
    tested = await org.http("POST", f"/v1/embedding-providers/{bad}/test")
    assert tested.json()["status"] == "failed" and tested.json()["reason"] == "bad_key", tested.text
    assert "[redacted]" in tested.json()["message"]
    seen.append(tested.text)
    async with org.client() as c:
        result = await c.embedding_providers.TestEmbeddingProvider(
            embedding_provider_pb2.TestEmbeddingProviderRequest(embedding_provider_id=bad)
        )
    assert result.reason == values_pb2.EmbeddingProviderTestFailure.bad_key
    seen.append(result.message)

    # 2. per-row failures (good key, poisoned rows) and a task failed on the key (bad key)
    rows = await _table(org, user_db, good, source)
    broken = await _table(org, user_db, bad, source)
    tasks = {}
    for vt in (rows, broken):
        tasks[vt["id"]] = (await org.http("POST", f"/v1/vector-tables/{vt['id']}/backfill")).json()["task_id"]
    assert (await wait_synced(org, rows["id"], 30))["sync_status"] == "synced"
    await wait_for(lambda: status_is(org, broken["id"], "error"), 30)

    # 3. a query whose text the provider rejects, quoting the key
    status, code, err = rest_error(
        await org.http(
            "POST", f"/v1/vector-tables/{rows['id']}/query", {"query": f"{POISON} jacket"}, key=org.read_key
        )
    )
    assert (status, code) == (400, "validation_error")
    seen.append(str(err))
    async with org.client(key=org.read_key) as c:
        gcode, _, _, message = await grpc_error(
            c.query.QueryVectorTable(
                query_pb2.QueryVectorTableRequest(vector_table_id=rows["id"], query=POISON)
            )
        )
        assert gcode == grpc.StatusCode.INVALID_ARGUMENT
        seen.append(message)
        for vt_id, task_id in tasks.items():
            task = await c.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id))
            seen += [task.last_error, *(f.error for f in task.failures)]
            status_msg = await c.sync.GetSyncStatus(sync_pb2.GetSyncStatusRequest(vector_table_id=vt_id))
            seen.append(status_msg.last_error)

    # 4. everything a read_only key can read over REST
    for path in (
        *(f"/v1/tasks/{t}" for t in tasks.values()),
        "/v1/tasks",
        *(f"/v1/vector-tables/{v}/sync/status" for v in tasks),
        "/v1/vector-tables",
        "/v1/embedding-providers",
    ):
        r = await org.http("GET", path, key=org.read_key)
        assert r.status_code == 200, r.text
        seen.append(r.text)

    failed_rows = (await org.http("GET", f"/v1/tasks/{tasks[rows['id']]}")).json()["failures"]
    assert len(failed_rows) == 4 and all("[redacted]" in f["error"] for f in failed_rows), failed_rows
    last_error = (await org.http("GET", f"/v1/vector-tables/{broken['id']}/sync/status")).json()["last_error"]
    assert "rejected the API key" in last_error and "[redacted]" in last_error, last_error
    _clean(*seen, log_path.read_text())  # noqa: ASYNC240 - a small file, read once
