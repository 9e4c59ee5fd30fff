"""Backfills through OpenAI's Batch API (docs/batch.md), against the fake OpenAI whose batch
clock runs 36,000 times faster (a day in 2.4 s): in both modes, over REST and gRPC; lines that
fail, a batch that expires, the provider's queue limit; sync after the fill on the normal API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import numpy as np
import pytest
from embedd.v1 import sync_pb2, task_pb2, values_pb2

from tests.conftest import PRODUCT_ROWS, UserDb
from tests.fakes.providers import FakeOpenAI
from tests.harness import Org, rest_error, task_ended, wait_for

KEY = "test-key"
MODEL = "text-embedding-3-small"
DIMS = 256
BATCH_ROWS = 200  # the session server's batch_rows_per_batch
BATCHES = -(-PRODUCT_ROWS // BATCH_ROWS)
# validating 0.1 s, in progress 0.3 s, finalizing 0.1 s; the 24 h window lasts 2.4 s
FAST = {"batch_durations": (3600.0, 10_800.0, 3600.0), "batch_time_scale": 1 / 36_000}
COLUMNS = [
    {"name": "name", "role": "embedding", "ordinal": 1, "name_prefix": "Product: "},
    {"name": "description", "role": "embedding", "ordinal": 2, "name_prefix": "Description: "},
    {"name": "price", "role": "metadata", "filter_type": "float"},
]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key=KEY, **FAST) as f:  # type: ignore[arg-type]
        yield f


async def make_table(
    org: Org, user_db: UserDb, fake: FakeOpenAI, mode: str, **changes: Any
) -> dict[str, Any]:
    conn = await org.http(
        "POST",
        "/v1/providers/postgresql/connections",
        {"name": "shop", "mode": mode, "credentials": user_db.credentials()},
    )
    emb = await org.http(
        "POST",
        "/v1/embedding-providers",
        {
            "name": "openai",
            "provider": "openai",
            "api_key": KEY,
            "default_model": MODEL,
            "base_url": fake.base_url,
        },
    )
    assert conn.status_code == 200 and emb.status_code == 200, (conn.text, emb.text)
    body = {
        "name": "products-batch",
        "connection_id": conn.json()["id"],
        "embedding_provider_id": emb.json()["id"],
        "source_table": "public.products",
        "primary_key_column": "id",
        "embedding_model": MODEL,
        "embedding_dimensions": DIMS,
        "columns": COLUMNS,
        **changes,
    }
    r = await org.http("POST", "/v1/vector-tables", body)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def backfill(org: Org, vt_id: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Queues a backfill and waits for it; the finished task."""
    r = await org.http("POST", f"/v1/vector-tables/{vt_id}/backfill", body)
    assert r.status_code == 200, r.text
    return await task_ended(org, r.json()["task_id"], 60, what="the batch backfill")


async def product_texts(user_db: UserDb) -> dict[str, str]:
    conn = await asyncpg.connect(user_db.owner_dsn)
    try:
        rows = await conn.fetch("SELECT id::text AS id, name, description FROM products")
    finally:
        await conn.close()
    return {r["id"]: f"Product: {r['name']}\nDescription: {r['description']}" for r in rows}


