"""What the engine needs from an embedding provider, whatever the provider.

The engine hands an `Embedder` a chunk of texts (hundreds or thousands) and gets one vector
per text back. Splitting into provider-sized requests, running several in flight, rate
limiting, retrying and truncating are the embedder's business. A text the provider rejects
for good is reported in `failed` instead of failing its neighbours.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


class InputType(enum.Enum):
    """Documents are embedded as documents and queries as queries (Voyage `input_type`,
    Gemini `taskType`): retrieval quality depends on it."""

    DOCUMENT = "document"
    QUERY = "query"


@dataclass(slots=True)
class EmbedResult:
    """`vectors[i]` is the embedding of text i, unless i is in `failed` (then its row is
    zeros and must not be stored). Vectors are float32 and L2-normalised."""

    vectors: Vectors
    failed: dict[int, str] = field(default_factory=dict)
    # Provider accounting, for progress and benchmarks.
    tokens: int = 0
    requests: int = 0


class ProviderError(Exception):
    """A provider failure that retrying will not fix, with a message for the user."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        # "bad_key" | "unreachable" | "provider_error" | "quota" | "network_policy_denied"
        self.code = code
        self.message = message


class Embedder(Protocol):
    """One model of one provider record, with that record's key and limits."""

    @property
    def model(self) -> str: ...

    @property
    def dimensions(self) -> int: ...

    async def embed(self, texts: Sequence[str], input_type: InputType) -> EmbedResult: ...

    async def aclose(self) -> None: ...


def normalise(vectors: Vectors) -> Vectors:
    """L2-normalise rows in place (zero rows stay zero); cosine then equals the dot product."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.divide(vectors, norms, out=vectors, where=norms > 0)
    return vectors
