"""Which models a provider record may use, and their dimensions (domain/catalog.py)."""

from __future__ import annotations

import pytest
from embedd_server.domain import catalog
from embedd_server.domain.errors import ApiError

TEI = "http://tei.internal:8080/v1"


def resolve(model: str, dims: int = 0, *, base_url: str | None = TEI, declared: int | None = None) -> int:
    _, got = catalog.resolve_model(
        "openai",
        model,
        dims,
        base_url=base_url,
        declared=declared,
        model_field="embedding_model",
        dimensions_field="embedding_dimensions",
    )
    return got


def field_of(exc: pytest.ExceptionInfo[ApiError]) -> str:
    return exc.value.violations[0].field


def test_a_compatible_servers_model_takes_its_declared_size() -> None:
    assert resolve("BAAI/bge-small-en-v1.5", declared=384) == 384
    assert resolve("nomic-embed-text:latest", 768) == 768  # a table declares another model's size
    assert resolve("BAAI/bge-small-en-v1.5", 384, declared=384) == 384


@pytest.mark.parametrize(
    ("model", "dims", "declared", "field"),
    [
        ("bge-small", 0, None, "embedding_dimensions"),  # no size known
        ("bge-small", 512, 384, "embedding_dimensions"),  # not the size the record declares
        ("bge-small", 16_001, None, "embedding_dimensions"),  # wider than pgvector's vector
        (" bge-small", 384, None, "embedding_model"),
        ("x" * 257, 384, None, "embedding_model"),
        ("bge\nsmall", 384, None, "embedding_model"),
    ],
)
def test_what_a_compatible_server_cannot_take(
    model: str, dims: int, declared: int | None, field: str
) -> None:
    with pytest.raises(ApiError) as exc:
        resolve(model, dims, declared=declared)
    assert field_of(exc) == field


def test_catalog_models_keep_their_rules_behind_a_base_url() -> None:
    assert resolve("text-embedding-3-small", 512) == 512
    with pytest.raises(ApiError) as exc:
        resolve("text-embedding-3-small", 384)
    assert field_of(exc) == "embedding_dimensions"


def test_without_a_base_url_only_the_catalog() -> None:
    with pytest.raises(ApiError) as exc:
        resolve("bge-small", 384, base_url=None)
    assert field_of(exc) == "embedding_model" and "base_url" in exc.value.message
    assert not catalog.serves_own_models("voyage", TEI)
