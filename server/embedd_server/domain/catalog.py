"""The embedding model catalog: which models each provider serves, and their dimensions.

An OpenAI-compatible server (an `openai` provider with a base URL: vLLM, Text Embeddings
Inference, Ollama, LM Studio, Azure deployments) serves models of its own. Any name is accepted
there, with a declared vector size: the provider record's `dimensions` for its
`default_model`, or a vector table's `embedding_dimensions` for another model. Such a model's
vectors have one size (no shortening); the provider test checks it with a real call.
"""

from __future__ import annotations

from dataclasses import dataclass

from embedd_server.domain.errors import FieldViolation, validation_error

PROVIDERS = ("openai", "gemini", "voyage", "local")
# pgvector's `vector` type holds at most 16,000 dimensions (docs/providers.md).
MAX_DIMENSIONS = 16_000
_MAX_MODEL_NAME = 256


@dataclass(frozen=True, slots=True)
class ModelInfo:
    provider: str
    model: str
    dimensions: int
    # Dimensions the provider can shorten vectors to (Matryoshka models); empty = fixed.
    reducible_to: tuple[int, ...] = ()


# The seed page's table, then the models that run inside the service.
MODELS: tuple[ModelInfo, ...] = (
    ModelInfo("openai", "text-embedding-3-small", 1536, reducible_to=(256, 512, 768, 1024)),
    ModelInfo("openai", "text-embedding-3-large", 3072, reducible_to=(256, 512, 768, 1024, 1536)),
    ModelInfo("openai", "text-embedding-ada-002", 1536),
    ModelInfo("gemini", "gemini-embedding-001", 3072, reducible_to=(768, 1536)),
    ModelInfo("gemini", "text-embedding-005", 768),
    ModelInfo("gemini", "text-embedding-004", 768),
    ModelInfo("voyage", "voyage-3.5", 1024, reducible_to=(256, 512, 2048)),
    ModelInfo("voyage", "voyage-3.5-lite", 512, reducible_to=(256, 1024, 2048)),
    ModelInfo("voyage", "voyage-code-3", 1024, reducible_to=(256, 512, 2048)),
    ModelInfo("voyage", "voyage-3-large", 1024, reducible_to=(256, 512, 2048)),
    ModelInfo("voyage", "voyage-3-lite", 512),
    # Deterministic, dependency-free: for tests, CI and offline demos.
    ModelInfo("local", "local-lexical-384", 384),
    # sentence-transformers all-MiniLM-L6-v2, when the optional extra is installed.
    ModelInfo("local", "all-MiniLM-L6-v2", 384),
)


# A batch API bills half the normal price (OpenAI's Batch API: docs/facts.md, "Batch APIs").
BATCH_PRICE_SHARE = 0.5


def batch_saving(batch_tokens: int) -> int:
    """What the batch discount saved, in tokens at the normal API's price."""
    return int(batch_tokens * (1 - BATCH_PRICE_SHARE))


def models_of(provider: str | None = None) -> list[ModelInfo]:
    return [m for m in MODELS if provider is None or m.provider == provider]


def find_model(provider: str, model: str) -> ModelInfo | None:
    for info in MODELS:
        if info.provider == provider and info.model == model:
            return info
    return None


def require_model(provider: str, model: str, field: str) -> ModelInfo:
    """The model's catalog entry, or a 400 that lists the provider's valid models."""
    info = find_model(provider, model)
    if info is None:
        valid = ", ".join(m.model for m in models_of(provider))
        shown = f"unknown model {model!r}" if model else "a model is required"
        hint = (
            " (or, with a base_url, any model of an OpenAI-compatible server and its dimensions)"
            if provider == "openai"
            else ""
        )
        raise validation_error(
            [FieldViolation(field, f"{shown} for provider {provider!r}; valid models: {valid}{hint}")]
        )
    return info


def check_dimensions(info: ModelInfo, dimensions: int, field: str) -> int:
    """The dimensions to use (native when 0), or a 400 listing the allowed ones."""
    if dimensions == 0:
        return info.dimensions
    allowed = (info.dimensions, *info.reducible_to)
    if dimensions not in allowed:
        listed = ", ".join(str(d) for d in sorted(allowed))
        raise validation_error(
            [FieldViolation(field, f"{info.model} supports dimensions {listed}, not {dimensions}")]
        )
    return dimensions


def check_model_name(model: str, field: str) -> None:
    """A server's own model name: what it is passed as (e.g. `BAAI/bge-small-en-v1.5`)."""
    if not model or len(model) > _MAX_MODEL_NAME or not model.isprintable() or model != model.strip():
        raise validation_error(
            [FieldViolation(field, f"must be the model's name, 1-{_MAX_MODEL_NAME} printable characters")]
        )


def check_declared_dimensions(dimensions: int, field: str) -> int:
    if not 1 <= dimensions <= MAX_DIMENSIONS:
        raise validation_error(
            [
                FieldViolation(
                    field, f"must be between 1 and {MAX_DIMENSIONS}: the size of the model's vectors"
                )
            ]
        )
    return dimensions


def serves_own_models(provider: str, base_url: str | None) -> bool:
    """An OpenAI-compatible server: an `openai` provider with a base URL."""
    return provider == "openai" and bool(base_url)


def resolve_model(
    provider: str,
    model: str,
    dimensions: int,
    *,
    base_url: str | None,
    declared: int | None,
    model_field: str,
    dimensions_field: str,
) -> tuple[ModelInfo, int]:
    """The model's entry and the dimensions to use (native when `dimensions` is 0), or a 400.
    A catalog model is checked against the catalog; another model of an OpenAI-compatible
    server needs a size: `dimensions`, or the one `declared` by the provider record."""
    info = find_model(provider, model)
    if info is not None or not serves_own_models(provider, base_url):
        info = require_model(provider, model, model_field)
        return info, check_dimensions(info, dimensions, dimensions_field)
    check_model_name(model, model_field)
    if dimensions == 0 and declared is None:
        raise validation_error(
            [
                FieldViolation(
                    dimensions_field,
                    f"is required for {model!r}, which is not in the catalog: the size of the vectors "
                    "your server returns for it",
                )
            ]
        )
    if dimensions and declared is not None and dimensions != declared:
        raise validation_error(
            [
                FieldViolation(
                    dimensions_field,
                    f"{model!r} returns {declared}-dimension vectors (the embedding provider's "
                    f"`dimensions`); omit it or pass {declared}",
                )
            ]
        )
    dims = check_declared_dimensions(dimensions or declared or 0, dimensions_field)
    return ModelInfo(provider, model, dims), dims
