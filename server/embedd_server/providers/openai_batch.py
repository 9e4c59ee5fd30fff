"""OpenAI's Batch API for fills (docs/batch.md): input files of `/v1/embeddings` requests, batches,
their output and error files.

Wire format (OpenAI API reference, "Files" and "Batch"; the official SDK's models): upload
`POST {base}/files` (multipart `purpose=batch`, `file`) -> `{"id": "file-...", ...}`; create
`POST {base}/batches` `{"input_file_id", "endpoint": "/v1/embeddings", "completion_window":
"24h", "metadata"}` -> a batch `{"id", "status", "output_file_id", "error_file_id", "errors":
{"data": [{"code", "message", "line"}]}, "request_counts": {"total", "completed", "failed"},
"created_at", "metadata"}`; poll `GET {base}/batches/{id}`; list `GET {base}/batches?limit&after`
(newest first); cancel `POST {base}/batches/{id}/cancel`; read `GET {base}/files/{id}/content`
(JSONL); `DELETE {base}/files/{id}`. Statuses: validating, in_progress, finalizing, completed,
failed, expired, cancelling, cancelled.

An input line is `{"custom_id", "method": "POST", "url": "/v1/embeddings", "body": <the
embeddings request>}`; an output or error line `{"id", "custom_id", "response": {"status_code",
"request_id", "body"} | null, "error": {"code", "message"} | null}`. Limits: 50,000 requests
and 50,000 embedding inputs per batch, 200 MB per input file (docs/facts.md, "Batch APIs").

Calls are retried on 429, 5xx, timeouts and refused connections with backoff (the Batch API's
own endpoints are not rate-limited like embeddings; a few retries do). A 401/403 is
`bad_key`; a 404 on the files endpoint means the server has no Batch API. Every provider
message is scrubbed of the key before it goes further.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from embedd_server import network_policy
from embedd_server.domain.redact import scrub
from embedd_server.providers.base import ProviderError, Vectors, normalise
from embedd_server.providers.batching import estimate_tokens, plan_batches, truncate_to_tokens
from embedd_server.providers.http import DEFAULT_POLICY, RetryPolicy, backoff_delay, parse_retry_after
from embedd_server.providers.openai import OpenAIEmbedder, embeddings_body
from embedd_server.providers.remote import parse_embedding_list

ACTIVE = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
ENDPOINT = "/v1/embeddings"
# Pages of the batch list searched for a batch this service may have created before a crash.
_FIND_PAGES = 10
_PAGE = 100
_UPLOAD, _LIST_FILES = "upload a batch file", "list batch files"


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """A provider batch as last read."""

    id: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    # (code, message) of a batch that failed validation
    errors: tuple[tuple[str, str], ...] = ()
    completed: int = 0
    failed: int = 0
    created_at: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def _batch(payload: Any) -> BatchInfo:
    counts = payload.get("request_counts") or {}
    errors = (payload.get("errors") or {}).get("data") or []
    return BatchInfo(
        id=str(payload["id"]),
        status=str(payload["status"]),
        output_file_id=payload.get("output_file_id"),
        error_file_id=payload.get("error_file_id"),
        errors=tuple((str(e.get("code") or ""), str(e.get("message") or "")) for e in errors),
        completed=int(counts.get("completed") or 0),
        failed=int(counts.get("failed") or 0),
        created_at=int(payload.get("created_at") or 0),
        metadata=dict(payload.get("metadata") or {}),
    )


@dataclass(frozen=True, slots=True)
class LineResult:
    """One request of a batch as its output or error file tells it."""

    custom_id: str
    vectors: Vectors | None  # L2-normalised, of the requested size; None: the request failed
    tokens: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class EmbeddingRequests:
    """How texts become the lines of an input file - the same requests the embeddings API
    would get (providers/openai.py), within its limits per request - and how result lines
    become vectors."""

    model: str
    dimensions: int
    reducible: bool
    max_inputs: int = OpenAIEmbedder.max_inputs

    def prepare(self, text: str) -> str:
        """The text as the normal API would send it (cut to OpenAI's input limit, estimated)."""
        limit = OpenAIEmbedder.max_input_tokens * OpenAIEmbedder.estimate_safety
        return truncate_to_tokens(text, int(limit))

    def plan(self, texts: Sequence[str]) -> list[tuple[int, int]]:
        """[start, end) ranges of prepared texts, one request each."""
        cap = int(OpenAIEmbedder.max_request_tokens * OpenAIEmbedder.estimate_safety)
        per_request = min(self.max_inputs, OpenAIEmbedder.max_inputs)
        return plan_batches([estimate_tokens(t) for t in texts], per_request, cap)

    def line(self, custom_id: str, texts: Sequence[str]) -> bytes:
        dimensions = self.dimensions if self.reducible else None
        body = embeddings_body(self.model, texts, dimensions, "base64")
        request = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}
        return json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"

    def result(self, line: Mapping[str, Any], count: int) -> LineResult:
        """A result line of a request of `count` texts."""
        custom_id = str(line.get("custom_id"))
        response = line.get("response") or {}
        if response.get("status_code") != 200:
            error = line.get("error") or {}
            message = error.get("message") or _body_message(response.get("body")) or "no result"
            code = error.get("code") or response.get("status_code")
            return LineResult(custom_id, None, error=f"batch request failed ({code}): {message}")
        try:
            vectors, tokens = parse_embedding_list(
                response.get("body"), count, "prompt_tokens", "total_tokens"
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            return LineResult(custom_id, None, error=f"a malformed batch result ({exc})")
        have = vectors.shape[1] if vectors.ndim == 2 else -1
        if have > self.dimensions and self.reducible:
            vectors = np.ascontiguousarray(vectors[:, : self.dimensions])
        elif have != self.dimensions:
            return LineResult(custom_id, None, error=f"{have}-dimension vectors, expected {self.dimensions}")
        return LineResult(custom_id, normalise(vectors.copy()), tokens or 0)


def _body_message(body: Any) -> str:
    err = body.get("error") if isinstance(body, Mapping) else None
    return str(err.get("message") or "") if isinstance(err, Mapping) else ""


class OpenAIBatchAPI:
    """One provider record's Files and Batch API (its key, its base URL)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_key: str,
        base_url: str,
        policy: RetryPolicy = DEFAULT_POLICY,
    ) -> None:
        self._session = session
        self._api_key = api_key
        self._base = base_url.rstrip("/")
        self._policy = policy

    async def upload(self, filename: str, data: bytes) -> str:
        """A new input file; its id."""
        payload = await self._call("POST", "/files", form=lambda: _form(filename, data), what=_UPLOAD)
        return str(payload["id"])

    async def files_named(self, filename: str) -> list[str]:
        """Ids of this key's batch input files called `filename` (left by a crash)."""
        found, after = [], None
        for _ in range(_FIND_PAGES):
            query = {"purpose": "batch", "limit": str(_PAGE), **({"after": after} if after else {})}
            page = await self._call("GET", "/files", query=query, what=_LIST_FILES)
            found += [str(f["id"]) for f in page.get("data") or [] if f.get("filename") == filename]
            if not page.get("has_more") or not page.get("data"):
                return found
            after = str(page["data"][-1]["id"])
        return found

    async def delete_file(self, file_id: str) -> None:
        await self._call("DELETE", f"/files/{file_id}", what="delete a batch file", missing_ok=True)

    async def create(self, input_file_id: str, metadata: Mapping[str, str]) -> BatchInfo:
        body = {
            "input_file_id": input_file_id,
            "endpoint": ENDPOINT,
            "completion_window": "24h",
            "metadata": dict(metadata),
        }
        return _batch(await self._call("POST", "/batches", body=body, what="create a batch"))

    async def get(self, batch_id: str) -> BatchInfo:
        return _batch(await self._call("GET", f"/batches/{batch_id}", what="read a batch"))

    async def cancel(self, batch_id: str) -> None:
        await self._call("POST", f"/batches/{batch_id}/cancel", what="cancel a batch", missing_ok=True)

    async def find(self, metadata: Mapping[str, str], *, since: int) -> BatchInfo | None:
        """The newest batch created at or after `since` (Unix seconds) whose metadata holds
        `metadata`: one this service created but did not get to record."""
        after = None
        for _ in range(_FIND_PAGES):
            query = {"limit": str(_PAGE), **({"after": after} if after else {})}
            page = await self._call("GET", "/batches", query=query, what="list batches")
            batches = [_batch(b) for b in page.get("data") or []]
            for batch in batches:
                if all(batch.metadata.get(k) == v for k, v in metadata.items()):
                    return batch
            if not page.get("has_more") or not batches or batches[-1].created_at < since:
                return None
            after = batches[-1].id
        return None

    async def lines(self, file_id: str) -> AsyncIterator[dict[str, Any]]:
        """The parsed lines of an output or error file, read as they arrive (an output file
        of a large batch is hundreds of MB)."""
        url = f"{self._base}/files/{file_id}/content"
        async with self._session.get(url, headers=self._headers(), timeout=self._timeout()) as response:
            if response.status != 200:
                raise self._error(response.status, await response.read(), "read a batch's results")
            buffer = b""
            async for chunk in response.content.iter_chunked(1 << 20):
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for line in complete:
                    if line.strip():
                        yield json.loads(line)
            if buffer.strip():
                yield json.loads(buffer)

    # -- HTTP --------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _timeout(self) -> aiohttp.ClientTimeout:
        # an output file may take long to arrive: bound the wait for each read, not the whole
        return aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=self._policy.request_timeout_s)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
        form: Any = None,
        missing_ok: bool = False,
    ) -> Any:
        """One JSON call with retries; the parsed answer (None for a tolerated 404)."""
        attempt, last = 0, ""
        headers: Mapping[str, str]
        while True:
            try:
                async with self._session.request(
                    method,
                    f"{self._base}{path}",
                    json=body,
                    params=query,
                    data=form() if form is not None else None,
                    headers=self._headers(),
                    timeout=aiohttp.ClientTimeout(total=self._policy.request_timeout_s),
                ) as response:
                    status, raw, headers = response.status, await response.read(), response.headers
            except (TimeoutError, aiohttp.ClientError) as exc:
                if network_policy.denied(exc):
                    raise ProviderError(
                        network_policy.REASON, f"openai: {network_policy.NetworkPolicyDenied(self._base)}"
                    ) from None
                status, raw, headers, last = 0, b"", {}, f"{exc.__class__.__name__}"
            if status == 200:
                try:
                    return json.loads(raw)
                except ValueError:
                    last = "a malformed response body"
            elif status == 404 and missing_ok:
                return None
            elif status and status != 429 and status < 500 and status not in (408, 409):
                raise self._error(status, raw, what)
            elif status:
                last = f"HTTP {status}: {self._message(raw)}"
            attempt += 1
            if attempt >= self._policy.max_attempts:
                raise ProviderError(
                    "unreachable", self._scrub(f"openai at {self._base} could not {what}: {last}")
                )
            pause = parse_retry_after(headers) if status == 429 else None
            await asyncio.sleep(pause if pause is not None else backoff_delay(attempt, self._policy))

    def _error(self, status: int, raw: bytes, what: str) -> ProviderError:
        message = self._message(raw)
        if status in (401, 403):
            return ProviderError("bad_key", self._scrub(f"openai rejected the API key: {message}"))
        if status == 404 and what in (_UPLOAD, _LIST_FILES):  # the Files API itself is missing
            return ProviderError(
                "provider_error",
                self._scrub(
                    f"the server at {self._base} has no Batch API (HTTP {status} when trying to {what}): "
                    "use embedding_strategy 'standard' with it"
                ),
            )
        return ProviderError(
            "provider_error", self._scrub(f"openai could not {what}: HTTP {status}: {message}")
        )

    def _message(self, raw: bytes) -> str:
        try:
            payload = json.loads(raw)
        except ValueError:
            return raw[:200].decode(errors="replace") or "(empty body)"
        err = payload.get("error") if isinstance(payload, Mapping) else None
        if isinstance(err, Mapping) and err.get("message"):
            return str(err["message"])
        return json.dumps(payload)[:200]

    def _scrub(self, message: str) -> str:
        return scrub(message, (self._api_key,))


def _form(filename: str, data: bytes) -> aiohttp.FormData:
    """A fresh multipart body for each attempt (a FormData is consumed by one request)."""
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", data, filename=filename, content_type="application/jsonl")
    return form
