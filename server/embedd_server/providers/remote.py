"""The part every HTTP embedding provider shares: batching, the request loop, splitting and
per-row failures. Subclasses (openai.py, gemini.py, voyage.py) supply only the wire format.

`embed(texts)`:
1. texts are truncated by the provider's documented rule (or left to the provider's own
   truncation), empty texts become per-row failures;
2. the chunk is split into requests within the provider's input count (or the server's, learned:
   `InputLimit`) and token caps (and about a second of the rate budget), which run concurrently
   under the shared `AdaptiveLimiter`;
3. each request retries 429 (after the limiter's pause, honouring Retry-After), 5xx, timeouts
   and malformed bodies with backoff and jitter;
4. a 400 (or 413) for a too-large request splits it in two and lowers the learned input count;
   a 400 that names an input, or any other 400,
   isolates the bad input by bisection; a single over-long input is cut in half and retried
   (three times), then reported in `failed` — its neighbours are embedded normally;
5. 401/403 raise `ProviderError("bad_key")` at once; exhausted retries raise "unreachable";
   a request throttled for longer than the policy allows raises "quota".
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp
import numpy as np

from embedd_server import network_policy
from embedd_server.domain.redact import scrub
from embedd_server.providers.base import EmbedResult, InputType, ProviderError, Vectors, normalise
from embedd_server.providers.batching import InputLimit, estimate_tokens, plan_batches, truncate_to_tokens
from embedd_server.providers.http import DEFAULT_POLICY, RetryPolicy, backoff_delay, parse_retry_after
from embedd_server.providers.limiter import AdaptiveLimiter, Ticket

log = logging.getLogger(__name__)


class DimensionsMismatch(ProviderError):
    """The server's vectors are not of the size the model is declared (or known) to have."""

    def __init__(self, message: str, *, returned: int, expected: int) -> None:
        super().__init__("provider_error", message)
        self.returned = returned
        self.expected = expected


class Rejection(enum.Enum):
    TOO_LARGE = "too_large"  # the request as a whole is over a limit: split it
    INPUT_TOO_LONG = "input_too_long"  # one input is over the model's limit: shorten it
    BAD_INPUT = "bad_input"  # some input is unacceptable: isolate it
    BAD_KEY = "bad_key"
    FATAL = "fatal"  # model, dimensions or another setting is wrong: every request would fail


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: Rejection
    message: str
    index: int | None = None  # the input the provider named, within the request
    limit: int | None = None  # TOO_LARGE: the most inputs per request the provider stated


@dataclass(slots=True)
class Request:
    url: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass(slots=True)
class _Call:
    """State of one `embed` call."""

    out: Vectors
    input_type: InputType
    failed: dict[int, str] = field(default_factory=dict)
    tokens: int = 0
    requests: int = 0


_MAX_SHORTENINGS = 3


