"""Builds `Embedder`s from provider records, once per (record, model, dimensions).

Embedders are cached so that all work against one provider key shares one rate limiter and
one concurrency window (per-provider, per-key isolation: a failing provider never stalls
another). The HTTP session is the composition root's, shared by every remote client.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiohttp

from embedd_server.domain.models import EmbeddingProvider
from embedd_server.providers.base import Embedder, InputType, ProviderError
from embedd_server.providers.local import LEXICAL_MODEL, MINILM_MODEL, LexicalEmbedder, MiniLMEmbedder
from embedd_server.secretbox import SecretBox


@dataclass(frozen=True, slots=True)
class ProviderTestResult:
    latency_ms: int
    failure: str | None = None  # "bad_key" | "unreachable" | "provider_error"
    message: str | None = None


class EmbedderRegistry:
    def __init__(self, session: aiohttp.ClientSession, secrets: SecretBox) -> None:
        self._session = session
        self._secrets = secrets
        self._cache: dict[tuple[str, str, int], Embedder] = {}

    def get(self, record: EmbeddingProvider, model: str, dimensions: int) -> Embedder:
        key = (record.id, model, dimensions)
        if key not in self._cache:
            self._cache[key] = self._build(record, model, dimensions)
        return self._cache[key]

    def _build(self, record: EmbeddingProvider, model: str, dimensions: int) -> Embedder:
        if record.provider == "local":
            if model == LEXICAL_MODEL:
                return LexicalEmbedder(dimensions)
            if model == MINILM_MODEL:
                return MiniLMEmbedder()
        raise ProviderError(
            "provider_error", f"provider {record.provider!r} model {model!r} is not available yet (issue #3)"
        )

    async def test(self, record: EmbeddingProvider) -> ProviderTestResult:
        """One tiny real call with the record's default model."""
        started = time.perf_counter()
        try:
            embedder = self._build(record, record.default_model, 0)
            await embedder.embed(["embedd connection test"], InputType.QUERY)
        except ProviderError as err:
            return ProviderTestResult(_ms(started), err.code, err.message)
        return ProviderTestResult(_ms(started))

    async def aclose(self) -> None:
        for embedder in self._cache.values():
            await embedder.aclose()
        self._cache.clear()


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
