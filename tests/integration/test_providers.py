"""One behavioural suite for the OpenAI, Gemini and Voyage embedders, each against its fake
(tests/fakes/providers.py); SDK-faithfulness of the fakes; and the provider test RPC end to end."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import pytest
from embedd.v1 import embedding_provider_pb2 as pb
from embedd.v1 import values_pb2
from embedd_server.domain.models import EmbeddingProvider
from embedd_server.providers.base import Embedder, InputType, ProviderError
from embedd_server.providers.http import RetryPolicy
from embedd_server.providers.registry import EmbedderRegistry
from embedd_server.secretbox import SecretBox

from tests.fakes.providers import FAKES, MODELS, FakeOpenAI, FakeProvider
from tests.harness import Org

KINDS = ["openai", "gemini", "voyage"]
KEY = "test-key"
FAST = RetryPolicy(
    max_attempts=3, base_delay_s=0.05, max_delay_s=0.2, request_timeout_s=0.5, max_throttle_wait_s=20
)
WORDS = [
    "able",
    "acid",
    "aged",
    "also",
    "area",
    "army",
    "away",
    "baby",
    "back",
    "ball",
    "band",
    "bank",
    "base",
    "bath",
    "bear",
    "beat",
    "bell",
    "best",
]


def sentence(i: int, words: int = 8) -> str:
    """Four-letter words: the fake's token count never exceeds the client's estimate."""
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(words)) + f" n{i:05d}"


def sent_type(kind: str, input_type: InputType) -> str | None:
    """What the fake records as the input type for an `InputType`."""
    if kind == "openai":
        return None
    if kind == "gemini":
        return "RETRIEVAL_QUERY" if input_type is InputType.QUERY else "RETRIEVAL_DOCUMENT"
    return input_type.value


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture(params=KINDS)
async def fake(request: pytest.FixtureRequest) -> AsyncIterator[FakeProvider]:
    async with FAKES[request.param](api_key=KEY) as f:
        yield f


def embedder(
    session: aiohttp.ClientSession,
    fake: FakeProvider,
    *,
    model: str | None = None,
    dimensions: int = 0,
    key: str = KEY,
    base_url: str | None = None,
) -> Embedder:
    box = SecretBox(os.urandom(32))
    record_id = "emb_test" + os.urandom(4).hex()
    record = EmbeddingProvider(
        id=record_id,
        org_id="org",
        env_id="env",
        name=fake.kind,
        provider=fake.kind,
        default_model=model or MODELS[fake.kind],
        base_url=base_url or fake.base_url,
        created_at=dt.datetime.now(dt.UTC),
        api_key_enc=box.encrypt(key, bound_to=record_id),
    )
    return EmbedderRegistry(session, box, FAST).get(record, model or MODELS[fake.kind], dimensions)


def assert_vectors(fake: FakeProvider, vectors: Any, texts: list[str], input_type: str | None) -> None:
    expected = np.stack([fake.expected(t, input_type, vectors.shape[1]) for t in texts])
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


async def test_batches_within_the_input_count(session: aiohttp.ClientSession, fake: FakeProvider) -> None:
    n = fake.max_inputs + fake.max_inputs // 2 + 3
    texts = [sentence(i, 2) for i in range(n)]
    result = await embedder(session, fake).embed(texts, InputType.DOCUMENT)
    assert not result.failed
    assert max(fake.counters.batch_sizes) <= fake.max_inputs
    assert fake.counters.inputs == n and set(fake.counters.statuses) == {200}
    assert_vectors(fake, result.vectors, texts, sent_type(fake.kind, InputType.DOCUMENT))
    assert result.requests == fake.counters.requests and result.tokens > 0


async def test_batches_within_the_token_cap(session: aiohttp.ClientSession, fake: FakeProvider) -> None:
    """~350k tokens in fewer inputs than the count cap: split by tokens, no 400 needed."""
    words = 480 if fake.kind != "gemini" else 300
    n = 730 if fake.kind != "gemini" else 90
    texts = [sentence(i, words) for i in range(n)]
    result = await embedder(session, fake).embed(texts, InputType.DOCUMENT)
    assert not result.failed
    assert set(fake.counters.statuses) == {200}
    assert fake.counters.requests >= 2 and max(fake.counters.batch_sizes) <= fake.max_inputs
    assert_vectors(fake, result.vectors[:5], texts[:5], sent_type(fake.kind, InputType.DOCUMENT))


async def test_a_400_for_a_too_large_batch_splits_it(
    session: aiohttp.ClientSession, fake: FakeProvider
) -> None:
    fake.max_inputs = 10  # type: ignore[misc]  # the server's cap is lower than the client thinks
    texts = [sentence(i, 3) for i in range(45)]
    result = await embedder(session, fake).embed(texts, InputType.DOCUMENT)
    assert not result.failed
    assert fake.counters.statuses[400] >= 1
    assert max(fake.counters.batch_sizes) <= 10 and fake.counters.inputs == 45
    assert_vectors(fake, result.vectors, texts, sent_type(fake.kind, InputType.DOCUMENT))


async def test_queries_and_documents(session: aiohttp.ClientSession, fake: FakeProvider) -> None:
    e = embedder(session, fake)
    texts = ["red running shoes", "a blue cotton shirt"]
    docs = await e.embed(texts, InputType.DOCUMENT)
    queries = await e.embed(texts, InputType.QUERY)
    assert_vectors(fake, docs.vectors, texts, sent_type(fake.kind, InputType.DOCUMENT))
    assert_vectors(fake, queries.vectors, texts, sent_type(fake.kind, InputType.QUERY))
    same = np.allclose(docs.vectors, queries.vectors)
    assert same is (fake.kind == "openai")  # OpenAI has no input type; the others must send it
    if fake.kind != "openai":
        assert set(fake.counters.input_types) == {
            sent_type(fake.kind, InputType.DOCUMENT),
            sent_type(fake.kind, InputType.QUERY),
        }


@pytest.mark.parametrize("dims", [256, 0])
async def test_dimensions(session: aiohttp.ClientSession, fake: FakeProvider, dims: int) -> None:
    result = await embedder(session, fake, dimensions=dims).embed(["wool socks"], InputType.DOCUMENT)
    native = {"openai": 1536, "gemini": 3072, "voyage": 1024}[fake.kind]
    assert result.vectors.shape == (1, dims or native)
    assert_vectors(fake, result.vectors, ["wool socks"], sent_type(fake.kind, InputType.DOCUMENT))
    assert set(fake.counters.dimensions) == {dims or native}


async def test_429_is_retried_after_retry_after(session: aiohttp.ClientSession, fake: FakeProvider) -> None:
    fake.inject("throttle", retry_after=0.6)
    result = await embedder(session, fake).embed(["linen towel"], InputType.DOCUMENT)
    assert not result.failed and fake.counters.throttled == 1 and fake.counters.ok == 1
    first, second = fake.counters.request_times
    assert second - first >= 0.55  # the wait the provider asked for (Voyage: whole seconds)


async def test_a_budget_is_respected_without_a_storm(
    session: aiohttp.ClientSession, fake: FakeProvider
) -> None:
    """Unknown limits (a base URL override): AIMD and the learned rate keep 429s rare."""
    async with type(fake)(api_key=KEY, rpm=2400, burst_s=0.25) as limited:
        e = embedder(session, limited)
        results = await asyncio.gather(*(e.embed([sentence(i)], InputType.DOCUMENT) for i in range(30)))
    assert all(not r.failed for r in results)
    assert limited.counters.ok == 30
    assert limited.counters.throttled <= 4, limited.counters.statuses


@pytest.mark.parametrize("fault", ["status", "hang", "malformed"])
async def test_transient_failures_are_retried(
    session: aiohttp.ClientSession, fake: FakeProvider, fault: str
) -> None:
    fake.inject(fault, status=503)
    result = await embedder(session, fake).embed(["felt hat", "silk scarf"], InputType.DOCUMENT)
    assert not result.failed and fake.counters.ok == 1 and fake.counters.requests == 2
    assert_vectors(fake, result.vectors, ["felt hat", "silk scarf"], sent_type(fake.kind, InputType.DOCUMENT))


async def test_a_poison_input_fails_alone(session: aiohttp.ClientSession, fake: FakeProvider) -> None:
    fake.poison = "POISON"
    texts = [sentence(i) for i in range(40)]
    texts[13] = "this one is POISON for the provider"
    result = await embedder(session, fake).embed([*texts, ""], InputType.DOCUMENT)
    assert set(result.failed) == {13, 40}
    assert not result.vectors[13].any() and not result.vectors[40].any()
    good = [i for i in range(40) if i != 13]
    assert_vectors(
        fake, result.vectors[good], [texts[i] for i in good], sent_type(fake.kind, InputType.DOCUMENT)
    )


async def test_over_long_inputs(session: aiohttp.ClientSession, fake: FakeProvider) -> None:
    """Truncated by the documented rule (OpenAI, Gemini: client-side; Voyage: `truncation`);
    and when the server's limit is tighter than the client's, the input is shortened again."""
    long = sentence(1, 12_000)
    result = await embedder(session, fake).embed(["short one", long], InputType.DOCUMENT)
    assert not result.failed and fake.counters.statuses[400] == 0
    fake.max_input_tokens = 300
    fake.reset_counters()
    result = await embedder(session, fake).embed(["short one", sentence(2, 1000)], InputType.DOCUMENT)
    assert not result.failed
    assert (fake.counters.statuses[400] == 0) is (fake.kind == "voyage")  # else split, then halved


async def test_bad_key(session: aiohttp.ClientSession, fake: FakeProvider) -> None:
    with pytest.raises(ProviderError) as err:
        await embedder(session, fake, key="wrong").embed(["x y"] * 3000, InputType.DOCUMENT)
    assert err.value.code == "bad_key"
    assert fake.counters.requests <= 8  # no retries: the first answers end it


async def test_unreachable(session: aiohttp.ClientSession, fake: FakeProvider) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ProviderError) as err:
        await embedder(session, fake, base_url=f"http://127.0.0.1:{port}/v1").embed(["x"], InputType.QUERY)
    assert err.value.code == "unreachable"


async def test_base_url_override(session: aiohttp.ClientSession, fake: FakeProvider) -> None:
    async with type(fake)(api_key=KEY, prefix="/custom/api/v9") as moved:
        result = await embedder(session, moved).embed(["cotton"], InputType.QUERY)
        assert moved.base_url.endswith("/custom/api/v9") and moved.counters.ok == 1
        assert_vectors(moved, result.vectors, ["cotton"], sent_type(fake.kind, InputType.QUERY))
        with pytest.raises(ProviderError) as err:
            await embedder(session, moved, base_url=moved.base_url + "/wrong").embed(["x"], InputType.QUERY)
        assert err.value.code == "provider_error"


# -- the official SDKs against the fakes ---------------------------------------------------------


async def test_openai_sdk_against_the_fake() -> None:
    openai = pytest.importorskip("openai")
    async with FAKES["openai"](api_key=KEY) as fake:
        client = openai.AsyncOpenAI(api_key=KEY, base_url=fake.base_url, max_retries=0)
        texts = ["red shoes", "green socks"]
        for fmt in ("float", "base64"):
            r = await client.embeddings.create(
                model="text-embedding-3-small", input=texts, dimensions=256, encoding_format=fmt
            )
            if fmt == "float":
                vectors = np.array([d.embedding for d in r.data], dtype=np.float32)
                assert_vectors(fake, vectors, texts, None)
            assert r.usage.prompt_tokens > 0 and r.model == "text-embedding-3-small"
        r = await client.embeddings.create(model="text-embedding-3-small", input=texts)  # SDK default
        assert_vectors(fake, np.array([d.embedding for d in r.data], dtype=np.float32), texts, None)
        with pytest.raises(openai.AuthenticationError):
            await openai.AsyncOpenAI(api_key="nope", base_url=fake.base_url, max_retries=0).embeddings.create(
                model="text-embedding-3-small", input=["x"]
            )
        fake.inject("throttle", retry_after=0.2)
        with pytest.raises(openai.RateLimitError):
            await client.embeddings.create(model="text-embedding-3-small", input=["x"])
        with pytest.raises(openai.BadRequestError):
            await client.embeddings.create(model="text-embedding-3-small", input=["x"] * 2049)
        await client.close()


async def test_the_fake_openai_limits_as_openai_does(session: aiohttp.ClientSession) -> None:
    """A bucket per limit holding one minute of budget, debited on admission; `x-ratelimit-*`
    on every answer after the key check (200, 400, 429), resets written as OpenAI writes them."""
    async with FakeOpenAI(api_key=KEY, tpm=6000, rpm=600) as fake:
        url, auth = f"{fake.base_url}/embeddings", {"Authorization": f"Bearer {KEY}"}
        body = {"model": "text-embedding-3-small", "input": ["word " * 1000]}  # 1,000 tokens
        async with session.post(url, json=body, headers=auth) as r:
            assert r.status == 200
            assert r.headers["x-ratelimit-limit-tokens"] == "6000"
            assert 4990 <= int(r.headers["x-ratelimit-remaining-tokens"]) <= 5000
            assert r.headers["x-ratelimit-reset-tokens"] in ("10s", "9.999s", "9.998s")  # 1,000 at 100/s
            assert r.headers["x-ratelimit-remaining-requests"] == "599"
        async with session.post(url, json={**body, "model": "nope"}, headers=auth) as r:
            assert r.status == 404 and "x-ratelimit-remaining-tokens" in r.headers
        big = {**body, "input": ["word " * 1000] * 6}
        async with session.post(url, json=big, headers=auth) as r:
            assert r.status == 429  # 6,000 asked, at most 5,000 left
            assert float(r.headers["retry-after-ms"]) > 0 and "x-ratelimit-remaining-tokens" in r.headers
            assert "tokens per min (TPM)" in (await r.json())["error"]["message"]


async def test_voyage_sdk_against_the_fake() -> None:
    voyageai = pytest.importorskip("voyageai")
    async with FAKES["voyage"](api_key=KEY) as fake:
        client = voyageai.AsyncClient(api_key=KEY, base_url=fake.base_url, max_retries=0)
        texts = ["red shoes", "green socks"]
        r = await client.embed(texts, model="voyage-3.5", input_type="query", output_dimension=256)
        assert_vectors(fake, np.array(r.embeddings, dtype=np.float32), texts, "query")
        assert r.total_tokens > 0
        r = await client.embed(texts, model="voyage-3.5-lite", input_type="document")
        assert_vectors(fake, np.array(r.embeddings, dtype=np.float32), texts, "document")
        with pytest.raises(voyageai.error.AuthenticationError):
            bad = voyageai.AsyncClient(api_key="nope", base_url=fake.base_url, max_retries=0)
            await bad.embed(["x"], model="voyage-3.5")
        with pytest.raises(voyageai.error.InvalidRequestError):
            await client.embed(["x"] * 1001, model="voyage-3.5")


# -- POST /v1/embedding-providers/{id}/test, over REST and gRPC ----------------------------------


async def test_provider_test_rpc_end_to_end(org: Org) -> None:
    async with FAKES["openai"](api_key=KEY) as fake:
        body = {
            "name": "fake-openai",
            "provider": "openai",
            "api_key": KEY,
            "default_model": "text-embedding-3-small",
            "base_url": fake.base_url,
        }
        good = (await org.http("POST", "/v1/embedding-providers", body)).json()
        bad = (await org.http("POST", "/v1/embedding-providers", {**body, "api_key": "wrong"})).json()
        r = await org.http("POST", f"/v1/embedding-providers/{good['id']}/test")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "ok" and r.json()["latency_ms"] >= 0 and "reason" not in r.json()
        r = await org.http("POST", f"/v1/embedding-providers/{bad['id']}/test")
        assert r.status_code == 200, r.text
        assert (r.json()["status"], r.json()["reason"]) == ("failed", "bad_key")
        assert "wrong" not in r.text
        async with org.client() as c:
            ok = await c.embedding_providers.TestEmbeddingProvider(
                pb.TestEmbeddingProviderRequest(embedding_provider_id=good["id"])
            )
            assert ok.status == values_pb2.TestStatus.ok and not ok.HasField("reason")
            failed = await c.embedding_providers.TestEmbeddingProvider(
                pb.TestEmbeddingProviderRequest(embedding_provider_id=bad["id"])
            )
            assert failed.status == values_pb2.TestStatus.failed
            assert failed.reason == values_pb2.EmbeddingProviderTestFailure.bad_key and failed.message
        assert fake.counters.ok == 2
