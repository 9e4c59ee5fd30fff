"""Builds `Embedder`s from provider records, once per (record, model, dimensions).

Embedders are cached so that all work against one provider key shares one rate limiter and
one concurrency window (per-provider, per-key isolation: a failing provider never stalls
another). Embedders of the same record and model (different dimensions) share one limiter,
because the provider's rate limit is per key and model. The HTTP session is the composition
root's, shared by every remote client.

A record with a base URL is another server (an OpenAI-compatible one, a proxy) whose limits
are unknown: it starts modestly (one request in flight, then AIMD; the API's maximum inputs
per request, lowered on refusal by `InputLimit`) unless the record sets `max_concurrency` or
`max_inputs_per_request`, and what it learns is saved with the record (`save_learned`) for
the next process to start from.

A remote embedder holds its record's decrypted API key, so the cache forgets: a record's
embedders when it is deleted here (`evict`) or changed (its sealed key or base URL differ),
every entry after `ttl_s` (how long a provider deleted on another replica keeps its key in
this one), and the least recently used beyond `max_embedders`. Forgotten embedders are
dropped, not closed: a running job may still hold one, and closing frees nothing (the
session is the root's). What a record's servers learned (limiters, input limits) survives
a rebuild, until the record is evicted.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from embedd_server.domain import catalog
from embedd_server.domain.models import EmbeddingProvider, LearnedLimits
from embedd_server.providers.base import Embedder, InputType, ProviderError
from embedd_server.providers.batching import InputLimit
from embedd_server.providers.gemini import GeminiEmbedder
from embedd_server.providers.http import DEFAULT_POLICY, TEST_POLICY, RetryPolicy
from embedd_server.providers.limiter import AdaptiveLimiter, RateLimits
from embedd_server.providers.local import LEXICAL_MODEL, MINILM_MODEL, LexicalEmbedder, MiniLMEmbedder
from embedd_server.providers.openai import OpenAIEmbedder
from embedd_server.providers.openai_batch import EmbeddingRequests, OpenAIBatchAPI
from embedd_server.providers.remote import DimensionsMismatch, RemoteEmbedder
from embedd_server.providers.voyage import VoyageEmbedder
from embedd_server.secretbox import SecretBox, SecretBoxError

log = logging.getLogger(__name__)

_CLIENTS: dict[str, type[RemoteEmbedder]] = {
    "openai": OpenAIEmbedder,
    "gemini": GeminiEmbedder,
    "voyage": VoyageEmbedder,
}
_DEFAULT_MAX_WINDOW = 32.0

SaveLearned = Callable[[str, LearnedLimits], Awaitable[None]]


def has_batch_api(provider: str) -> bool:
    """Whether the service can fill through this provider's batch API (docs/batch.md): OpenAI's
    Batch API (also at a base URL that serves it). Gemini's batch mode is left out."""
    return provider == "openai"


def max_inputs_per_request(provider: str) -> int | None:
    """The provider API's own maximum inputs per request; None for the local provider."""
    client = _CLIENTS.get(provider)
    return client.max_inputs if client else None


def default_limits(provider: str, model: str) -> RateLimits:
    """Published lowest-paid-tier limits (docs/providers.md): the starting point until the
    provider's `x-ratelimit-*` headers say what the key really has; 429s cut the pace."""
    if provider == "openai":
        return RateLimits(rpm=3_000, tpm=1_000_000)
    if provider == "voyage":
        if "lite" in model:
            return RateLimits(rpm=2_000, tpm=16_000_000)
        if "large" in model or "code" in model:
            return RateLimits(rpm=2_000, tpm=3_000_000)
        return RateLimits(rpm=2_000, tpm=8_000_000)
    return RateLimits()  # Gemini: per-project quotas, unknown here; found by AIMD


@dataclass(frozen=True, slots=True)
class ProviderTestResult:
    latency_ms: int
    failure: str | None = None  # "bad_key" | "unreachable" | "provider_error" | "network_policy_denied"
    message: str | None = None


@dataclass(slots=True)
class _Server:
    """What the embedders of one provider record and model share."""

    limiter: AdaptiveLimiter
    inputs: InputLimit
    saved: LearnedLimits  # what the record holds


class EmbedderRegistry:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        secrets: SecretBox,
        policy: RetryPolicy = DEFAULT_POLICY,
        *,
        save_learned: SaveLearned | None = None,
        ttl_s: float = 300.0,
        max_embedders: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._secrets = secrets
        self._policy = policy
        self._save_learned = save_learned
        self._ttl = ttl_s
        self._max = max_embedders
        self._clock = clock
        # (record id, model, dims) -> (expires at, the record's sealed key and URL, embedder)
        self._cache: collections.OrderedDict[
            tuple[str, str, int], tuple[float, tuple[bytes | None, str | None], Embedder]
        ] = collections.OrderedDict()
        self._servers: dict[tuple[str, str], _Server] = {}

    def get(self, record: EmbeddingProvider, model: str, dimensions: int) -> Embedder:
        key = (record.id, model, dimensions)
        version = (record.api_key_enc, record.base_url)
        now = self._clock()
        entry = self._cache.get(key)
        if entry is not None and entry[0] > now and entry[1] == version:
            self._cache.move_to_end(key)
            return entry[2]
        if entry is not None and entry[1] != version:
            self.evict(record.id)  # the record changed: its old key goes
        embedder = self._build(record, model, dimensions)
        self._cache[key] = (now + self._ttl, version, embedder)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return embedder

    def evict(self, provider_id: str) -> None:
        """Forgets a provider record's embedders (and the decrypted key they hold) and what its
        servers learned."""
        for key in [k for k in self._cache if k[0] == provider_id]:
            del self._cache[key]
        for server_key in [k for k in self._servers if k[0] == provider_id]:
            del self._servers[server_key]

    def cached(self, provider_id: str) -> int:
        """How many embedders of the record are cached (what tests of forgetting look at)."""
        return sum(1 for k in self._cache if k[0] == provider_id)

    def _api_key(self, record: EmbeddingProvider) -> str:
        if not record.api_key_enc:
            if catalog.serves_own_models(record.provider, record.base_url):
                return ""  # a compatible server without authentication (vLLM, TEI, Ollama)
            raise ProviderError("bad_key", f"the {record.provider} provider record has no API key")
        try:
            return self._secrets.decrypt(record.api_key_enc, bound_to=record.id)
        except SecretBoxError as exc:
            raise ProviderError(
                "bad_key", "the stored API key cannot be decrypted with this server's secret key"
            ) from exc

    def _server(self, record: EmbeddingProvider, model: str, max_inputs: int) -> _Server:
        key = (record.id, model)
        if key not in self._servers:
            self._servers[key] = _new_server(record, model, max_inputs)
        return self._servers[key]

    def _remember(self, record: EmbeddingProvider, server: _Server) -> Callable[[], Awaitable[None]] | None:
        """After each embed call: save what changed in what was learned about an unknown server."""
        save = self._save_learned
        if save is None or not record.base_url:
            return None

        async def remember() -> None:
            window = server.limiter.learned_window if record.max_concurrency is None else None
            learned = LearnedLimits(
                server.inputs.learned or server.saved.max_inputs, window or server.saved.concurrency
            )
            if learned == server.saved:
                return
            server.saved = learned
            try:
                await save(record.id, learned)
            except Exception:  # remembering is an optimisation: it never fails an embed call
                log.warning("could not save the learned limits of provider %s", record.id, exc_info=True)

        return remember

    def _build(
        self,
        record: EmbeddingProvider,
        model: str,
        dimensions: int,
        *,
        policy: RetryPolicy | None = None,
        limiter: AdaptiveLimiter | None = None,
    ) -> Embedder:
        if record.provider == "local":
            if model == LEXICAL_MODEL:
                return LexicalEmbedder(dimensions or 384)
            if model == MINILM_MODEL:
                return MiniLMEmbedder()
        client = _CLIENTS.get(record.provider)
        info = catalog.find_model(record.provider, model)
        if info is None and catalog.serves_own_models(record.provider, record.base_url):
            # A compatible server's own model: the size declared by the table or the record.
            declared = dimensions or record.declared_dimensions(model)
            if declared:
                info = catalog.ModelInfo(record.provider, model, declared)
        if client is None or info is None:
            raise ProviderError(
                "provider_error", f"provider {record.provider!r} has no model {model!r} in the catalog"
            )
        api_key = self._api_key(record)
        server = self._server(record, model, client.max_inputs)
        return client(
            self._session,
            api_key=api_key,
            model=model,
            dimensions=dimensions or info.dimensions,
            native_dimensions=info.dimensions,
            reducible=bool(info.reducible_to),
            base_url=record.base_url,
            limiter=limiter or server.limiter,
            input_limit=server.inputs,
            policy=policy or self._policy,
            remember=None if limiter else self._remember(record, server),
        )

    def batch(
        self, record: EmbeddingProvider, model: str, dimensions: int, *, inputs_per_request: int
    ) -> tuple[OpenAIBatchAPI, EmbeddingRequests]:
        """The record's Batch API and the requests its input files hold for `model` (docs/batch.md),
        or ProviderError when the provider has none."""
        if not has_batch_api(record.provider):
            raise ProviderError(
                "provider_error", f"provider {record.provider!r} has no batch API this service uses"
            )
        info = catalog.find_model(record.provider, model)
        declared = dimensions or record.declared_dimensions(model)
        if info is None and declared and catalog.serves_own_models(record.provider, record.base_url):
            info = catalog.ModelInfo(record.provider, model, declared)
        if info is None:
            raise ProviderError(
                "provider_error", f"provider {record.provider!r} has no model {model!r} in the catalog"
            )
        api = OpenAIBatchAPI(
            self._session,
            api_key=self._api_key(record),
            base_url=record.base_url or OpenAIEmbedder.default_base_url,
            policy=self._policy,
        )
        requests = EmbeddingRequests(
            model, dimensions or info.dimensions, bool(info.reducible_to), inputs_per_request
        )
        return api, requests

    async def test(self, record: EmbeddingProvider) -> ProviderTestResult:
        """One tiny real call with the record's default model, with a short retry policy and
        its own limiter (a test never waits behind a backfill's pacing)."""
        started = time.perf_counter()
        try:
            embedder = self._build(
                record, record.default_model, 0, policy=TEST_POLICY, limiter=AdaptiveLimiter()
            )
            result = await embedder.embed(["embedd connection test"], InputType.QUERY)
        except DimensionsMismatch as err:
            return ProviderTestResult(_ms(started), "provider_error", _mismatch(record, err))
        except ProviderError as err:
            known = ("bad_key", "unreachable", "network_policy_denied")
            code = err.code if err.code in known else "provider_error"
            return ProviderTestResult(_ms(started), code, err.message)
        if result.failed:
            return ProviderTestResult(_ms(started), "provider_error", result.failed[0])
        return ProviderTestResult(_ms(started))

    async def aclose(self) -> None:
        for _, _, embedder in self._cache.values():
            await embedder.aclose()
        self._cache.clear()
        self._servers.clear()


