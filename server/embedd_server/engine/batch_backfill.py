"""A fill through the provider's batch API (docs/batch.md): half the price, results within a day.

The fill is a durable task that runs in short steps. Each step, under the task's lease:

1. polls the batches in flight; a finished one (completed, expired, cancelled, failed) is
   collected: its output file's vectors are written for rows whose text is still the text
   that was sent, and every other row of the batch - a failed line, a request an expiry or a
   cancellation left undone, a row whose text changed meanwhile - is embedded through the
   normal API now (rows the normal API rejects become the task's row failures);
2. finishes submissions a crash interrupted: a batch whose rows were chosen but whose file
   was not recorded is uploaded again (the crashed holder's file, if any, deleted); a batch
   whose file was recorded but not its batch is first looked for at the provider by the
   metadata every batch carries (task and batch number), so it is never submitted twice;
3. reads the next rows in key order into new batches while fewer than `max_in_flight` are in
   flight (rows with an imported vector are written at once, without the provider);
4. then either ends the fill (everything read and written: indexes built) or asks to be
   parked until the next poll (`Waiting`), which frees the worker and the connections.

Every state change of a batch is recorded in the control plane together with the progress it
implies, fenced by the lease (store/embedding_batches.py); the provider is called only after
the lease is confirmed. A batch the provider refuses for its queue limit (`token_limit_exceeded`)
is submitted again, with the same file, once others have finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import structlog

from embedd_server.domain.leases import LeaseLost
from embedd_server.domain.models import Task
from embedd_server.domain.vector_tables import VectorTableSpec
from embedd_server.engine.backfill import EMPTY_TEXT, embedded
from embedd_server.providers.base import Embedder, InputType, ProviderError, Vectors
from embedd_server.providers.openai_batch import BatchInfo, EmbeddingRequests
from embedd_server.sinks.base import TEXT_HASH_CHARS, Batch, Confirm, SourceRow, VectorStore, same_text
from embedd_server.sources.reader import SourceReader
from embedd_server.store.embedding_batches import BatchRecord, FillProgress

log = structlog.get_logger(__name__)

# The provider's queue of enqueued tokens is full: submit again once others finish.
QUEUE_FULL = "token_limit_exceeded"
# Bytes of a request line beyond its text (JSON, the model, the custom id), per input.
_LINE_OVERHEAD = 16


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """Limits of a batch fill (docs/batch.md); OpenAI's own are 50,000 inputs and 200 MB a file."""

    rows_per_batch: int = 10_000
    max_file_bytes: int = 150 * 1024 * 1024
    max_in_flight: int = 10
    inputs_per_request: int = 512
    max_submissions: int = 10
    poll_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Waiting:
    """Park the task this long, then step again."""

    delay_s: float


class BatchAPI(Protocol):
    """A provider's batch API (providers/openai_batch.OpenAIBatchAPI)."""

    async def upload(self, filename: str, data: bytes) -> str: ...

    async def files_named(self, filename: str) -> list[str]: ...

    async def delete_file(self, file_id: str) -> None: ...

    async def create(self, input_file_id: str, metadata: Mapping[str, str]) -> BatchInfo: ...

    async def get(self, batch_id: str) -> BatchInfo: ...

    async def cancel(self, batch_id: str) -> None: ...

    async def find(self, metadata: Mapping[str, str], *, since: int) -> BatchInfo | None: ...

    def lines(self, file_id: str) -> AsyncIterator[dict[str, Any]]: ...


class Ledger(Protocol):
    """The batches in the control plane (store/embedding_batches.BatchLedger)."""

    async def load(self) -> list[BatchRecord]: ...

    async def progress(self, progress: FillProgress) -> None: ...

    async def prepare(self, seq: int, keys: Sequence[str], progress: FillProgress) -> None: ...

    async def uploaded(self, seq: int, file_id: str, hashes: Sequence[str | None], requests: int) -> None: ...

    async def submitted(self, seq: int, batch_id: str, status: str) -> None: ...

    async def polled(self, seq: int, status: str, completed: int, failed: int) -> None: ...

    async def requeue(self, seq: int, status: str) -> None: ...

    async def written(
        self, seq: int, *, status: str, tokens: int, rows: int, progress: FillProgress
    ) -> None: ...