class RemoteEmbedder:
    provider: ClassVar[str]
    default_base_url: ClassVar[str]
    max_inputs: ClassVar[int]
    # Per request, in the provider's tokens; a safety factor applies to the estimate.
    max_request_tokens: ClassVar[int]
    # Inputs longer than this are truncated client-side; None = the provider truncates.
    max_input_tokens: ClassVar[int | None] = None
    estimate_safety: ClassVar[float] = 0.85

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_key: str,
        model: str,
        dimensions: int,
        native_dimensions: int,
        reducible: bool,
        base_url: str | None = None,
        limiter: AdaptiveLimiter | None = None,
        input_limit: InputLimit | None = None,
        policy: RetryPolicy = DEFAULT_POLICY,
        remember: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._session = session
        self._api_key = api_key
        self._model = model
        self._dimensions = dimensions or native_dimensions
        self._native = native_dimensions
        self._reducible = reducible
        self._base_url = (base_url or self.default_base_url).rstrip("/")
        self.limiter = limiter or AdaptiveLimiter()
        self.inputs = input_limit or InputLimit(self.max_inputs, self.max_inputs, fixed=True)
        self._policy = policy
        # Persists what the limiter and the input limit learned (the registry's), after a call.
        self._remember = remember

    @property
    def model(self) -> str:
        return self._model

    @property
    def dimensions(self) -> int:
        return self._dimensions

    async def aclose(self) -> None:
        return None  # the session belongs to the composition root

    # -- wire format, per provider -----------------------------------------------------------

    def build_request(self, texts: Sequence[str], input_type: InputType) -> Request:
        raise NotImplementedError

    def parse_response(self, payload: Any, count: int) -> tuple[Vectors, int | None]:
        """(vectors, tokens the provider reports or None); raises ValueError/KeyError/TypeError
        on a malformed body."""
        raise NotImplementedError

    def classify(self, status: int, payload: Any) -> Verdict:
        raise NotImplementedError

    def is_quota_exhausted(self, payload: Any) -> bool:
        """A 429 that waiting will not fix (billing), where the provider says so."""
        return False

    def retry_after(self, payload: Any, headers: Mapping[str, str]) -> float | None:
        """Seconds the provider asks to wait after a 429."""
        return parse_retry_after(headers)

    def adapt(self, verdict: Verdict) -> bool:
        """A chance to change a request setting after a 400 (True: retry as is)."""
        return False

    # -- embed -------------------------------------------------------------------------------

    def prepare(self, text: str) -> str:
        if self.max_input_tokens is not None:
            return truncate_to_tokens(text, int(self.max_input_tokens * self.estimate_safety))
        return text

    def input_tokens(self, text: str) -> int:
        n = estimate_tokens(text)
        return n if self.max_input_tokens is None else min(n, self.max_input_tokens)

    async def embed(self, texts: Sequence[str], input_type: InputType) -> EmbedResult:
        """See the module doc. Every provider message is scrubbed of the key (and of anything
        that looks like a credential) here, where it enters the service."""
        try:
            result = await self._embed(texts, input_type)
        except ProviderError as err:
            raise ProviderError(err.code, self._scrub(err.message)) from None
        result.failed = {i: self._scrub(m) for i, m in result.failed.items()}
        return result

    def _scrub(self, message: str) -> str:
        return scrub(message, (self._api_key,))

    async def _embed(self, texts: Sequence[str], input_type: InputType) -> EmbedResult:
        call = _Call(np.zeros((len(texts), self._dimensions), dtype=np.float32), input_type)
        indices: list[int] = []
        prepared: list[str] = []
        for i, text in enumerate(texts):
            if not text or not text.strip():
                call.failed[i] = "empty text: nothing to embed"
                continue
            indices.append(i)
            prepared.append(self.prepare(text))
        tokens = [self.input_tokens(t) for t in prepared]
        cap = min(self.max_request_tokens * self.estimate_safety, self.limiter.request_token_cap())
        per_request = min(self.max_inputs, self.inputs.value)
        ranges = plan_batches(tokens, per_request, max(1, int(cap / max(self.limiter.charge(1), 1e-9))))
        try:
            async with asyncio.TaskGroup() as group:
                for start, end in ranges:
                    group.create_task(self._run(call, indices[start:end], prepared[start:end], 0))
        except* ProviderError as errors:
            raise errors.exceptions[0] from None
        if self._remember is not None:
            await self._remember()
        return EmbedResult(normalise(call.out), call.failed, tokens=call.tokens, requests=call.requests)

    async def _run(self, call: _Call, idx: list[int], texts: list[str], shortened: int) -> None:
        result = await self._request(call, texts)
        if not isinstance(result, Verdict):
            call.out[idx] = result
            return
        verdict = result
        if verdict.kind is Rejection.TOO_LARGE:
            self.inputs.on_too_large(len(idx), verdict.limit)
            if len(idx) > (size := self.inputs.value):  # more inputs than the server takes
                await asyncio.gather(
                    *(
                        self._run(call, idx[i : i + size], texts[i : i + size], shortened)
                        for i in range(0, len(idx), size)
                    )
                )
                return
        if len(idx) == 1:
            too_long = verdict.kind in (Rejection.INPUT_TOO_LONG, Rejection.TOO_LARGE)
            if too_long and shortened < _MAX_SHORTENINGS:
                text = texts[0][: max(1, len(texts[0]) // 2)]
                await self._run(call, idx, [text], shortened + 1)
            else:
                call.failed[idx[0]] = verdict.message
            return
        if verdict.index is not None and 0 <= verdict.index < len(idx):
            k = verdict.index
            rest_idx, rest_texts = idx[:k] + idx[k + 1 :], texts[:k] + texts[k + 1 :]
            await asyncio.gather(
                self._run(call, [idx[k]], [texts[k]], shortened),
                self._run(call, rest_idx, rest_texts, shortened),
            )
            return
        half = len(idx) // 2
        await asyncio.gather(
            self._run(call, idx[:half], texts[:half], shortened),
            self._run(call, idx[half:], texts[half:], shortened),
        )

    async def _request(self, call: _Call, texts: list[str]) -> Vectors | Verdict:
        """One provider request with retries: vectors, or the provider's verdict on a 4xx."""
        estimate = sum(self.input_tokens(t) for t in texts)
        attempt, throttled_for = 0, 0.0
        while True:
            request = self.build_request(texts, call.input_type)
            ticket = await self.limiter.acquire(estimate)
            if len(texts) > self.inputs.value:
                # The server's batch size was learned while this request waited: split it unsent.
                self.limiter.release(ticket)
                return Verdict(Rejection.TOO_LARGE, f"more than {self.inputs.value} inputs per request")
            try:
                sent = await self._send(request)
            finally:
                self.limiter.release(ticket)
            if isinstance(sent, BaseException):
                if network_policy.denied(sent):
                    raise ProviderError(
                        network_policy.REASON,
                        f"{self.provider}: {network_policy.NetworkPolicyDenied(self._base_url)}",
                    )
                last = f"{self.provider} at {self._base_url} is unreachable: {_describe(sent)}"
                self.limiter.on_failure()
            else:
                status, headers, raw = sent
                call.requests += 1
                payload = _json(raw)
                if status == 200:
                    try:
                        vectors, used = self.parse_response(payload, len(texts))
                    except (ValueError, KeyError, TypeError, IndexError) as exc:
                        last = f"{self.provider} sent a malformed response body ({exc})"
                    else:
                        self.limiter.on_success(ticket, used, headers)
                        call.tokens += used if used is not None else estimate
                        return self._fit(vectors)
                elif status == 429:
                    throttled_for += self._throttled(ticket, payload, raw, headers, throttled_for)
                    if not self.limiter.fits(ticket):
                        return Verdict(Rejection.TOO_LARGE, f"larger than {self.provider}'s token budget")
                    continue  # the limiter holds the retry until the pause is over
                elif status in (408, 409) or status >= 500:
                    self.limiter.on_failure()
                    last = (
                        f"{self.provider} kept failing; last answer HTTP {status}: {_message(payload, raw)}"
                    )
                else:
                    verdict = self._rejected(status, payload, raw)
                    if verdict is None:
                        continue
                    return verdict
            attempt += 1
            if attempt >= self._policy.max_attempts:
                raise ProviderError("unreachable", last)
            await asyncio.sleep(backoff_delay(attempt, self._policy))

    def _throttled(
        self, ticket: Ticket, payload: Any, raw: bytes, headers: Mapping[str, str], so_far: float
    ) -> float:
        """A 429: tell the limiter (which pauses everyone); fail when waiting will not help."""
        if self.is_quota_exhausted(payload):
            raise ProviderError("quota", f"{self.provider}: {_message(payload, raw)}")
        pause = self.limiter.on_throttle(
            ticket, self.retry_after(payload, headers), self._policy.default_throttle_s, headers
        )
        if so_far + pause > self._policy.max_throttle_wait_s:
            raise ProviderError(
                "quota",
                f"{self.provider} kept answering 429 (rate limit) for {so_far + pause:.0f} s: "
                f"{_message(payload, raw)}",
            )
        return pause

    def _rejected(self, status: int, payload: Any, raw: bytes) -> Verdict | None:
        """A 4xx other than 429: raise for key and setting errors, None to retry after an
        adaptation, else the verdict for the caller to split or fail rows."""
        verdict = (
            Verdict(Rejection.BAD_KEY, _message(payload, raw))
            if status in (401, 403)
            else self.classify(status, payload)
        )
        if verdict.kind is Rejection.BAD_KEY:
            raise ProviderError("bad_key", f"{self.provider} rejected the API key: {verdict.message}")
        if self.adapt(verdict):
            return None
        if verdict.kind is Rejection.FATAL:
            raise ProviderError("provider_error", f"{self.provider}: {verdict.message}")
        return verdict

    async def _send(self, request: Request) -> tuple[int, Mapping[str, str], bytes] | BaseException:
        try:
            async with self._session.post(
                request.url,
                json=request.body,
                headers=request.headers,
                timeout=aiohttp.ClientTimeout(total=self._policy.request_timeout_s),
            ) as response:
                return response.status, response.headers, await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            return exc

    def _fit(self, vectors: Vectors) -> Vectors:
        """Vectors of the requested size: a reducible (Matryoshka) model's longer vectors are cut
        (then renormalised by the caller); anything else is a provider error."""
        have = vectors.shape[1] if vectors.ndim == 2 else -1
        if have == self._dimensions:
            return vectors
        if have > self._dimensions and self._reducible:
            return np.ascontiguousarray(vectors[:, : self._dimensions])
        raise DimensionsMismatch(
            f"{self.provider} returned {have}-dimension vectors for {self._model}, "
            f"expected {self._dimensions}",
            returned=have,
            expected=self._dimensions,
        )


def decode_float32(value: Any) -> Vectors:
    """One embedding as float32, from a JSON list or base64 of little-endian float32."""
    if isinstance(value, str):
        import base64  # noqa: PLC0415

        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
    if not isinstance(value, list):
        raise TypeError(f"embedding is a {type(value).__name__}")
    return np.asarray(value, dtype=np.float32)


def stack(rows: Sequence[Vectors], count: int) -> Vectors:
    if len(rows) != count:
        raise ValueError(f"{len(rows)} embeddings for {count} inputs")
    if count and len({r.shape[0] for r in rows}) != 1:
        raise ValueError("embeddings of different sizes")
    return np.vstack(rows).astype(np.float32, copy=False) if count else np.zeros((0, 0), np.float32)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def _message(payload: Any, raw: bytes) -> str:
    if isinstance(payload, Mapping):
        err = payload.get("error")
        if isinstance(err, Mapping) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str) and err:  # Text Embeddings Inference's native routes
            return err
        for key in ("detail", "message"):  # Voyage; OpenAI-compatible servers (TEI, vLLM)
            if payload.get(key):
                return str(payload[key])
    return raw[:200].decode(errors="replace") or "(empty body)"


def error_message(payload: Any) -> str:
    return _message(payload, json.dumps(payload).encode() if payload is not None else b"")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{exc.__class__.__name__}: {exc}"


def parse_embedding_list(payload: Any, count: int, *token_keys: str) -> tuple[Vectors, int | None]:
    """`{"data": [{"index", "embedding"}], "usage": {...}}` (OpenAI and Voyage): vectors in
    input order, and the token count from the first `token_keys` present in `usage`."""
    data = sorted(payload["data"], key=lambda d: int(d["index"]))
    if [int(d["index"]) for d in data] != list(range(count)):
        raise ValueError("response indexes do not match the inputs")
    vectors = stack([decode_float32(d["embedding"]) for d in data], count)
    usage = payload.get("usage") or {}
    tokens = next((usage[k] for k in token_keys if usage.get(k) is not None), None)
    return vectors, int(tokens) if tokens is not None else None
