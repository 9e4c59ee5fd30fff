"""A batch fill's decisions, with the provider, the control plane and the stores stubbed: never
a second submission of a batch a crash left unrecorded, a batch created by a holder that lost
its lease is cancelled, a row whose text changed while its batch ran is embedded again, and
the input and result lines speak OpenAI's format."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from embedd_server.domain.leases import LeaseLost
from embedd_server.domain.models import Task
from embedd_server.domain.vector_tables import ColumnSpec, VectorTableSpec
from embedd_server.engine.batch_backfill import BatchBackfillJob, custom_id, parse_custom_id
from embedd_server.providers.base import EmbedResult, InputType
from embedd_server.providers.openai_batch import BatchInfo, EmbeddingRequests
from embedd_server.sinks.base import Batch, SourceRow
from embedd_server.store.embedding_batches import BatchRecord, FillProgress

NOW = dt.datetime(2026, 3, 13, tzinfo=dt.UTC)
SPEC = VectorTableSpec(
    "public", "t", "id", "text-embedding-3-small", 2, (ColumnSpec("body", "embedding", 1),)
)
TASK = Task(
    "task_1", "org", "env", "backfill", "vt_1", "running", 1, 3, None, None, 0, 0, 0, "me", NOW, NOW, None
)


def _b64(vector: list[float]) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def _hash(text: str) -> str:
    return (text.encode().hex() * 8)[:32] + "m" * 32  # any 64 characters whose first half is the text's


class Api:
    def __init__(
        self, found: BatchInfo | None = None, files: dict[str, list[dict[str, Any]]] | None = None
    ) -> None:
        self.found = found
        self.created: list[Mapping[str, str]] = []
        self.cancelled: list[str] = []
        self.deleted: list[str] = []
        self._files = files or {}

    async def upload(self, filename: str, data: bytes) -> str:
        return "file-in"

    async def files_named(self, filename: str) -> list[str]:
        return []

    async def delete_file(self, file_id: str) -> None:
        self.deleted.append(file_id)

    async def create(self, input_file_id: str, metadata: Mapping[str, str]) -> BatchInfo:
        self.created.append(metadata)
        return BatchInfo("batch_new", "validating", metadata=metadata)

    async def get(self, batch_id: str) -> BatchInfo:
        raise AssertionError("not polled here")

    async def cancel(self, batch_id: str) -> None:
        self.cancelled.append(batch_id)

    async def find(self, metadata: Mapping[str, str], *, since: int) -> BatchInfo | None:
        return self.found

    async def lines(self, file_id: str) -> AsyncIterator[dict[str, Any]]:
        for line in self._files[file_id]:
            yield line


class Ledger:
    def __init__(self, lost: bool = False) -> None:
        self.lost = lost
        self.calls: list[tuple[str, Any]] = []

    async def load(self) -> list[BatchRecord]:
        return []

    async def progress(self, progress: FillProgress) -> None:
        self.calls.append(("progress", progress))

    async def prepare(self, seq: int, keys: Sequence[str], progress: FillProgress) -> None:
        self.calls.append(("prepare", keys))

    async def uploaded(self, seq: int, file_id: str, hashes: Sequence[str | None], requests: int) -> None:
        self.calls.append(("uploaded", file_id))

    async def submitted(self, seq: int, batch_id: str, status: str) -> None:
        if self.lost:
            raise LeaseLost("another holder")
        self.calls.append(("submitted", batch_id))

    async def polled(self, seq: int, status: str, completed: int, failed: int) -> None:
        self.calls.append(("polled", status))

    async def requeue(self, seq: int, status: str) -> None:
        self.calls.append(("requeue", status))

    async def written(self, seq: int, *, status: str, tokens: int, rows: int, progress: FillProgress) -> None:
        self.calls.append(("written", (tokens, rows, list(progress.failures))))


class Source:
    def __init__(self, texts: dict[str, str]) -> None:
        self.texts = texts

    async def rows(self, keys: Sequence[str]) -> list[SourceRow]:
        return [SourceRow(k, self.texts[k], "{}", _hash(self.texts[k])) for k in keys if k in self.texts]


class Store:
    def __init__(self) -> None:
        self.written: list[Batch] = []

    async def write(self, batch: Batch, *, upsert: bool) -> None:
        assert upsert
        self.written.append(batch)


class Embedder:
    model, dimensions = "text-embedding-3-small", 2

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def embed(self, texts: Sequence[str], input_type: InputType) -> EmbedResult:
        self.texts += texts
        return EmbedResult(np.tile(np.asarray([[0.0, 1.0]], dtype=np.float32), (len(texts), 1)))

    async def aclose(self) -> None:
        return None


def _job(
    api: Api, ledger: Ledger, source: Source | None = None, store: Store | None = None
) -> BatchBackfillJob:
    async def confirm() -> None:
        return None

    return BatchBackfillJob(
        task=TASK,
        spec=SPEC,
        store=store or Store(),  # type: ignore[arg-type]
        source=source or Source({}),  # type: ignore[arg-type]
        embedder=Embedder(),
        api=api,
        requests=EmbeddingRequests("text-embedding-3-small", 2, True),
        ledger=ledger,
        confirm=confirm,
    )


def _uploaded(keys: list[str], hashes: list[str | None], submissions: int = 0) -> BatchRecord:
    return BatchRecord(1, "uploaded", keys, hashes, 1, "file-in", None, None, submissions, NOW)


async def test_a_batch_a_crash_left_unrecorded_is_found_not_submitted_again() -> None:
    api, ledger = Api(found=BatchInfo("batch_old", "in_progress")), Ledger()
    record = await _job(api, ledger)._submit(_uploaded(["1"], ["h"], submissions=2), search=True)
    assert api.created == [] and ledger.calls == [("submitted", "batch_old")]
    assert (record.state, record.batch_id, record.submissions) == ("submitted", "batch_old", 3)


async def test_each_submission_carries_its_task_and_number() -> None:
    api, ledger = Api(), Ledger()
    await _job(api, ledger)._submit(_uploaded(["1"], ["h"], submissions=1), search=True)
    assert api.created == [{"embedd_task": "task_1", "embedd_batch": "1.1"}]


async def test_a_holder_that_lost_its_lease_cancels_what_it_created() -> None:
    api, ledger = Api(), Ledger(lost=True)
    with pytest.raises(LeaseLost):
        await _job(api, ledger)._submit(_uploaded(["1"], ["h"]), search=False)
    assert len(api.created) == 1 and api.cancelled == ["batch_new"]


async def test_collecting_keeps_fitting_vectors_and_embeds_the_rest_through_the_normal_api() -> None:
    """Keys 1-4 were sent in two requests; request 0:2 came back, 2:4 failed. Row 2's text
    changed meanwhile, row 3 was deleted; row 5 had no text when the file was made."""
    sent = {"1": "one", "2": "two", "3": "three", "4": "four"}
    output = {
        "custom_id": custom_id(1, 0, 2),
        "response": {
            "status_code": 200,
            "body": {
                "data": [{"index": 0, "embedding": _b64([3, 4])}, {"index": 1, "embedding": _b64([1, 0])}],
                "usage": {"prompt_tokens": 7, "total_tokens": 7},
            },
        },
        "error": None,
    }
    failed = {
        "custom_id": custom_id(1, 2, 4),
        "response": None,
        "error": {"code": "batch_expired", "message": "late"},
    }
    api, ledger, store = Api(files={"file-out": [output], "file-err": [failed]}), Ledger(), Store()
    source = Source({"1": "one", "2": "two, changed", "4": "four", "5": "five"})
    job = _job(api, ledger, source, store)
    keys = ["1", "2", "3", "4", "5"]
    hashes: list[str | None] = [_hash(sent[k])[:32] if k in sent else None for k in keys]
    record = BatchRecord(1, "submitted", keys, hashes, 2, "file-in", "batch_1", "in_progress", 1, NOW)
    info = BatchInfo("batch_1", "expired", output_file_id="file-out", error_file_id="file-err")
    done = await job._collect(record, info)
    assert done.state == "written"
    (batch,) = store.written
    assert [r.pk for r in batch.rows] == ["1", "2", "4", "5"]
    np.testing.assert_allclose(batch.vectors[0], [0.6, 0.8])  # from the batch, normalised
    assert job.embedder.texts == ["two, changed", "four", "five"]  # type: ignore[attr-defined]
    assert ledger.calls == [("written", (7, 4, []))]
    assert api.deleted == ["file-in", "file-out", "file-err"]
    assert job.rows_processed == 5


def test_custom_ids_name_their_batch_and_range() -> None:
    assert parse_custom_id(custom_id(3, 10, 20), 3) == (10, 20)
    assert parse_custom_id(custom_id(3, 10, 20), 4) is None  # another batch's line
    assert (
        parse_custom_id("x:1:2", 3) is None
        and parse_custom_id("3:5:5", 3) is None
        and parse_custom_id(None, 3) is None
    )


def test_a_line_is_the_embeddings_request_and_a_result_line_its_vectors() -> None:
    requests = EmbeddingRequests("text-embedding-3-small", 2, True)
    line = json.loads(requests.line("1:0:2", ["é", "b"]))
    assert line == {
        "custom_id": "1:0:2",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {
            "model": "text-embedding-3-small",
            "input": ["é", "b"],
            "encoding_format": "base64",
            "dimensions": 2,
        },
    }
    fixed = EmbeddingRequests("text-embedding-ada-002", 2, False)
    assert "dimensions" not in json.loads(fixed.line("1:0:1", ["a"]))["body"]
    ok = {"data": [{"index": 0, "embedding": [3.0, 4.0, 9.0]}], "usage": {"prompt_tokens": 2}}
    result = requests.result({"custom_id": "c", "response": {"status_code": 200, "body": ok}}, 1)
    assert result.tokens == 2 and result.vectors is not None
    np.testing.assert_allclose(result.vectors, [[0.6, 0.8]])  # a longer vector is cut, as the API does
    bad = {
        "custom_id": "c",
        "response": {"status_code": 400, "body": {"error": {"message": "'$.input' is invalid"}}},
    }
    assert requests.result(bad, 1).error == "batch request failed (400): '$.input' is invalid"
    assert (
        requests.result({"custom_id": "c", "response": {"status_code": 200, "body": {}}}, 1).vectors is None
    )
    assert fixed.result({"custom_id": "c", "response": {"status_code": 200, "body": ok}}, 1).vectors is None
    assert EmbeddingRequests("m", 2, True, max_inputs=512).plan(["a"] * 1000) == [(0, 512), (512, 1000)]
    assert requests.plan(["a"] * 3000) == [(0, 2048), (2048, 3000)]  # OpenAI's own maximum