def custom_id(seq: int, start: int, end: int) -> str:
    """A request's id in its batch: the batch and the [start, end) range of the texts sent."""
    return f"{seq}:{start}:{end}"


def parse_custom_id(value: object, seq: int) -> tuple[int, int] | None:
    """The range of a request of batch `seq`; None for anything else."""
    parts = str(value).split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or int(parts[0]) != seq:
        return None
    start, end = int(parts[1]), int(parts[2])
    return (start, end) if start < end else None


def sent_keys(record: BatchRecord) -> list[str]:
    """The keys whose texts the batch's file holds, in file order (ranges index into these)."""
    return [k for k, h in zip(record.keys, record.text_hashes, strict=True) if h is not None]


@dataclass
class _Collected:
    vectors: dict[int, Vectors] = field(default_factory=dict)  # position in sent_keys -> vector
    tokens: int = 0
    line_errors: int = 0


@dataclass
class BatchBackfillJob:
    task: Task
    spec: VectorTableSpec
    store: VectorStore
    source: SourceReader
    embedder: Embedder  # the normal API: what a batch did not embed
    api: BatchAPI
    requests: EmbeddingRequests
    ledger: Ledger
    confirm: Confirm
    settings: BatchSettings = field(default_factory=BatchSettings)
    chunk_rows: int = 1000
    use_import: bool = False
    maintenance_work_mem: str = ""
    rows_total: int = 0
    rows_processed: int = 0
    rows_imported: int = 0
    cursor: str | None = None
    _queue_full: bool = False

    async def step(self) -> int | Waiting:
        """One step (module doc): the number of vectors once the fill is done, else how long
        to wait for the provider."""
        await self.store.create()
        self.rows_total = await self.source.count()
        self.rows_processed, self.rows_imported = self.task.rows_processed, self.task.rows_imported
        self.cursor = self.task.last_processed_pk
        records = await self.ledger.load()
        if not records and self.cursor is None and await self.store.is_empty():
            await self.store.drop_index()  # load first, index after (as BackfillJob does)
        records = [await self._poll(r) if r.state == "submitted" else r for r in records]
        for i in range(len(records)):
            if records[i].state == "prepared":
                records[i] = await self._upload(records[i], None)
            if records[i].state == "uploaded" and self._slots(records):
                records[i] = await self._submit(records[i], search=True)
        exhausted = False
        while self._slots(records) and not exhausted:
            made, exhausted = await self._next_batch(max((r.seq for r in records), default=0) + 1)
            if made is not None:
                records.append(made)
        if exhausted and all(r.state == "written" for r in records):
            await self.store.remove_vanished(self.source)
            await self.store.build_indexes(self.spec.columns, self.maintenance_work_mem or None)
            return await self.store.count()
        return Waiting(self.settings.poll_s)

    def _slots(self, records: Sequence[BatchRecord]) -> bool:
        """Whether another batch may be submitted in this step."""
        in_flight = sum(1 for r in records if r.state == "submitted")
        return not self._queue_full and in_flight < self.settings.max_in_flight

    def _progress(self, failures: Sequence[tuple[str, str]] = ()) -> FillProgress:
        return FillProgress(self.cursor, self.rows_processed, self.rows_total, self.rows_imported, failures)

    # -- reading the next batch --------------------------------------------------------------

    async def _next_batch(self, seq: int) -> tuple[BatchRecord | None, bool]:
        """The next rows after the cursor, as a submitted batch (None if no row needs one), and
        whether the source is read to its end."""
        chosen: list[SourceRow] = []
        failures: list[tuple[str, str]] = []
        size, read, exhausted = 0, 0, False
        # at most a batch of rows read per call: imported rows are checkpointed as they go
        while read < self.settings.rows_per_batch and size < self.settings.max_file_bytes:
            want = min(self.chunk_rows, self.settings.rows_per_batch - read)
            chunk = await self.source.chunk(self.cursor, want, imported=self.use_import)
            taken, imported = [], []
            for row in chunk:
                if row.text and row.imported is None:
                    if size >= self.settings.max_file_bytes or len(chosen) >= self.settings.rows_per_batch:
                        break  # the file is full: this row starts the next batch
                    chosen.append(row)
                    size += len(row.text.encode()) + _LINE_OVERHEAD
                elif row.text:
                    imported.append(row)
                else:
                    failures.append((row.pk, EMPTY_TEXT))
                taken.append(row)
            if imported:
                vectors = np.stack([r.imported for r in imported if r.imported is not None])
                await self.store.write(Batch(imported, vectors), upsert=True)
            if taken:
                self.cursor = taken[-1].pk
            read += len(taken)
            self.rows_imported += len(imported)
            self.rows_processed += len(imported) + sum(1 for r in taken if not r.text)
            if len(chunk) < want:
                exhausted = True
                break
            if len(taken) < len(chunk):
                break
        if not chosen:
            await self.ledger.progress(self._progress(failures))
            return None, exhausted
        keys = [r.pk for r in chosen]
        await self.ledger.prepare(seq, keys, self._progress(failures))
        now = dt.datetime.now(dt.UTC)
        record = BatchRecord(seq, "prepared", keys, [None] * len(keys), 0, None, None, None, 0, now)
        record = await self._upload(record, chosen)
        if record.state == "uploaded":
            record = await self._submit(record, search=False)
        return record, exhausted

    # -- a batch's life ----------------------------------------------------------------------

    def _filename(self, seq: int) -> str:
        return f"embedd-{self.task.id}-{seq}.jsonl"

    async def _upload(self, record: BatchRecord, rows: Sequence[SourceRow] | None) -> BatchRecord:
        """Writes the batch's input file to the provider. `rows` None: a step after a crash
        rebuilds it from the source (and deletes a file the crashed holder left)."""
        if rows is None:
            current = {r.pk: r for r in await self.source.rows(record.keys)}
            rows = [current[k] for k in record.keys if k in current]
            for stale in await self.api.files_named(self._filename(record.seq)):
                await self.api.delete_file(stale)
        texts_by_key = {r.pk: r for r in rows if r.text}
        hashes = [
            texts_by_key[k].row_hash[:TEXT_HASH_CHARS] if k in texts_by_key else None for k in record.keys
        ]
        texts = [self.requests.prepare(texts_by_key[k].text or "") for k in record.keys if k in texts_by_key]
        if not texts:  # every row vanished or lost its text since it was chosen
            record = dataclasses.replace(record, text_hashes=hashes)
            return await self._collect(record, BatchInfo(id="", status="not_sent"))
        ranges = self.requests.plan(texts)
        data = b"".join(self.requests.line(custom_id(record.seq, a, b), texts[a:b]) for a, b in ranges)
        await self.confirm()
        file_id = await self.api.upload(self._filename(record.seq), data)
        await self.ledger.uploaded(record.seq, file_id, hashes, len(ranges))
        log.info(
            "batch file uploaded", seq=record.seq, rows=len(texts), requests=len(ranges), bytes=len(data)
        )
        return dataclasses.replace(
            record, state="uploaded", input_file_id=file_id, text_hashes=hashes, requests=len(ranges)
        )

    async def _submit(self, record: BatchRecord, *, search: bool) -> BatchRecord:
        """Creates the provider's batch - unless one made before a crash exists (`search`)."""
        assert record.input_file_id is not None
        metadata = {"embedd_task": self.task.id, "embedd_batch": f"{record.seq}.{record.submissions}"}
        since = int(record.updated_at.timestamp()) - 300  # clocks differ; a margin costs one page
        found = await self.api.find(metadata, since=since) if search else None
        if found is None:
            await self.confirm()
            found = await self.api.create(record.input_file_id, metadata)
            try:
                await self.ledger.submitted(record.seq, found.id, found.status)
            except LeaseLost:
                # The task is another holder's now, and it will submit this batch itself.
                with contextlib.suppress(ProviderError):
                    await self.api.cancel(found.id)
                raise
        else:
            log.info("found the batch a crashed holder submitted", seq=record.seq, batch_id=found.id)
            await self.ledger.submitted(record.seq, found.id, found.status)
        return dataclasses.replace(
            record,
            state="submitted",
            batch_id=found.id,
            provider_status=found.status,
            submissions=record.submissions + 1,
        )

    async def _poll(self, record: BatchRecord) -> BatchRecord:
        assert record.batch_id is not None
        info = await self.api.get(record.batch_id)
        if info.active:
            if info.status != record.provider_status:
                await self.ledger.polled(record.seq, info.status, info.completed, info.failed)
            return dataclasses.replace(record, provider_status=info.status)
        queue_full = info.status == "failed" and any(code == QUEUE_FULL for code, _ in info.errors)
        if queue_full and record.submissions < self.settings.max_submissions:
            log.info("the provider's batch queue is full; the batch waits", seq=record.seq)
            await self.ledger.requeue(record.seq, info.status)
            self._queue_full = True
            return dataclasses.replace(record, state="uploaded", batch_id=None, provider_status=info.status)
        if info.status != "completed":
            log.warning(
                "batch ended without all its results", seq=record.seq, status=info.status, errors=info.errors
            )
        return await self._collect(record, info)

    async def _collect(self, record: BatchRecord, info: BatchInfo) -> BatchRecord:
        """Writes a finished batch: its vectors where they still fit the row, the rest through
        the normal API; then counts it written and deletes its files."""
        results = await self._results(record, info)
        keys = sent_keys(record)
        position = {k: j for j, k in enumerate(keys)}
        sent_hash = dict(zip(record.keys, record.text_hashes, strict=True))
        current = {r.pk: r for r in await self.source.rows(record.keys)}
        ready: list[SourceRow] = []
        vectors: list[Vectors] = []
        again: list[SourceRow] = []
        for key in record.keys:
            row = current.get(key)
            if row is None:
                continue  # deleted since it was read
            j = position.get(key)
            if j is not None and j in results.vectors and same_text(sent_hash[key], row.row_hash):
                ready.append(row)
                vectors.append(results.vectors[j])
            else:
                again.append(row)
        failures: list[tuple[str, str]] = []
        from_batch = len(ready)
        if again:
            texts = [r.text for r in again if r.text]
            result = await self.embedder.embed(texts, InputType.DOCUMENT) if texts else None
            redone, failures = embedded(again, result)
            ready += redone.rows
            vectors += list(redone.vectors)
        if ready:
            await self.store.write(
                Batch(ready, np.stack(vectors).astype(np.float32, copy=False)), upsert=True
            )
        self.rows_processed += len(record.keys)
        await self.ledger.written(
            record.seq,
            status=info.status,
            tokens=results.tokens,
            rows=len(ready),
            progress=self._progress(failures),
        )
        log.info(
            "batch written",
            seq=record.seq,
            status=info.status,
            from_batch=from_batch,
            through_normal_api=len(again),
            line_errors=results.line_errors,
            tokens=results.tokens,
        )
        for file_id in (record.input_file_id, info.output_file_id, info.error_file_id):
            if file_id:
                with contextlib.suppress(ProviderError):
                    await self.api.delete_file(file_id)
        return dataclasses.replace(record, state="written", provider_status=info.status)

    async def _results(self, record: BatchRecord, info: BatchInfo) -> _Collected:
        """The vectors of the batch's output file (and the failed lines of its error file)."""
        out = _Collected()
        for file_id in (info.output_file_id, info.error_file_id):
            if not file_id:
                continue
            async for line in self.api.lines(file_id):
                span = parse_custom_id(line.get("custom_id"), record.seq)
                if span is None:
                    continue
                start, end = span
                result = self.requests.result(line, end - start)
                if result.vectors is None:
                    out.line_errors += 1
                    continue
                out.tokens += result.tokens
                for j in range(start, end):
                    out.vectors[j] = result.vectors[j - start]
        return out
