"""Local fake servers for the OpenAI, Gemini and Voyage embedding APIs (aiohttp.web).

Each speaks its API's wire format (request, response, error bodies, auth header) and rejects
what the real API rejects: too many inputs, too many tokens per request, an over-long input,
an empty input, a wrong key, an unknown model or unsupported dimensions. On top:

- a requests-per-minute and tokens-per-minute budget, answered with 429 + `Retry-After` when
  exceeded (OpenAI also `retry-after-ms`; Gemini a `RetryInfo` detail). Each is a token bucket
  refilled continuously at limit/60 per second, holding `burst_s` seconds of budget (60 by
  default: one minute, as OpenAI's limiter). A request is admitted or refused when it arrives,
  before its latency, and debits the bucket with its whole token count at once. OpenAI sends
  `x-ratelimit-limit|remaining|reset-requests|tokens` on every response after the key check
  (200, 4xx and 429): the state of the buckets just after this request's admission, the reset
  as OpenAI writes durations ("6m0s", "1.5s", "20ms") = time until the bucket is full again;
- a fixed latency per admitted request (a 429 is answered at once), and optionally a random
  transit time before admission (`jitter_s`), so that concurrent requests arrive reordered;
- scripted faults for the next requests: an HTTP status (5xx...), a hang, a malformed body, a
  429; and a poison marker: a request containing an input with it is rejected with a 400
  (the whole request, as the real APIs do);
- counters: requests, tokens accepted, 429s, inputs, batch sizes, input types, dimensions;
- `leak_key`: error texts quote the key the request presented, as real providers and proxies
  do (OpenAI's 401 quotes it, partly masked), to prove the service scrubs what it relays.

Vectors are deterministic: the local lexical model (shared words -> higher cosine) of the text,
prefixed with "query " for query input types, so a test can tell which input type was sent
(`expected()` gives the exact vector).

Tokens are counted with the fake's own rule (word pieces of up to 4 characters), close to but
not the same as the client's estimate, as with a real tokenizer.

`FakeCompatible` is an OpenAI-compatible server (vLLM, Text Embeddings Inference, Ollama): its
own model names and sizes, no rate-limit headers, a maximum batch size answered like TEI (413
"batch size 64 > maximum allowed batch size 32") and a maximum of concurrent requests beyond
which it answers 429 "Model is overloaded" without Retry-After (TEI's `max_concurrent_requests`).

Error messages follow those the APIs are seen to return (GitHub issue threads quoting them):
OpenAI `max_tokens_per_request` and `Invalid 'input[i]': maximum input length`; Voyage
"max allowed tokens per submitted batch"; Gemini "at most 100 requests can be in one batch"
and `API_KEY_INVALID` on a 400.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import math
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from aiohttp import web
from embedd_server.domain import catalog
from embedd_server.providers.local import lexical_vector

from tests.fakes.openai_batches import FakeBatches

_PIECE = re.compile(r"\w+|[^\w\s]")


def fake_tokens(text: str) -> int:
    return max(1, sum(-(-len(p) // 4) for p in _PIECE.findall(text)))


class _Bucket:
    def __init__(self, per_minute: float, burst_s: float) -> None:
        self.rate = per_minute / 60
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self.at = time.monotonic()

    def refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now

    def wait_for(self, n: float) -> float:
        self.refill()
        return 0.0 if self.level >= n else (n - self.level) / self.rate


def go_duration(seconds: float) -> str:
    """A duration as Go prints it, which is how OpenAI writes `x-ratelimit-reset-*`: "20ms",
    "1.5s", "6m0s", "1h0m0s" (milliseconds are the finest unit used here)."""
    ms = max(0, round(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    return (f"{hours}h{minutes}m" if hours else f"{minutes}m" if minutes else "") + f"{secs}s"


@dataclass
class Fault:
    kind: str  # "status" | "hang" | "malformed" | "throttle"
    status: int = 500
    retry_after: float = 1.0


@dataclass
class Counters:
    requests: int = 0  # every request that reached the handler
    ok: int = 0
    tokens: int = 0  # tokens of accepted requests
    throttled: int = 0  # 429s
    inputs: int = 0  # inputs of accepted requests
    batch_sizes: list[int] = field(default_factory=list)
    input_types: collections.Counter[str] = field(default_factory=collections.Counter)
    dimensions: collections.Counter[int] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    request_times: list[float] = field(default_factory=list)  # monotonic arrival times
    last_ok_at: float = 0.0  # monotonic time of the last accepted request's answer
    max_in_flight: int = 0  # most requests being served at once


class FakeProvider:
    kind: ClassVar[str]
    max_inputs: int

    def __init__(
        self,
        *,
        api_key: str | None = "test-key",
        rpm: float | None = None,
        tpm: float | None = None,
        burst_s: float = 60.0,
        latency_s: float = 0.0,
        jitter_s: float = 0.0,
        prefix: str = "/v1",
        max_request_tokens: int | None = None,
        max_input_tokens: int | None = None,
        hang_s: float = 30.0,
        flaky_share: float = 0.0,
        seed: int = 7,
        leak_key: bool = False,
    ) -> None:
        self.api_key = api_key  # None: a server that serves anyone
        self.leak_key = leak_key
        self.presented = ""  # the key of the request being answered
        # A share of requests answered 429 (Retry-After 0.2 s) or 500, at random (seeded).
        self.flaky_share = flaky_share
        self._rng = random.Random(seed)
        self.latency_s = latency_s
        # Up to this much transit before a request reaches the limiter (seeded): concurrent
        # requests arrive in another order than they were sent, as over a real network.
        self.jitter_s = jitter_s
        self.prefix = prefix.rstrip("/")
        self.max_request_tokens = max_request_tokens
        self.max_input_tokens = max_input_tokens
        self.hang_s = hang_s
        self.poison: str | None = None
        self.faults: collections.deque[Fault] = collections.deque()
        self.counters = Counters()
        self.rpm, self.tpm = rpm, tpm
        self._requests = _Bucket(rpm, burst_s) if rpm else None
        self._tokens = _Bucket(tpm, burst_s) if tpm else None
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.base_url = ""

    # -- control -------------------------------------------------------------------------------

    def inject(self, kind: str, times: int = 1, *, status: int = 500, retry_after: float = 1.0) -> None:
        for _ in range(times):
            self.faults.append(Fault(kind, status, retry_after))

    def reset_counters(self) -> None:
        self.counters = Counters()

    async def start(self) -> str:
        """Serves on a free port; after `stop()`, again on the same one (the provider is back)."""
        self._closing.clear()
        app = web.Application(client_max_size=64 * 1024**2)
        self.routes(app)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{self.port}{self.prefix}"
        return self.base_url

    async def stop(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeProvider:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def expected(self, text: str, input_type: str | None, dimensions: int) -> np.ndarray[Any, Any]:
        """The vector this fake returns for `text` (normalised)."""
        return lexical_vector(("query " if input_type == "query" else "") + text, dimensions)

    # -- per provider --------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def error(self, status: int, message: str, **extra: Any) -> web.Response:
        raise NotImplementedError

    def throttle_response(self, wait: float, what: str) -> web.Response:
        headers = {"Retry-After": str(max(1, math.ceil(wait)))}
        response = self.error(429, f"Rate limit exceeded on {what}. Please try again in {wait:.3f}s.")
        response.headers.update(headers)
        return response

    def rate_headers(self) -> dict[str, str]:
        return {}

    # -- shared request pipeline ---------------------------------------------------------------

    async def admit(self, key: str | None, texts: list[str]) -> web.Response | dict[str, str]:
        """Faults, auth and budgets, then the latency: the rate-limit headers to answer with
        when the request may be served, else the refusal."""
        if self.jitter_s:
            await asyncio.sleep(self._rng.uniform(0, self.jitter_s))
        c = self.counters
        c.requests += 1
        c.request_times.append(time.monotonic())
        self.presented = key or ""
        if self.faults:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            fault = self.faults.popleft()
            if fault.kind == "hang":
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), timeout=self.hang_s)
                return self.count(self.error(504, "deadline exceeded"))
            if fault.kind == "malformed":
                return self.count(
                    web.Response(status=200, text='{"data": [', content_type="application/json")
                )
            if fault.kind == "throttle":
                c.throttled += 1
                return self.count(self.throttle_response(fault.retry_after, "requests"))
            return self.count(self.error(fault.status, "The server had an error processing your request."))
        if self.flaky_share and self._rng.random() < self.flaky_share:
            if self._rng.random() < 0.5:
                c.throttled += 1
                return self.count(self.throttle_response(0.2, "requests per min (RPM)"))
            return self.count(self.error(500, "The server had an error processing your request."))
        if self.api_key is not None and key != self.api_key:
            return self.count(self.bad_key())
        tokens = sum(fake_tokens(t) for t in texts)
        waits = []
        if self._requests is not None:
            waits.append((self._requests.wait_for(1), "requests per min (RPM)"))
        if self._tokens is not None:
            waits.append((self._tokens.wait_for(tokens), "tokens per min (TPM)"))
        wait, what = max(waits, default=(0.0, ""))
        if wait > 0:
            c.throttled += 1
            return self.count(self.throttle_response(wait, what))
        if self._requests is not None:
            self._requests.level -= 1
        if self._tokens is not None:
            self._tokens.level -= tokens
        headers = self.rate_headers()
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return headers

    def bad_key(self) -> web.Response:
        return self.error(401, "Incorrect API key provided.")

    def leaked(self, message: str) -> str:
        return f"{message} (rejected for key {self.presented})" if self.leak_key else message

    def accept(self, texts: list[str], input_type: str | None, dims: int) -> int:
        c = self.counters
        tokens = sum(fake_tokens(t) for t in texts)
        c.ok += 1
        c.tokens += tokens
        c.inputs += len(texts)
        c.batch_sizes.append(len(texts))
        c.input_types[str(input_type)] += len(texts)
        c.dimensions[dims] += 1
        c.last_ok_at = time.monotonic()
        return tokens

    def count(self, response: web.Response) -> web.Response:
        self.counters.statuses[response.status] += 1
        return response

    def vectors(self, texts: list[str], input_type: str | None, dims: int) -> list[np.ndarray[Any, Any]]:
        return [self.expected(t, input_type, dims) for t in texts]


def _b64(vector: np.ndarray[Any, Any]) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def _native(provider: str, model: str) -> catalog.ModelInfo | None:
    return catalog.find_model(provider, model)


class FakeOpenAI(FakeProvider):
    """`POST /v1/embeddings`, Bearer auth, `{"error": {...}}` errors, `x-ratelimit-*` headers;
    and the Files and Batch APIs (`batches`: tests/fakes/openai_batches.py), whose clock runs
    `batch_time_scale` times real time."""

    kind = "openai"
    max_inputs = 2048
    model_name = "text-embedding-3-small"  # as 429 messages name it

    def __init__(
        self,
        *,
        batch_durations: tuple[float, float, float] = (60.0, 600.0, 60.0),
        batch_window_s: float = 86_400.0,
        batch_time_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batches = FakeBatches(
            self, durations=batch_durations, window_s=batch_window_s, time_scale=batch_time_scale
        )

    def routes(self, app: web.Application) -> None:
        app.router.add_post(f"{self.prefix}/embeddings", self.handle)
        self.batches.routes(app, self.prefix)

    def error(self, status: int, message: str, **extra: Any) -> web.Response:
        err = {"message": message, "type": extra.pop("type", "invalid_request_error"), "param": None}
        err["code"] = None
        err.update(extra)
        return web.json_response({"error": err}, status=status)

    def throttle_response(self, wait: float, what: str) -> web.Response:
        bucket, limit = (self._tokens, self.tpm) if "TPM" in what else (self._requests, self.rpm)
        used = f" Limit {int(limit)}, Used {int(limit - bucket.level)}." if bucket and limit else ""
        response = self.error(
            429,
            f"Rate limit reached for {self.model_name} in organization org-fake on {what}:{used} "
            f"Please try again in {go_duration(wait)}.",
            type="tokens" if "TPM" in what else "requests",
            code="rate_limit_exceeded",
        )
        response.headers.update(
            {"Retry-After": str(max(1, math.ceil(wait))), "retry-after-ms": str(math.ceil(wait * 1000))}
        )
        response.headers.update(self.rate_headers())
        return response

    def bad_key(self) -> web.Response:
        shown = self.presented if self.leak_key else "sk-***"
        return self.error(
            401,
            f"Incorrect API key provided: {shown}. You can find your API key in your account.",
            code="invalid_api_key",
        )

    def rate_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, bucket, limit in (
            ("requests", self._requests, self.rpm),
            ("tokens", self._tokens, self.tpm),
        ):
            if bucket is None or limit is None:
                continue
            bucket.refill()
            headers[f"x-ratelimit-limit-{name}"] = str(int(limit))
            headers[f"x-ratelimit-remaining-{name}"] = str(max(0, int(bucket.level)))
            headers[f"x-ratelimit-reset-{name}"] = go_duration((bucket.capacity - bucket.level) / bucket.rate)
        return headers

    def model_info(self, model: str) -> catalog.ModelInfo | None:
        return _native("openai", model)

    def not_found(self, model: object) -> web.Response:
        return self.error(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )

    def too_many(self, count: int) -> web.Response:
        return self.error(
            400,
            f"Invalid 'input': array too long. Expected an array with maximum length {self.max_inputs}, "
            f"but got an array with length {count} instead.",
            param="input",
            code="array_above_max_length",
        )

    async def handle(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else None
        try:
            body = await request.json()
        except ValueError:
            return self.count(self.error(400, "We could not parse the JSON body of your request."))
        raw_input = body.get("input") if isinstance(body, dict) else None
        texts = [raw_input] if isinstance(raw_input, str) else raw_input
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return self.count(
                self.error(400, "'$.input' is invalid. Please check the API reference.", param="input")
            )
        admitted = await self.admit(key, texts)
        if isinstance(admitted, web.Response):
            return admitted
        response = self.serve(body, texts)
        response.headers.update(admitted)
        return self.count(response)

    def serve(self, body: dict[str, Any], texts: list[str]) -> web.Response:
        model = body.get("model")
        info = self.model_info(model) if isinstance(model, str) else None
        if info is None:
            return self.not_found(model)
        dims = body.get("dimensions")
        if dims is not None:
            if not info.reducible_to:
                return self.error(
                    400, "This model does not support specifying dimensions.", param="dimensions"
                )
            if not isinstance(dims, int) or not 1 <= dims <= info.dimensions:
                return self.error(400, f"Invalid 'dimensions': {dims}.", param="dimensions")
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            return self.error(400, f"Invalid 'encoding_format': {fmt!r}.", param="encoding_format")
        if len(texts) > self.max_inputs:
            return self.too_many(len(texts))
        per_input = self.max_input_tokens or 8192
        for i, text in enumerate(texts):
            if not text:
                return self.error(
                    400,
                    f"Invalid 'input[{i}]': string too short. Expected a string with minimum length 1, "
                    "but got an empty string instead.",
                    param=f"input[{i}]",
                )
            if fake_tokens(text) > per_input:
                return self.error(
                    400,
                    f"Invalid 'input[{i}]': maximum input length is {per_input} tokens.",
                    param=f"input[{i}]",
                )
        total = sum(fake_tokens(t) for t in texts)
        cap = self.max_request_tokens or 300_000
        if total > cap:
            return self.error(
                400,
                f"Requested {total} tokens, max {cap} tokens per request",
                type="max_tokens_per_request",
                code="max_tokens_per_request",
            )
        if self.poison and any(self.poison in t for t in texts):
            message = self.leaked("'$.input' is invalid. Please check the API reference.")
            return self.error(400, message, param="input")
        size = dims or info.dimensions
        tokens = self.accept(texts, None, size)
        data = [
            {"object": "embedding", "index": i, "embedding": _b64(v) if fmt == "base64" else v.tolist()}
            for i, v in enumerate(self.vectors(texts, None, size))
        ]
        payload = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return web.json_response(payload)


class FakeCompatible(FakeOpenAI):
    """An OpenAI-compatible embedding server (vLLM, TEI, Ollama): its own models (`models`:
    name -> dimensions), at most `max_batch` inputs per request (413 as TEI answers), at most
    `max_concurrency` requests served at once (429 "Model is overloaded", no Retry-After), no
    rate-limit headers. `api_key=None` serves anyone (servers run without a key)."""

    def __init__(
        self,
        *,
        models: dict[str, int],
        max_batch: int = 32,
        max_concurrency: int = 4,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(api_key=api_key, **kwargs)
        self.models = dict(models)
        self.max_inputs = max_batch
        self.max_concurrency = max_concurrency
        self._in_flight = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_post(f"{self.prefix}/embeddings", self.handle)  # no Files or Batch API

    def model_info(self, model: str) -> catalog.ModelInfo | None:
        dims = self.models.get(model)
        return catalog.ModelInfo("openai", model, dims) if dims else None

    def not_found(self, model: object) -> web.Response:
        return self.error(404, f"The model `{model}` does not exist.", code=404)

    def too_many(self, count: int) -> web.Response:
        message = f"batch size {count} > maximum allowed batch size {self.max_inputs}"
        return web.json_response({"message": message, "code": 413, "type": "Validation"}, status=413)

    async def handle(self, request: web.Request) -> web.Response:
        self._in_flight += 1
        try:
            self.counters.max_in_flight = max(self.counters.max_in_flight, self._in_flight)
            if self._in_flight > self.max_concurrency:
                self.counters.requests += 1
                self.counters.throttled += 1
                return self.count(
                    web.json_response(
                        {"message": "Model is overloaded", "code": 429, "type": "Overloaded"}, status=429
                    )
                )
            return await super().handle(request)
        finally:
            self._in_flight -= 1


class FakeVoyage(FakeProvider):
    """`POST /v1/embeddings`, Bearer auth, `{"detail": "..."}` errors."""

    kind = "voyage"
    max_inputs = 1000

    def routes(self, app: web.Application) -> None:
        app.router.add_post(f"{self.prefix}/embeddings", self.handle)

    def error(self, status: int, message: str, **extra: Any) -> web.Response:
        return web.json_response({"detail": message}, status=status)

    def bad_key(self) -> web.Response:
        return self.error(401, "Provided API key is invalid.")

    def expected(self, text: str, input_type: str | None, dimensions: int) -> np.ndarray[Any, Any]:
        prefix = {"query": "query ", "document": "document "}.get(str(input_type), "")
        return lexical_vector(prefix + text, dimensions)

    async def handle(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else None
        try:
            body = await request.json()
        except ValueError:
            return self.count(self.error(400, "Invalid JSON body."))
        raw_input = body.get("input") if isinstance(body, dict) else None
        texts = [raw_input] if isinstance(raw_input, str) else raw_input
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return self.count(self.error(422, "input: must be a string or a list of strings"))
        admitted = await self.admit(key, texts)
        if isinstance(admitted, web.Response):
            return admitted
        model = body.get("model")
        info = _native("voyage", model) if isinstance(model, str) else None
        if info is None:
            return self.count(self.error(400, f"Model {model} is not supported."))
        input_type = body.get("input_type")
        if input_type not in (None, "query", "document"):
            return self.count(self.error(400, "input_type must be one of: None, 'query', 'document'."))
        dims = body.get("output_dimension")
        if dims is not None and dims not in (info.dimensions, *info.reducible_to):
            return self.count(self.error(400, f"output_dimension {dims} is not supported by {model}."))
        fmt = body.get("encoding_format")
        if fmt not in (None, "base64"):
            return self.count(self.error(400, f"encoding_format {fmt!r} is not supported."))
        if len(texts) > self.max_inputs:
            return self.count(
                self.error(
                    400, f"The batch size limit is {self.max_inputs}. Your batch size is {len(texts)}."
                )
            )
        context = self.max_input_tokens or 32_000
        if body.get("truncation", True) is False and any(fake_tokens(t) > context for t in texts):
            return self.count(
                self.error(
                    400, f"Input exceeds the context length of {context} tokens and truncation is disabled."
                )
            )
        if any(not t for t in texts):
            return self.count(self.error(400, "Input texts cannot be empty strings."))
        total = sum(min(fake_tokens(t), context) for t in texts)
        cap = self.max_request_tokens or (
            120_000 if "large" in model or "code" in model else 1_000_000 if "lite" in model else 320_000
        )
        if total > cap:
            return self.count(
                self.error(
                    400,
                    f"Request to model '{model}' failed. The max allowed tokens per submitted batch is "
                    f"{cap}. Your batch has {total} tokens after truncation. Please lower the number of "
                    "tokens in the batch.",
                )
            )
        if self.poison and any(self.poison in t for t in texts):
            return self.count(self.error(400, "The request contains an invalid input."))
        size = dims or info.dimensions
        tokens = self.accept(texts, input_type, size)
        data = [
            {"object": "embedding", "embedding": _b64(v) if fmt == "base64" else v.tolist(), "index": i}
            for i, v in enumerate(self.vectors(texts, input_type, size))
        ]
        return self.count(
            web.json_response(
                {"object": "list", "data": data, "model": model, "usage": {"total_tokens": tokens}}
            )
        )


class FakeGemini(FakeProvider):
    """`POST /v1beta/models/{model}:batchEmbedContents`, `x-goog-api-key`, Google RPC errors."""

    kind = "gemini"
    max_inputs = 100
    _STATUS: ClassVar[dict[int, str]] = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        429: "RESOURCE_EXHAUSTED",
        500: "INTERNAL",
        503: "UNAVAILABLE",
        504: "DEADLINE_EXCEEDED",
    }

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("prefix", "/v1beta")
        super().__init__(**kwargs)

    def routes(self, app: web.Application) -> None:
        app.router.add_post(f"{self.prefix}/models/{{name}}", self.handle)

    def error(self, status: int, message: str, **extra: Any) -> web.Response:
        err: dict[str, Any] = {
            "code": status,
            "message": message,
            "status": self._STATUS.get(status, "UNKNOWN"),
        }
        if extra.get("details"):
            err["details"] = extra["details"]
        return web.json_response({"error": err}, status=status)

    def throttle_response(self, wait: float, what: str) -> web.Response:
        return self.error(
            429,
            f"Quota exceeded for metric: embed_content {what}.",
            details=[{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{wait:.3f}s"}],
        )

    def bad_key(self) -> web.Response:
        return self.error(
            400,
            "API key not valid. Please pass a valid API key.",
            details=[
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ],
        )

    def expected(self, text: str, input_type: str | None, dimensions: int) -> np.ndarray[Any, Any]:
        prefix = {"RETRIEVAL_QUERY": "query ", "query": "query "}.get(str(input_type), "")
        return lexical_vector(prefix + text, dimensions)

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not name.endswith(":batchEmbedContents"):
            return self.count(self.error(404, f"Method not found: {name}"))
        model = name.removesuffix(":batchEmbedContents")
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        try:
            body = await request.json()
            requests = body["requests"]
            texts = ["".join(p["text"] for p in r["content"]["parts"]) for r in requests]
        except (ValueError, KeyError, TypeError):
            return self.count(self.error(400, "Invalid JSON payload received."))
        admitted = await self.admit(key, texts)
        if isinstance(admitted, web.Response):
            return admitted
        info = _native("gemini", model)
        if info is None:
            return self.count(
                self.error(
                    404,
                    f"models/{model} is not found for API version v1beta, or is not "
                    "supported for batchEmbedContents.",
                )
            )
        if len(requests) > self.max_inputs:
            return self.count(
                self.error(
                    400,
                    f"* BatchEmbedContentsRequest.requests: at most {self.max_inputs} requests can be in "
                    "one batch\n",
                )
            )
        task_types = {r.get("taskType") for r in requests}
        dims_set = {r.get("outputDimensionality") for r in requests}
        if any(r.get("model") != f"models/{model}" for r in requests):
            return self.count(
                self.error(
                    400,
                    "* BatchEmbedContentsRequest.requests[0].model: the model must match the batch model\n",
                )
            )
        if (
            len(task_types) != 1
            or not task_types <= {None, "RETRIEVAL_DOCUMENT", "RETRIEVAL_QUERY", "SEMANTIC_SIMILARITY"}
            or len(dims_set) != 1
        ):
            return self.count(self.error(400, "Invalid value at 'requests[0].task_type'."))
        dims = dims_set.pop()
        if dims is not None and (not isinstance(dims, int) or not 1 <= dims <= info.dimensions):
            return self.count(self.error(400, f"outputDimensionality {dims} is out of range."))
        limit = self.max_input_tokens or 2048
        for text in texts:
            if fake_tokens(text) > limit:
                return self.count(
                    self.error(
                        400,
                        f"The input token count ({fake_tokens(text)}) exceeds the maximum number of tokens "
                        f"allowed ({limit}).",
                    )
                )
        if self.poison and any(self.poison in t for t in texts):
            return self.count(self.error(400, "Request contains an invalid argument."))
        size = dims or info.dimensions
        task = task_types.pop()
        self.accept(texts, task, size)
        # Shortened vectors are not normalised by the API (only the full 3072 are).
        scale = 1.0 if size == info.dimensions else 2.5
        embeddings = [{"values": (v * scale).tolist()} for v in self.vectors(texts, task, size)]
        return self.count(
            web.Response(text=json.dumps({"embeddings": embeddings}), content_type="application/json")
        )


FAKES: dict[str, type[FakeProvider]] = {"openai": FakeOpenAI, "gemini": FakeGemini, "voyage": FakeVoyage}

# The default model of each provider in tests: one with reducible dimensions.
MODELS = {"openai": "text-embedding-3-small", "gemini": "gemini-embedding-001", "voyage": "voyage-3.5"}
