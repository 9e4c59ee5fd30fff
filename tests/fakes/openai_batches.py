"""OpenAI's Files and Batch APIs, faked for `FakeOpenAI` (tests/fakes/providers.py).

The wire format is OpenAI's (the official SDK's models: `FileObject`, `Batch`, `BatchError`,
`BatchRequestCounts`; checked with the SDK in tests/integration/test_openai_batch_fake.py):

- `POST /v1/files` (multipart: `purpose`, `file`) -> a file object; `GET /v1/files`
  (`purpose`, `limit`, `after`, `order`), `GET /v1/files/{id}`, `GET /v1/files/{id}/content`,
  `DELETE /v1/files/{id}`;
- `POST /v1/batches` (`input_file_id`, `endpoint`, `completion_window` "24h", `metadata`) ->
  a batch; `GET /v1/batches` (newest first, `limit`, `after`), `GET /v1/batches/{id}`,
  `POST /v1/batches/{id}/cancel`.

A batch moves `validating` -> `in_progress` -> `finalizing` -> `completed` as time passes
(`durations`, scaled by `time_scale`, so that a test runs a day in a second), is `failed` when
its input file does not validate (bad JSON, another endpoint or model per line, a repeated
`custom_id`, more than 50,000 requests or embedding inputs, more than 200 MB), `expired` when
it is not done within its completion window (24 h, scaled; `stall_next` makes a batch that
never finishes: it expires having done `done_share` of its requests), and `cancelling` ->
`cancelled` when cancelled. Each request line is answered by the embeddings endpoint's own
rules (`FakeOpenAI.serve`, counted in `counters`, apart from the normal API's): a 200 goes to
the output file, any other status to the error file, as do requests an expiry or a
cancellation left undone (`batch_expired`, `batch_cancelled`). `refuse_next` fails the next
batches at validation with a code (e.g. `token_limit_exceeded`, OpenAI's queue limit).
"""

from __future__ import annotations

import collections
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from tests.fakes.providers import Counters, FakeOpenAI

