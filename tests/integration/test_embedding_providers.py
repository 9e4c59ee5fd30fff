"""Embedding providers: the seed's step 3 shape, catalog validation, keys never echoed."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from embedd.v1 import embedding_provider_pb2 as pb
from embedd.v1 import values_pb2

from tests.harness import Org, grpc_error, rest_error

SEED_BODY = {
    "name": "openai-prod",
    "provider": "openai",
    "api_key": "sk-proj-your-openai-key",
    "default_model": "text-embedding-3-small",
}


async def test_seed_step_3_shape(org: Org) -> None:
    r = await org.http("POST", "/v1/embedding-providers", SEED_BODY)
    assert r.status_code == 200, r.text
    made = r.json()
    assert set(made) == {"id", "name", "provider", "default_model", "created_at"}
    assert made["id"].startswith("emb_")
    assert (made["name"], made["provider"], made["default_model"]) == (
        "openai-prod",
        "openai",
        "text-embedding-3-small",
    )
    assert "sk-proj-your-openai-key" not in r.text
    got = await org.http("GET", f"/v1/embedding-providers/{made['id']}")
    assert got.json() == made
    listed = await org.http("GET", "/v1/embedding-providers")
    assert listed.json()["embedding_providers"] == [made]
    assert "sk-proj" not in listed.text


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "text-embedding-3-large"),
        ("gemini", "gemini-embedding-001"),
        ("voyage", "voyage-3.5-lite"),
        ("local", "local-lexical-384"),
    ],
)
async def test_each_provider(org: Org, provider: str, model: str) -> None:
    body: dict[str, Any] = {"name": provider, "provider": provider, "default_model": model}
    if provider != "local":
        body["api_key"] = "key-123"
    r = await org.http("POST", "/v1/embedding-providers", body)
    assert r.status_code == 200, r.text
    assert r.json()["provider"] == provider


async def test_base_url_is_kept(org: Org) -> None:
    r = await org.http(
        "POST", "/v1/embedding-providers", {**SEED_BODY, "base_url": "http://vllm.internal:8000/v1"}
    )
    assert r.status_code == 200 and r.json()["base_url"] == "http://vllm.internal:8000/v1"


BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("unknown model", {"default_model": "text-embedding-4"}, "default_model", "text-embedding-3-small"),
    ("model of another provider", {"default_model": "voyage-3.5"}, "default_model", "text-embedding-ada-002"),
    ("no model", {"default_model": ""}, "default_model", "valid models"),
    ("no key", {"api_key": ""}, "api_key", "required"),
    ("no name", {"name": " "}, "name", "required"),
    ("bad base url", {"base_url": "ftp://x"}, "base_url", "http"),
]


@pytest.mark.parametrize(("case", "change", "field", "hint"), BAD, ids=[b[0] for b in BAD])
async def test_validation_over_both_surfaces(
    org: Org, case: str, change: dict[str, Any], field: str, hint: str
) -> None:
    body = {**SEED_BODY, **change}
    status, code, err = rest_error(await org.http("POST", "/v1/embedding-providers", body))
    assert (status, code) == (400, "validation_error")
    assert err["details"][0]["field"] == field and hint in err["message"]
    request = pb.CreateEmbeddingProviderRequest(
        name=body["name"],
        provider=values_pb2.EmbeddingProviderType.Value.Value(body["provider"]),
        api_key=body["api_key"],
        default_model=body["default_model"],
    )
    if "base_url" in body:
        request.base_url = body["base_url"]
    async with org.client() as c:
        gcode, reason, violations, message = await grpc_error(
            c.embedding_providers.CreateEmbeddingProvider(request)
        )
    assert gcode == grpc.StatusCode.INVALID_ARGUMENT and reason == "validation_error"
    assert violations[0][0] == field and hint in message
    assert (await org.http("GET", "/v1/embedding-providers")).json()["embedding_providers"] == []


async def test_unknown_provider_string_is_rejected(org: Org) -> None:
    status, code, _ = rest_error(
        await org.http("POST", "/v1/embedding-providers", {**SEED_BODY, "provider": "cohere"})
    )
    assert (status, code) == (400, "validation_error")
    status, code, err = rest_error(
        await org.http("POST", "/v1/embedding-providers", {**SEED_BODY, "provider": None})
    )
    assert (status, code) == (400, "validation_error") and err["details"][0]["field"] == "provider"


async def test_models_catalog(org: Org) -> None:
    r = await org.http("GET", "/v1/embedding-models")
    models = r.json()["models"]
    assert {"provider": "openai", "model": "text-embedding-3-small", "dimensions": 1536} in models
    assert {"provider": "voyage", "model": "voyage-3-lite", "dimensions": 512} in models
    only = (await org.http("GET", "/v1/embedding-models?provider=gemini")).json()["models"]
    assert {m["provider"] for m in only} == {"gemini"} and len(only) == 3


async def test_delete_and_test_rpc(org: Org) -> None:
    made = (await org.http("POST", "/v1/embedding-providers", SEED_BODY)).json()
    tested = await org.http("POST", f"/v1/embedding-providers/{made['id']}/test")
    assert tested.status_code == 200, tested.text
    # No such key (and maybe no network): a clear failure, not an error.
    assert tested.json()["status"] == "failed"
    assert tested.json()["reason"] in ("bad_key", "unreachable")
    r = await org.http("DELETE", f"/v1/embedding-providers/{made['id']}")
    assert r.json() == {"id": made["id"], "deleted": True}
    status, code, _ = rest_error(await org.http("GET", f"/v1/embedding-providers/{made['id']}"))
    assert (status, code) == (404, "embedding_provider_not_found")