@pytest.mark.parametrize("mode", ["platform", "managed"])
async def test_a_batch_backfill_fills_through_the_batch_api_and_sync_uses_the_normal_one(
    org: Org, user_db: UserDb, fake: FakeOpenAI, mode: str
) -> None:
    vt = await make_table(org, user_db, fake, mode, embedding_strategy="batch")
    assert vt["embedding_strategy"] == "batch"
    task = await backfill(org, vt["id"])
    assert task["status"] == "completed", task
    assert task["embedding_strategy"] == "batch"
    assert task["attempts"] == 1, "waiting between polls (parked) is not a failed attempt"
    progress = task["progress"]
    assert progress["rows_processed"] == PRODUCT_ROWS and progress["rows_failed"] == 0
    assert (progress["batches_submitted"], progress["batches_completed"]) == (BATCHES, BATCHES)
    assert progress["batch_rows_submitted"] == progress["batch_rows_completed"] == PRODUCT_ROWS
    tokens = fake.batches.counters.tokens
    assert progress["batch_tokens"] == tokens > 0 and progress["estimated_saving_tokens"] == tokens // 2
    assert fake.counters.requests == 0, "a batch fill must not use the normal API"
    assert fake.batches.calls["POST /batches"] == BATCHES and fake.batches.calls["POST /files"] == BATCHES
    assert fake.batches.files == {}, "every input, output and error file is deleted once written"
    status = (await org.http("GET", f"/v1/vector-tables/{vt['id']}/sync/status")).json()
    assert status["sync_status"] == "synced" and status["synced_rows"] == PRODUCT_ROWS
    assert (status["batch_tokens"], status["estimated_saving_tokens"]) == (tokens, tokens // 2)
    # the vectors are the provider's for each row's text: a row's own text finds it first
    texts = await product_texts(user_db)
    pk = "42"
    r = await org.http("POST", f"/v1/vector-tables/{vt['id']}/query", {"query": texts[pk], "limit": 1})
    assert r.status_code == 200, r.text
    hit = r.json()["results"][0]
    assert hit["id"] == pk and hit["score"] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(np.linalg.norm(fake.expected(texts[pk], None, DIMS)), 1.0, rtol=1e-5)
    # later changes are synced through the normal API
    conn = await asyncpg.connect(user_db.owner_dsn)
    try:
        await conn.execute("UPDATE products SET description = description || ' (new)' WHERE id = 7")
        try:

            async def synced() -> bool:
                body = {"query": "x", "limit": 1, "filters": {"price": {"gte": 0}}}
                await org.http("POST", f"/v1/vector-tables/{vt['id']}/query", body)
                return fake.counters.inputs >= 1

            await wait_for(synced, 20, what="the sync of a changed row")
        finally:
            await conn.execute(
                "UPDATE products SET description = replace(description, ' (new)', '') WHERE id = 7"
            )
    finally:
        await conn.close()
    assert fake.batches.calls["POST /batches"] == BATCHES


async def test_failed_lines_are_embedded_again_and_rows_the_api_rejects_are_listed(
    org: Org, user_db: UserDb, fake: FakeOpenAI
) -> None:
    """Over gRPC, as a per-request choice on a standard table: a request line with a poisoned
    input fails in the batch (error file); its rows go through the normal API, which embeds
    the rest of that request and rejects only the poisoned row."""
    vt = await make_table(org, user_db, fake, "platform")
    texts = await product_texts(user_db)
    poisoned = sorted(texts, key=int)[:3]
    conn = await asyncpg.connect(user_db.owner_dsn)
    try:
        await conn.execute(
            "UPDATE products SET name = name || ' POISON' WHERE id = ANY($1::text[]::bigint[])", poisoned
        )
        fake.poison = "POISON"
        async with org.client() as c:
            queued = await c.sync.BackfillVectorTable(
                sync_pb2.BackfillVectorTableRequest(
                    vector_table_id=vt["id"], embedding_strategy=values_pb2.EmbeddingStrategy.batch
                )
            )
            async for event in c.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=queued.task_id)):
                if event.done:
                    final = event.task
                    break
    finally:
        await conn.execute(
            "UPDATE products SET name = replace(name, ' POISON', '') WHERE id = ANY($1::text[]::bigint[])",
            poisoned,
        )
        await conn.close()
    assert final.status == values_pb2.TaskStatus.completed, final
    assert final.embedding_strategy == values_pb2.EmbeddingStrategy.batch
    assert sorted(f.pk_value for f in final.failures) == poisoned
    assert final.progress.rows_processed == PRODUCT_ROWS and final.progress.rows_failed == 3
    # the rows of failed lines went through the normal API, which embedded all but the poisoned
    failed_line_rows = _failed_line_rows(fake)
    assert 3 <= failed_line_rows < PRODUCT_ROWS
    assert fake.counters.inputs == failed_line_rows - 3
    assert fake.batches.counters.inputs == PRODUCT_ROWS - failed_line_rows
    stored = await _stored_keys(user_db, vt["platform_vector_ref"])
    assert stored == set(texts) - set(poisoned)


def _failed_line_rows(fake: FakeOpenAI) -> int:
    """Inputs of the batch lines the fake rejected (their rows went to the normal API)."""
    sent = sum(len(line["body"]["input"]) for b in fake.batches.batches.values() for line in b.lines)
    return sent - fake.batches.counters.inputs


async def _stored_keys(user_db: UserDb, ref: str) -> set[str]:
    conn = await asyncpg.connect(user_db.owner_dsn)
    try:
        return {r["pk_value"] for r in await conn.fetch(f'SELECT pk_value FROM "{ref}"')}
    finally:
        await conn.close()


