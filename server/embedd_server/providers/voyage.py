"""Voyage AI `POST {base}/embeddings`.

Wire format (Voyage API reference, "Text embeddings", and the `voyageai` SDK): `Authorization:
Bearer <key>`; request `{"input": [str], "model", "input_type": "document"|"query"|null,
"truncation": true, "output_dimension"?, "output_dtype"?, "encoding_format": null|"base64"}`;
response `{"object": "list", "data": [{"object": "embedding", "embedding", "index"}], "model",
"usage": {"total_tokens"}}`. Errors are `{"detail": "..."}`.

Limits: 1,000 inputs per request; tokens per request 1M (lite models), 320K (voyage-3.5, -2),
120K (large, code) — Voyage's tokenizer is denser than the 4-characters rule on code and mixed
text, so the estimate carries a larger safety margin. `truncation: true` is the documented rule
for over-long inputs: the API cuts them to the model's context. `output_dimension` only for the
models that support it. base64 (little-endian float32) as the official SDK does.
"""

from __future__ import annotations

from collections.abc import Sequence
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

CONTEXT_TOKENS = 32_000


def request_token_limit(model: str) -> int:
    if "lite" in model:
        return 1_000_000
    if "large" in model or "code" in model or "finance" in model or "law" in model:
        return 120_000
    return 320_000


class VoyageEmbedder(RemoteEmbedder):
    provider = "voyage"
    default_base_url = "https://api.voyageai.com/v1"
    max_inputs = 1000
    max_request_tokens = 320_000
    estimate_safety = 0.6

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_request_tokens = request_token_limit(self._model)  # type: ignore[misc]

    def input_tokens(self, text: str) -> int:
        return min(super().input_tokens(text), CONTEXT_TOKENS)

    def build_request(self, texts: Sequence[str], input_type: InputType) -> Request:
        body: dict[str, Any] = {
            "input": list(texts),
            "model": self._model,
            "input_type": input_type.value,
            "truncation": True,
            "encoding_format": "base64",
        }
        if self._reducible:
            body["output_dimension"] = self._dimensions
        return Request(
            f"{self._base_url}/embeddings",
            {"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"},
            body,
        )

    def parse_response(self, payload: Any, count: int) -> tuple[Vectors, int | None]:
        return parse_embedding_list(payload, count, "total_tokens")

    def classify(self, status: int, payload: Any) -> Verdict:
        message = error_message(payload)
        low = message.lower()
        if status == 404:
            return Verdict(Rejection.FATAL, message)
        if "per submitted batch" in low or "batch size" in low or "length of the list" in low:
            return Verdict(Rejection.TOO_LARGE, message)
        if "context length" in low:
            return Verdict(Rejection.INPUT_TOO_LONG, message)
        if "output_dimension" in low or "not supported" in low or "invalid model" in low:
            return Verdict(Rejection.FATAL, message)
        return Verdict(Rejection.BAD_INPUT, message)
