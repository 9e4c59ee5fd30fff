"""OpenAI `POST {base}/embeddings` (and OpenAI-compatible servers: Azure, vLLM, Ollama, TEI).

Wire format (OpenAI API reference, "Create embeddings"): request `{"model", "input": [str],
"dimensions"?, "encoding_format": "float"|"base64"}` with `Authorization: Bearer <key>`;
response `{"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model",
"usage": {"prompt_tokens", "total_tokens"}}`. Errors are `{"error": {"message", "type",
"param", "code"}}`.

Limits: 2,048 inputs and 300,000 tokens per request, 8,192 tokens per input (the API rejects a
longer input rather than cut it, so inputs are truncated here to the estimate). `dimensions`
only exists for text-embedding-3-*. `encoding_format: base64` (little-endian float32) is about
four times smaller than JSON floats and cheaper to parse; a compatible server that refuses it
is switched to `float` for good. Rate limits come back in `x-ratelimit-*` headers, which the
limiter follows. An OpenAI-compatible server may serve models of its own (see
domain/catalog.py), refuse large batches with 413 (learned by `InputLimit`) and send no rate-limit
headers (then AIMD alone finds its concurrency).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from embedd_server.providers.base import InputType, Vectors
from embedd_server.providers.remote import (
    Rejection,
    RemoteEmbedder,
    Request,
    Verdict,
    error_message,
    parse_embedding_list,
)

_INPUT_INDEX = re.compile(r"input\[(\d+)\]")
# The batch size a refusal states: OpenAI "Expected an array with maximum length 2048", TEI
# "maximum allowed batch size 32", other gateways "should not be larger than 10".
_STATED_MAX = re.compile(r"(?:maximum length|maximum allowed batch size|not be larger than) (\d+)")


def embeddings_body(
    model: str, texts: Sequence[str], dimensions: int | None, encoding: str
) -> dict[str, Any]:
    """The body of `POST /embeddings` (also each request of a Batch API input file).
    `dimensions` only for models that can shorten their vectors (text-embedding-3-*): a
    compatible server's own model has one size."""
    body: dict[str, Any] = {"model": model, "input": list(texts), "encoding_format": encoding}
    if dimensions is not None:
        body["dimensions"] = dimensions
    return body


class OpenAIEmbedder(RemoteEmbedder):
    provider = "openai"
    default_base_url = "https://api.openai.com/v1"
    max_inputs = 2048
    max_request_tokens = 300_000
    max_input_tokens = 8191

    _encoding = "base64"

    def build_request(self, texts: Sequence[str], input_type: InputType) -> Request:
        body = embeddings_body(
            self._model, texts, self._dimensions if self._reducible else None, self._encoding
        )
        headers = {"Content-Type": "application/json"}
        if self._api_key:  # a compatible server may run without authentication
            headers["Authorization"] = f"Bearer {self._api_key}"
        return Request(f"{self._base_url}/embeddings", headers, body)

    def parse_response(self, payload: Any, count: int) -> tuple[Vectors, int | None]:
        return parse_embedding_list(payload, count, "prompt_tokens", "total_tokens")

    def is_quota_exhausted(self, payload: Any) -> bool:
        err = payload.get("error") if isinstance(payload, Mapping) else None
        return isinstance(err, Mapping) and err.get("code") == "insufficient_quota"

    def classify(self, status: int, payload: Any) -> Verdict:
        message = error_message(payload)
        err = payload.get("error") if isinstance(payload, Mapping) else None
        err = err if isinstance(err, Mapping) else {}
        code, param, low = str(err.get("code") or ""), str(err.get("param") or ""), message.lower()
        match = _INPUT_INDEX.search(message) or _INPUT_INDEX.search(param)
        index = int(match.group(1)) if match else None
        if status == 404 or err.get("code") == "model_not_found":
            return Verdict(Rejection.FATAL, message)
        if code == "invalid_api_key":
            return Verdict(Rejection.BAD_KEY, message)
        # OpenAI: array_above_max_length; TEI: 413 "batch size 64 > maximum allowed batch size 32";
        # other compatible gateways: 400 "batch size is invalid, it should not be larger than 10".
        too_many = code == "array_above_max_length" or "array too long" in low or "batch size" in low
        if status == 413 or code == "max_tokens_per_request" or "per request" in low or too_many:
            stated = _STATED_MAX.search(low) if too_many or status == 413 else None
            return Verdict(Rejection.TOO_LARGE, message, limit=int(stated.group(1)) if stated else None)
        if "maximum input length" in low or "maximum context length" in low:
            return Verdict(Rejection.INPUT_TOO_LONG, message, index)
        if param in ("model", "dimensions", "encoding_format") or "dimensions" in low:
            return Verdict(Rejection.FATAL, message)
        return Verdict(Rejection.BAD_INPUT, message, index)

    def adapt(self, verdict: Verdict) -> bool:
        if self._encoding == "base64" and "encoding_format" in verdict.message:
            self._encoding = "float"  # an OpenAI-compatible server without base64
            return True
        return False