MAX_REQUESTS = 50_000
MAX_EMBEDDING_INPUTS = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def object(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass
class FakeBatch:
    id: str
    input_file_id: str
    metadata: dict[str, str] | None
    created_at: int
    started: float  # monotonic
    lines: list[dict[str, Any]] = field(default_factory=list)
    status: str = "validating"
    stalled: bool = False
    done_share: float = 0.0
    refused: tuple[str, str] | None = None  # (code, message) at validation
    errors: list[dict[str, Any]] = field(default_factory=list)
    times: dict[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    tokens: int = 0
    cancel_at: float | None = None


class FakeBatches:
    """The Files and Batch APIs of one `FakeOpenAI`."""

    def __init__(
        self,
        provider: FakeOpenAI,
        *,
        durations: tuple[float, float, float] = (60.0, 600.0, 60.0),
        window_s: float = 86_400.0,
        time_scale: float = 1.0,
    ) -> None:
        from tests.fakes.providers import Counters  # noqa: PLC0415 - the two modules know each other

        self.provider = provider
        self.durations = durations  # validating, in_progress, finalizing (seconds, unscaled)
        self.window_s = window_s
        self.time_scale = time_scale
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, FakeBatch] = {}
        # What the batch API embedded (the normal API's are provider.counters).
        self.counters: Counters = Counters()
        self.calls: collections.Counter[str] = collections.Counter()  # "POST /files", ...
        self._stall: collections.deque[float] = collections.deque()
        self._refuse: collections.deque[tuple[str, str]] = collections.deque()

    # -- control ---------------------------------------------------------------------------

    def stall_next(self, times: int = 1, *, done_share: float = 0.5) -> None:
        """The next batches never finish: they expire after their window having done the first
        `done_share` of their requests."""
        self._stall.extend([done_share] * times)

    def refuse_next(self, code: str, message: str, times: int = 1) -> None:
        self._refuse.extend([(code, message)] * times)

    def routes(self, app: web.Application, prefix: str) -> None:
        app.router.add_post(f"{prefix}/files", self.upload)
        app.router.add_get(f"{prefix}/files", self.list_files)
        app.router.add_get(f"{prefix}/files/{{id}}", self.get_file)
        app.router.add_get(f"{prefix}/files/{{id}}/content", self.file_content)
        app.router.add_delete(f"{prefix}/files/{{id}}", self.delete_file)
        app.router.add_post(f"{prefix}/batches", self.create)
        app.router.add_get(f"{prefix}/batches", self.list_batches)
        app.router.add_get(f"{prefix}/batches/{{id}}", self.get)
        app.router.add_post(f"{prefix}/batches/{{id}}/cancel", self.cancel)

    # -- plumbing --------------------------------------------------------------------------

    def _denied(self, request: web.Request, what: str) -> web.Response | None:
        """Counts the call; the 401 for a wrong key (as the embeddings endpoint answers it)."""
        self.calls[what] += 1
        auth = request.headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else None
        if self.provider.api_key is not None and key != self.provider.api_key:
            self.provider.presented = key or ""
            return self.provider.bad_key()
        return None

    def _not_found(self, kind: str, ident: str) -> web.Response:
        return self.provider.error(404, f"No such {kind} object: {ident}", param="id")

    def _scaled(self, seconds: float) -> float:
        return seconds * self.time_scale

    # -- files -----------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request, "POST /files")) is not None:
            return denied
        fields: dict[str, Any] = {}
        async for part in await request.multipart():
            if part.name == "file":
                fields["file"] = (part.filename or "file", await part.read())  # type: ignore[union-attr]
            elif part.name:
                fields[part.name] = (await part.text()) if hasattr(part, "text") else None  # type: ignore[union-attr]
        if "file" not in fields:
            return self.provider.error(400, "Missing required parameter: 'file'.", param="file")
        purpose = fields.get("purpose")
        if purpose not in ("batch", "assistants", "fine-tune", "vision", "user_data", "evals"):
            return self.provider.error(400, f"Invalid value for 'purpose': {purpose!r}.", param="purpose")
        name, data = fields["file"]
        if purpose == "batch" and len(data) > MAX_FILE_BYTES:
            return self.provider.error(
                400, "File is too large: batch files may be at most 200 MB.", param="file"
            )
        stored = StoredFile(f"file-{secrets.token_hex(12)}", name, purpose, data, int(time.time()))
        self.files[stored.id] = stored
        return web.json_response(stored.object())

    async def list_files(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request, "GET /files")) is not None:
            return denied
        purpose = request.query.get("purpose")
        items = [f for f in self.files.values() if purpose is None or f.purpose == purpose]
        items.sort(key=lambda f: f.created_at, reverse=request.query.get("order", "desc") == "desc")
        return web.json_response(_page([f.object() for f in items], request))

    async def get_file(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request, "GET /files/{id}")) is not None:
            return denied
        stored = self.files.get(request.match_info["id"])
        return (
            web.json_response(stored.object())
            if stored
            else self._not_found("File", request.match_info["id"])
        )

    async def file_content(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request, "GET /files/{id}/content")) is not None:
            return denied
        stored = self.files.get(request.match_info["id"])
        if stored is None:
            return self._not_found("File", request.match_info["id"])
        return web.Response(body=stored.data, content_type="application/octet-stream")

    async def delete_file(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request, "DELETE /files/{id}")) is not None:
            return denied
        stored = self.files.pop(request.match_info["id"], None)
        if stored is None:
            return self._not_found("File", request.match_info["id"])
        return web.json_response({"id": stored.id, "object": "file", "deleted": True})

    # -- batches ---------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request, "POST /batches")) is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:
            return self.provider.error(400, "We could not parse the JSON body of your request.")
        if body.get("endpoint") != "/v1/embeddings" and body.get("endpoint") not in ("/v1/chat/completions",):
            return self.provider.error(
                400, f"Invalid value for 'endpoint': {body.get('endpoint')!r}.", param="endpoint"
            )
        if body.get("completion_window") != "24h":
            return self.provider.error(400, "Invalid value for 'completion_window': only '24h' is supported.")
        stored = self.files.get(str(body.get("input_file_id")))
        if stored is None or stored.purpose != "batch":
            return self.provider.error(400, f"Invalid 'input_file_id': {body.get('input_file_id')!r}.")
        metadata = body.get("metadata")
        if metadata is not None and (len(metadata) > 16 or any(len(str(v)) > 512 for v in metadata.values())):
            return self.provider.error(
                400, "Invalid 'metadata': at most 16 keys of values up to 512 characters."
            )
        batch = FakeBatch(
            f"batch_{secrets.token_hex(12)}", stored.id, metadata, int(time.time()), time.monotonic()
        )
        if self._stall:
            batch.stalled, batch.done_share = True, self._stall.popleft()
        if self._refuse:
            batch.refused = self._refuse.popleft()
        self._validate(batch, stored.data, body["endpoint"])
        self.batches[batch.id] = batch
        return web.json_response(self._object(batch))

    def _validate(self, batch: FakeBatch, data: bytes, endpoint: str) -> None:
        """Parses the input file; problems make the batch fail when validation ends."""
        seen: set[str] = set()
        inputs, models = 0, set()
        for n, raw in enumerate(data.splitlines(), start=1):
            try:
                line = json.loads(raw)
                custom_id, url, line_body = line["custom_id"], line["url"], line["body"]
            except (ValueError, KeyError, TypeError):
                batch.errors.append(_error("invalid_json_line", f"Line {n} is not a valid request.", n))
                continue
            if line.get("method") != "POST" or url != endpoint:
                batch.errors.append(
                    _error("mismatched_endpoint", f"Line {n}: the url must be {endpoint}.", n, "url")
                )
            if custom_id in seen:
                batch.errors.append(
                    _error("duplicate_custom_id", f"Line {n}: custom_id {custom_id!r} is repeated.", n)
                )
            seen.add(custom_id)
            models.add(line_body.get("model"))
            texts = line_body.get("input")
            inputs += len(texts) if isinstance(texts, list) else 1
            batch.lines.append(line)
        if len(models) > 1:
            batch.errors.append(
                _error("mismatched_model", "Every request of a batch must use the same model.")
            )
        if len(batch.lines) > MAX_REQUESTS:
            batch.errors.append(
                _error("too_many_requests", f"A batch holds at most {MAX_REQUESTS} requests.")
            )
        if inputs > MAX_EMBEDDING_INPUTS:
            message = f"An embeddings batch holds at most {MAX_EMBEDDING_INPUTS} inputs, not {inputs}."
            batch.errors.append(_error("too_many_embedding_inputs", message))
        if batch.refused is not None:
            batch.errors.append(_error(*batch.refused))
        batch.counts["total"] = len(batch.lines)

    async def get(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request, "GET /batches/{id}")) is not None:
            return denied
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return self._not_found("Batch", request.match_info["id"])
        self._advance(batch)
        return web.json_response(self._object(batch))

    async def list_batches(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request, "GET /batches")) is not None:
            return denied
        items = sorted(self.batches.values(), key=lambda b: (b.created_at, b.started), reverse=True)
        for batch in items:
            self._advance(batch)
        return web.json_response(_page([self._object(b) for b in items], request))

    async def cancel(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request, "POST /batches/{id}/cancel")) is not None:
            return denied
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return self._not_found("Batch", request.match_info["id"])
        self._advance(batch)
        if batch.status not in ACTIVE:
            return self.provider.error(409, f"Cannot cancel a batch with status '{batch.status}'.")
        if batch.status != "cancelling":
            batch.status, batch.cancel_at = "cancelling", time.monotonic() + self._scaled(self.durations[2])
            batch.times["cancelling_at"] = int(time.time())
        return web.json_response(self._object(batch))

    # -- the passing of time -----------------------------------------------------------------

    def _advance(self, batch: FakeBatch) -> None:
        """Moves the batch to where the elapsed time puts it."""
        elapsed = time.monotonic() - batch.started
        validating, in_progress, finalizing = (self._scaled(d) for d in self.durations)
        now = int(time.time())
        if batch.status == "cancelling":
            if batch.cancel_at is not None and time.monotonic() >= batch.cancel_at:
                self._finish(
                    batch,
                    "cancelled",
                    0.0,
                    "batch_cancelled",
                    "This request was not executed because the batch was cancelled.",
                )
                batch.times["cancelled_at"] = now
            return
        if batch.status not in ACTIVE:
            return
        if elapsed < validating:
            return
        if batch.errors:
            batch.status = "failed"
            batch.times["failed_at"] = now
            return
        if batch.status == "validating":
            batch.status = "in_progress"
            batch.times["in_progress_at"] = now
        if batch.stalled:
            if elapsed >= self._scaled(self.window_s):
                self._finish(
                    batch,
                    "expired",
                    batch.done_share,
                    "batch_expired",
                    "This request could not be executed before the completion window expired.",
                )
                batch.times["expired_at"] = now
            return
        if elapsed < validating + in_progress:
            return
        if batch.status == "in_progress":
            batch.status = "finalizing"
            batch.times["finalizing_at"] = now
        if elapsed >= validating + in_progress + finalizing:
            self._finish(batch, "completed", 1.0, "", "")
            batch.times["completed_at"] = now

    def _finish(self, batch: FakeBatch, status: str, share: float, code: str, message: str) -> None:
        """Answers the first `share` of the requests through the embeddings endpoint; the rest
        (if any) are listed in the error file with `code`."""
        done = int(len(batch.lines) * share)
        output, errors = [], []
        for i, line in enumerate(batch.lines):
            ident = f"batch_req_{secrets.token_hex(12)}"
            if i >= done:
                errors.append(
                    {
                        "id": ident,
                        "custom_id": line["custom_id"],
                        "response": None,
                        "error": {"code": code, "message": message},
                    }
                )
                continue
            status_code, payload = self._answer(line["body"])
            record = {
                "id": ident,
                "custom_id": line["custom_id"],
                "response": {
                    "status_code": status_code,
                    "request_id": f"req_{secrets.token_hex(8)}",
                    "body": payload,
                },
                "error": None,
            }
            (output if status_code == 200 else errors).append(record)
        batch.counts.update(completed=len(output), failed=len(errors))
        batch.output_file_id = self._result_file(batch, "output", output)
        batch.error_file_id = self._result_file(batch, "error", errors)
        batch.status = status

    def _answer(self, body: dict[str, Any]) -> tuple[int, Any]:
        """One request line as the embeddings endpoint answers it, counted as batch work."""
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return 400, {
                "error": {
                    "message": "'$.input' is invalid.",
                    "type": "invalid_request_error",
                    "param": "input",
                    "code": None,
                }
            }
        provider = self.provider
        # serve() counts what it accepts in provider.counters: here, the batch API's
        saved, provider.counters = provider.counters, self.counters
        try:
            response = provider.serve(body, texts)
        finally:
            provider.counters = saved
        assert response.body is not None
        payload = json.loads(bytes(response.body))  # type: ignore[arg-type]
        return response.status, payload

    def _result_file(self, batch: FakeBatch, kind: str, records: list[dict[str, Any]]) -> str | None:
        if not records:
            return None
        data = "".join(json.dumps(r) + "\n" for r in records).encode()
        stored = StoredFile(
            f"file-{secrets.token_hex(12)}",
            f"{batch.id}_{kind}.jsonl",
            "batch_output",
            data,
            int(time.time()),
        )
        self.files[stored.id] = stored
        return stored.id

    def _object(self, batch: FakeBatch) -> dict[str, Any]:
        window = int(self.window_s * self.time_scale)
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": "/v1/embeddings",
            "errors": {"object": "list", "data": batch.errors} if batch.status == "failed" else None,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": batch.status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": batch.created_at,
            "in_progress_at": batch.times.get("in_progress_at"),
            "expires_at": batch.created_at + max(window, 1),
            "finalizing_at": batch.times.get("finalizing_at"),
            "completed_at": batch.times.get("completed_at"),
            "failed_at": batch.times.get("failed_at"),
            "expired_at": batch.times.get("expired_at"),
            "cancelling_at": batch.times.get("cancelling_at"),
            "cancelled_at": batch.times.get("cancelled_at"),
            "request_counts": dict(batch.counts),
            "metadata": batch.metadata,
        }


def _error(code: str, message: str, line: int | None = None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _page(items: list[dict[str, Any]], request: web.Request) -> dict[str, Any]:
    """A cursor page (`after` an id, `limit`), as OpenAI's list endpoints answer."""
    after = request.query.get("after")
    if after is not None:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    limit = int(request.query.get("limit", "20"))
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }
