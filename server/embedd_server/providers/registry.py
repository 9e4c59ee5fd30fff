"""Builds `Embedder`s from provider records, once per (record, model, dimensions).

Embedders are cached so that all work against one provider key shares one rate limiter and
one concurrency window (per-provider, per-key isolation: a failing provider never stalls
another). Embedders of the same record and model (different dimensions) share one limiter,
because the provider's rate limit is per key and model. The HTTP session is the composition
root's, shared by every remote client.

A remote embedder holds its record's decrypted API key, so the cache forgets: a record's
embedders when it is deleted here (`evict`) or changed (its sealed key or base URL differ),
every entry after `ttl_s` (how long a provider deleted on another replica keeps its key in
this one), and the least recently used beyond `max_embedders`. Forgotten embedders are
dropped, not closed: a running job may still hold one, and closing frees nothing (the
session is the root's). Limiters outlive them, so pacing survives a rebuild.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from embedd_server.domain import catalog
from embedd_server.domain.models import EmbeddingProvider
from embedd_server.providers.base import Embedder, InputType, ProviderError
from embedd_server.providers.gemini import GeminiEmbedder
from embedd_server.providers.http import DEFAULT_POLICY, TEST_POLICY, RetryPolicy
from embedd_server.providers.limiter import AdaptiveLimiter, RateLimits
from embedd_server.providers.local import LEXICAL_MODEL, MINILM_MODEL, LexicalEmbedder, MiniLMEmbedder
from embedd_server.providers.openai import OpenAIEmbedder
from embedd_server.providers.remote import RemoteEmbedder
from embedd_server.providers.voyage import VoyageEmbedder
from embedd_server.secretbox import SecretBox, SecretBoxError

_CLIENTS: dict[str, type[RemoteEmbedder]] = {
    "openai": OpenAIEmbedder,
    "gemini": GeminiEmbedder,
    "voyage": VoyageEmbedder,
}


def default_limits(provider: str, model: str) -> RateLimits:
    """Published lowest-paid-tier limits (docs/facts.md, "Embedding provider limits"): the starting point.
    A higher tier is learned from OpenAI's `x-ratelimit-limit-*` headers; 429s cut the pace."""
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


class EmbedderRegistry:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        secrets: SecretBox,
        policy: RetryPolicy = DEFAULT_POLICY,
        *,
        ttl_s: float = 300.0,
        max_embedders: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._secrets = secrets
        self._policy = policy
        self._ttl = ttl_s
        self._max = max_embedders
        self._clock = clock
        # (record id, model, dims) -> (expires at, the record's sealed key and URL, embedder)
        self._cache: collections.OrderedDict[
            tuple[str, str, int], tuple[float, tuple[bytes | None, str | None], Embedder]
        ] = collections.OrderedDict()
        self._limiters: dict[tuple[str, str], AdaptiveLimiter] = {}

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
        """Forgets a provider record's embedders (and the decrypted key they hold) and limiters."""
        for key in [k for k in self._cache if k[0] == provider_id]:
            del self._cache[key]
        for limiter_key in [k for k in self._limiters if k[0] == provider_id]:
            del self._limiters[limiter_key]

    def cached(self, provider_id: str) -> int:
        """How many embedders of the record are cached (what tests of forgetting look at)."""
        return sum(1 for k in self._cache if k[0] == provider_id)

    def _limiter(self, record: EmbeddingProvider, model: str) -> AdaptiveLimiter:
        key = (record.id, model)
        if key not in self._limiters:
            # A base URL override is another server (Azure, vLLM, TEI...): its limits are unknown.
            limits = RateLimits() if record.base_url else default_limits(record.provider, model)
            self._limiters[key] = AdaptiveLimiter(limits)
        return self._limiters[key]

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
        if client is None or info is None:
            raise ProviderError(
                "provider_error", f"provider {record.provider!r} has no model {model!r} in the catalog"
            )
        if not record.api_key_enc:
            raise ProviderError("bad_key", f"the {record.provider} provider record has no API key")
        try:
            api_key = self._secrets.decrypt(record.api_key_enc, bound_to=record.id)
        except SecretBoxError as exc:
            raise ProviderError(
                "bad_key", "the stored API key cannot be decrypted with this server's secret key"
            ) from exc
        return client(
            self._session,
            api_key=api_key,
            model=model,
            dimensions=dimensions or info.dimensions,
            native_dimensions=info.dimensions,
            reducible=bool(info.reducible_to),
            base_url=record.base_url,
            limiter=limiter or self._limiter(record, model),
            policy=policy or self._policy,
        )

    async def test(self, record: EmbeddingProvider) -> ProviderTestResult:
        """One tiny real call with the record's default model, with a short retry policy and
        its own limiter (a test never waits behind a backfill's pacing)."""
        started = time.perf_counter()
        try:
            embedder = self._build(
                record, record.default_model, 0, policy=TEST_POLICY, limiter=AdaptiveLimiter()
            )
            result = await embedder.embed(["embedd connection test"], InputType.QUERY)
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
        self._limiters.clear()


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