async def test_an_expired_batch_keeps_what_it_did_and_embeds_the_rest(
    org: Org, user_db: UserDb, fake: FakeOpenAI
) -> None:
    vt = await make_table(org, user_db, fake, "platform", embedding_strategy="batch")
    fake.batches.stall_next(done_share=0.5)  # the first batch expires after a day, half done
    task = await backfill(org, vt["id"])
    assert task["status"] == "completed" and task["progress"]["rows_failed"] == 0, task
    expired = [b for b in fake.batches.batches.values() if b.status == "expired"]
    assert len(expired) == 1
    undone = sum(len(line["body"]["input"]) for line in expired[0].lines[len(expired[0].lines) // 2 :])
    assert fake.counters.inputs == undone > 0  # the requests the expiry left undone, nothing else
    assert await _stored_keys(user_db, vt["platform_vector_ref"]) == set(await product_texts(user_db))


async def test_a_full_provider_queue_is_waited_out(org: Org, user_db: UserDb, fake: FakeOpenAI) -> None:
    vt = await make_table(org, user_db, fake, "managed", embedding_strategy="batch")
    fake.batches.refuse_next(
        "token_limit_exceeded", "Enqueued token limit reached for text-embedding-3-small."
    )
    task = await backfill(org, vt["id"])
    assert task["status"] == "completed" and task["progress"]["batches_completed"] == BATCHES, task
    assert fake.batches.calls["POST /batches"] == BATCHES + 1  # the refused one, once more
    assert fake.batches.calls["POST /files"] == BATCHES  # with the same file
    assert fake.counters.requests == 0


async def test_the_batch_strategy_needs_a_provider_with_a_batch_api(org: Org, user_db: UserDb) -> None:
    conn = await org.http(
        "POST",
        "/v1/providers/postgresql/connections",
        {"name": "shop", "mode": "platform", "credentials": user_db.credentials()},
    )
    emb = await org.http(
        "POST",
        "/v1/embedding-providers",
        {"name": "local", "provider": "local", "default_model": "local-lexical-384"},
    )
    body = {
        "name": "t",
        "connection_id": conn.json()["id"],
        "embedding_provider_id": emb.json()["id"],
        "source_table": "public.products",
        "primary_key_column": "id",
        "columns": COLUMNS[:1],
    }
    status, code, err = rest_error(
        await org.http("POST", "/v1/vector-tables", {**body, "embedding_strategy": "batch"})
    )
    assert (status, code) == (400, "batch_strategy_unsupported") and "OpenAI" in err["message"]
    made = await org.http("POST", "/v1/vector-tables", body)
    assert made.json()["embedding_strategy"] == "standard"
    vt_id = made.json()["id"]
    status, code, _ = rest_error(
        await org.http("POST", f"/v1/vector-tables/{vt_id}/backfill", {"embedding_strategy": "batch"})
    )
    assert (status, code) == (400, "batch_strategy_unsupported")
    status, code, _ = rest_error(
        await org.http(
            "PATCH",
            f"/v1/vector-tables/{vt_id}?update_mask=embedding_strategy",
            {"embedding_strategy": "batch"},
        )
    )
    assert (status, code) == (400, "batch_strategy_unsupported")


async def test_a_rebackfill_fills_its_replacement_through_the_batch_api(
    org: Org, user_db: UserDb, fake: FakeOpenAI
) -> None:
    vt = await make_table(org, user_db, fake, "platform", embedding_strategy="batch")
    assert (await backfill(org, vt["id"]))["status"] == "completed"
    columns = [{**COLUMNS[0], "name_prefix": "Item: "}, *COLUMNS[1:]]
    r = await org.http("PATCH", f"/v1/vector-tables/{vt['id']}?update_mask=columns", {"columns": columns})
    assert r.status_code == 200 and r.json()["sync_status"] == "pending_rebackfill", r.text
    tasks = (await org.http("GET", f"/v1/tasks?target_id={vt['id']}&status=pending")).json()["tasks"]
    if tasks:
        task_id = tasks[0]["id"]
    else:  # already claimed
        listed = (await org.http("GET", f"/v1/tasks?target_id={vt['id']}")).json()["tasks"]
        task_id = next(t["id"] for t in listed if t["task_type"] == "rebackfill")
    task = await task_ended(org, task_id, 60, what="the re-backfill")
    assert task["status"] == "completed" and task["embedding_strategy"] == "batch", task
    assert task["progress"]["batches_completed"] == BATCHES
    assert fake.batches.calls["POST /batches"] == 2 * BATCHES and fake.counters.requests == 0
    conn = await asyncpg.connect(user_db.owner_dsn)
    try:
        renamed = await conn.fetchval(
            f"SELECT count(*) FROM \"{vt['platform_vector_ref']}\" WHERE embedded_text LIKE 'Item: %'"
        )
    finally:
        await conn.close()
    assert renamed == PRODUCT_ROWS
