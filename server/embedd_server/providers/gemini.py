"""Gemini API `POST {base}/models/{model}:batchEmbedContents`.

Wire format (Gemini API reference, "models.batchEmbedContents"): header `x-goog-api-key`;
request `{"requests": [{"model": "models/{model}", "content": {"parts": [{"text"}]},
"taskType": "RETRIEVAL_DOCUMENT"|"RETRIEVAL_QUERY", "outputDimensionality"?}]}` where every
request's model must match the one in the path; response `{"embeddings": [{"values": [...]}]}`
in request order. Errors are Google RPC errors `{"error": {"code", "message", "status",
"details"}}`; a bad key is a **400** `INVALID_ARGUMENT` with `ErrorInfo.reason ==
"API_KEY_INVALID"` (403 `PERMISSION_DENIED` for a key without access).

Limits: at most 100 requests per batch ("at most 100 requests can be in one batch"); 2,048
input tokens for the embedding models. The Gemini API has no `autoTruncate` (that is Vertex
AI's `predict`), so inputs are truncated here to the estimate. No token usage comes back, so
calibration keeps the estimate. `outputDimensionality` shortens gemini-embedding-001 vectors,
which are then not normalised by the API: the embedder normalises every vector.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from embedd_server.providers.base import InputType, Vectors
from embedd_server.providers.http import parse_retry_after
from embedd_server.providers.remote import (
    Rejection,
    RemoteEmbedder,
    Request,
    Verdict,
    decode_float32,
    error_message,
    stack,
)

TASK_TYPES = {InputType.DOCUMENT: "RETRIEVAL_DOCUMENT", InputType.QUERY: "RETRIEVAL_QUERY"}


class GeminiEmbedder(RemoteEmbedder):
    provider = "gemini"
    default_base_url = "https://generativelanguage.googleapis.com/v1beta"
    max_inputs = 100
    max_request_tokens = 100 * 2048
    max_input_tokens = 2048

    def build_request(self, texts: Sequence[str], input_type: InputType) -> Request:
        name = f"models/{self._model}"
        common: dict[str, Any] = {"model": name, "taskType": TASK_TYPES[input_type]}
        if self._reducible:
            common["outputDimensionality"] = self._dimensions
        return Request(
            f"{self._base_url}/{name}:batchEmbedContents",
            {"x-goog-api-key": self._api_key, "Content-Type": "application/json"},
            {"requests": [{**common, "content": {"parts": [{"text": t}]}} for t in texts]},
        )

    def parse_response(self, payload: Any, count: int) -> tuple[Vectors, int | None]:
        return stack([decode_float32(e["values"]) for e in payload["embeddings"]], count), None

    def retry_after(self, payload: Any, headers: Mapping[str, str]) -> float | None:
        """Google puts the wait in a `google.rpc.RetryInfo` detail ("retryDelay": "1.5s")."""
        err = payload.get("error") if isinstance(payload, Mapping) else None
        for detail in (err.get("details") or []) if isinstance(err, Mapping) else []:
            if isinstance(detail, Mapping) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
                delay = str(detail.get("retryDelay", ""))
                try:
                    return max(0.0, float(delay.removesuffix("s")))
                except ValueError:
                    break
        return parse_retry_after(headers)

    def classify(self, status: int, payload: Any) -> Verdict:
        message = error_message(payload)
        err = payload.get("error") if isinstance(payload, Mapping) else None
        err = err if isinstance(err, Mapping) else {}
        reasons = {str(d.get("reason")) for d in err.get("details") or [] if isinstance(d, Mapping)}
        low = message.lower()
        if "API_KEY_INVALID" in reasons or "api key not valid" in low:
            return Verdict(Rejection.BAD_KEY, message)
        if status == 404:
            return Verdict(Rejection.FATAL, message)
        if "in one batch" in low:
            return Verdict(Rejection.TOO_LARGE, message)
        if "token" in low and ("exceed" in low or "too long" in low):
            return Verdict(Rejection.INPUT_TOO_LONG, message)
        if "outputdimensionality" in low or "output_dimensionality" in low or "model" in low:
            return Verdict(Rejection.FATAL, message)
        return Verdict(Rejection.BAD_INPUT, message)