def _new_server(record: EmbeddingProvider, model: str, max_inputs: int) -> _Server:
    """The limiter and input limit of one record and model, from the record's settings, what
    was learned before, or the modest start of an unknown server."""
    unknown = bool(record.base_url)  # another server (Azure, vLLM, TEI...): limits unknown
    learned = record.learned if unknown else LearnedLimits()
    window = record.max_concurrency or learned.concurrency
    limiter = AdaptiveLimiter(
        RateLimits() if unknown else default_limits(record.provider, model),
        initial_window=window,
        max_window=record.max_concurrency or _DEFAULT_MAX_WINDOW,
    )
    if record.max_inputs_per_request:
        inputs = InputLimit(record.max_inputs_per_request, max_inputs, fixed=True)
    elif unknown:
        start = learned.max_inputs or max_inputs
        inputs = InputLimit(start, max_inputs, learned=learned.max_inputs is not None)
    else:
        inputs = InputLimit(max_inputs, max_inputs, fixed=True)
    return _Server(limiter, inputs, learned)


def _mismatch(record: EmbeddingProvider, err: DimensionsMismatch) -> str:
    if record.declared_dimensions(record.default_model) == err.expected:
        return (
            f"the server returned {err.returned}-dimension vectors for {record.default_model!r}, but this "
            f"embedding provider declares dimensions {err.expected}: create it again with dimensions "
            f"{err.returned}"
        )
    return err.message


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
