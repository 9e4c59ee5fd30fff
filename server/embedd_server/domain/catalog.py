"""The embedding model catalog: which models each provider serves, and their dimensions."""

from __future__ import annotations

from dataclasses import dataclass

from embedd_server.domain.errors import FieldViolation, validation_error

PROVIDERS = ("openai", "gemini", "voyage", "local")


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
        raise validation_error(
            [FieldViolation(field, f"{shown} for provider {provider!r}; valid models: {valid}")]
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
