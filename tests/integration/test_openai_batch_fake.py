"""The fake OpenAI's Files and Batch APIs (tests/fakes/openai_batches.py) against the official
`openai` SDK: the SDK's own models parse every answer, and a batch lives through the statuses
OpenAI documents - completed, failed at validation, expired with part of its output, and
cancelled - with output and error files in OpenAI's line format."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

from tests.fakes.providers import FakeOpenAI
from tests.harness import wait_for

openai = pytest.importorskip("openai")
KEY = "test-key"
MODEL = "text-embedding-3-small"
# validating 0.1 s, in progress 0.3 s, finalizing 0.1 s; a 24 h window of 2.4 s
SCALE = 1 / 36_000
FAST = {"batch_durations": (3600.0, 10_800.0, 3600.0), "batch_time_scale": SCALE}


def requests(texts: list[list[str]], **body: Any) -> bytes:
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": MODEL, "input": chunk, "dimensions": 256, **body},
        }
        for i, chunk in enumerate(texts)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


async def run(client: Any, data: bytes, **create: Any) -> Any:
    """Uploads, creates a batch and polls it until it ends; the last Batch."""
    uploaded = await client.files.create(file=("requests.jsonl", data), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(data) and uploaded.id.startswith("file-")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h", **create
    )
    assert batch.status == "validating" and batch.endpoint == "/v1/embeddings"
    seen = {batch.status}
    while batch.status in ("validating", "in_progress", "finalizing", "cancelling"):
        await asyncio.sleep(0.02)
        batch = await client.batches.retrieve(batch.id)
        seen.add(batch.status)
    batch.seen = seen  # type: ignore[attr-defined]
    return batch


async def lines(client: Any, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await client.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines()]


async def test_a_batch_completes_with_output_and_error_files() -> None:
    async with FakeOpenAI(api_key=KEY, **FAST) as fake:
        fake.poison = "POISON"
        client = openai.AsyncOpenAI(api_key=KEY, base_url=fake.base_url, max_retries=0)
        data = requests([["red shoes", "green socks"], ["POISON pill"], ["blue hat"]])
        batch = await run(client, data, metadata={"embedd_task": "task_1"})
        assert batch.status == "completed" and {"validating", "in_progress", "finalizing"} <= batch.seen
        assert batch.metadata == {"embedd_task": "task_1"} and batch.completed_at and batch.expires_at
        assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
            3,
            2,
            1,
        )
        output = await lines(client, batch.output_file_id)
        assert sorted(o["custom_id"] for o in output) == ["r0", "r2"]
        first = next(o for o in output if o["custom_id"] == "r0")
        assert first["error"] is None and first["response"]["status_code"] == 200
        vectors = np.array([d["embedding"] for d in first["response"]["body"]["data"]], dtype=np.float32)
        np.testing.assert_allclose(vectors[0], fake.expected("red shoes", None, 256), atol=1e-6)
        assert first["response"]["body"]["usage"]["prompt_tokens"] > 0
        (failed,) = await lines(client, batch.error_file_id)
        assert failed["custom_id"] == "r1" and failed["response"]["status_code"] == 400
        assert "invalid" in failed["response"]["body"]["error"]["message"]
        # the batch API's work is counted apart from the normal API's
        assert fake.batches.counters.inputs == 3 and fake.counters.requests == 0
        page = await client.batches.list(limit=10)
        assert [b.id for b in page.data] == [batch.id]
        files = await client.files.list(purpose="batch")
        assert len(files.data) == 1 and files.data[0].filename == "requests.jsonl"
        deleted = await client.files.delete(batch.input_file_id)
        assert deleted.deleted
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve(batch.input_file_id)
        await client.close()


async def test_validation_failures_and_the_queue_limit_fail_the_batch() -> None:
    async with FakeOpenAI(api_key=KEY, **FAST) as fake:
        client = openai.AsyncOpenAI(api_key=KEY, base_url=fake.base_url, max_retries=0)
        mixed = requests([["a"]]) + requests([["b"]], model="text-embedding-3-large")
        batch = await run(client, mixed)
        assert batch.status == "failed" and batch.failed_at and batch.output_file_id is None
        codes = {e.code for e in batch.errors.data}
        assert {"duplicate_custom_id", "mismatched_model"} <= codes
        fake.batches.refuse_next(
            "token_limit_exceeded", "Enqueued token limit reached for text-embedding-3-small."
        )
        batch = await run(client, requests([["a"]]))
        assert batch.status == "failed" and [e.code for e in batch.errors.data] == ["token_limit_exceeded"]
        too_many = requests([["x"] * 2048] * 25)  # 51,200 embedding inputs
        batch = await run(client, too_many)
        assert batch.status == "failed" and "too_many_embedding_inputs" in {e.code for e in batch.errors.data}
        with pytest.raises(openai.BadRequestError):
            await client.batches.create(
                input_file_id="file-nope", endpoint="/v1/embeddings", completion_window="24h"
            )
        with pytest.raises(openai.AuthenticationError):
            bad = openai.AsyncOpenAI(api_key="nope", base_url=fake.base_url, max_retries=0)
            await bad.files.list()
        await client.close()


async def test_an_expired_batch_returns_what_it_did() -> None:
    async with FakeOpenAI(api_key=KEY, **FAST) as fake:
        client = openai.AsyncOpenAI(api_key=KEY, base_url=fake.base_url, max_retries=0)
        fake.batches.stall_next(done_share=0.5)
        batch = await run(client, requests([["a"], ["b"], ["c"], ["d"]]))
        assert (
            batch.status == "expired"
            and batch.expired_at
            and batch.seen == {"validating", "in_progress", "expired"}
        )
        assert [o["custom_id"] for o in await lines(client, batch.output_file_id)] == ["r0", "r1"]
        undone = await lines(client, batch.error_file_id)
        assert [(u["custom_id"], u["response"], u["error"]["code"]) for u in undone] == [
            ("r2", None, "batch_expired"),
            ("r3", None, "batch_expired"),
        ]
        await client.close()


async def test_a_cancelled_batch() -> None:
    async with FakeOpenAI(api_key=KEY, **FAST) as fake:
        client = openai.AsyncOpenAI(api_key=KEY, base_url=fake.base_url, max_retries=0)
        uploaded = await client.files.create(file=("r.jsonl", requests([["a"], ["b"]])), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        cancelling = await client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at

        async def cancelled() -> bool:
            return (await client.batches.retrieve(batch.id)).status == "cancelled"

        await wait_for(cancelled, 5, what="the cancellation")
        done = await client.batches.retrieve(batch.id)
        assert done.cancelled_at and done.output_file_id is None
        assert {u["error"]["code"] for u in await lines(client, done.error_file_id)} == {"batch_cancelled"}
        with pytest.raises(openai.ConflictError):
            await client.batches.cancel(batch.id)
        await client.close()
