"""OpenAI-compatible servers (vLLM, TEI, Ollama...): their own model names with a declared size,
a batch size and a concurrency learned (and remembered) or set per provider; and the whole
budget of a rate-limited OpenAI key. Against the fakes in tests/fakes/providers.py."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import numpy as np
import pytest
from embedd_server import app
from embedd_server.domain.models import EmbeddingProvider, LearnedLimits
from embedd_server.providers.base import Embedder, InputType
from embedd_server.providers.http import RetryPolicy
from embedd_server.providers.registry import EmbedderRegistry
from embedd_server.secretbox import SecretBox
from embedd_server.sinks.pgvector_search import ef_search_for

from tests.conftest import PRODUCT_ROWS, UserDb
from tests.fakes.providers import FakeCompatible, FakeOpenAI
from tests.harness import Org, rest_error
from tests.integration.test_providers import sentence
from tests.integration.test_vector_tables import seed_body, wait_synced

MODEL, DIMS = "BAAI/bge-small-en-v1.5", 384
# Quick retries; a 429 without Retry-After (TEI's "overloaded") pauses 50 ms.
POLICY = RetryPolicy(
    max_attempts=3, base_delay_s=0.05, max_delay_s=0.2, request_timeout_s=2.0, default_throttle_s=0.05
)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


class Saved:
    """The registry's `save_learned`, recording what it is asked to remember."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, LearnedLimits]] = []

    async def __call__(self, provider_id: str, learned: LearnedLimits) -> None:
        self.calls.append((provider_id, learned))


def record(base_url: str, **changes: Any) -> tuple[EmbeddingProvider, SecretBox]:
    box = SecretBox(os.urandom(32))
    record_id = "emb_test" + os.urandom(4).hex()
    made = EmbeddingProvider(
        id=record_id,
        org_id="org",
        env_id="env",
        name="compatible",
        provider="openai",
        default_model=MODEL,
        base_url=base_url,
        created_at=dt.datetime.now(dt.UTC),
        api_key_enc=box.encrypt("any-key", bound_to=record_id),
        dimensions=DIMS,
    )
    return dataclasses.replace(made, **changes), box


def compatible_embedder(
    session: aiohttp.ClientSession, server: FakeCompatible, saved: Saved | None = None, **changes: Any
) -> Embedder:
    rec, box = record(server.base_url, **changes)
    return EmbedderRegistry(session, box, POLICY, save_learned=saved).get(rec, MODEL, DIMS)


async def test_an_unknown_servers_batch_size_is_learned_and_remembered(
    session: aiohttp.ClientSession,
) -> None:
    saved = Saved()
    async with FakeCompatible(models={MODEL: DIMS}, max_batch=16, max_concurrency=64) as server:
        texts = [sentence(i) for i in range(300)]
        result = await compatible_embedder(session, server, saved).embed(texts, InputType.DOCUMENT)
        assert not result.failed
        expected = np.stack([server.expected(t, None, DIMS) for t in texts])
        np.testing.assert_allclose(result.vectors, expected, atol=1e-5)
        c = server.counters
        # Refused once ("maximum allowed batch size 16"), then kept to 16.
        assert c.statuses[413] == 1 and max(c.batch_sizes) == 16, c.statuses
        assert saved.calls and saved.calls[-1][1].max_inputs == 16


async def test_what_was_learned_is_where_the_next_process_starts(session: aiohttp.ClientSession) -> None:
    async with FakeCompatible(models={MODEL: DIMS}, max_batch=16, max_concurrency=64) as server:
        embedder = compatible_embedder(session, server, learned=LearnedLimits(max_inputs=16, concurrency=3))
        assert not (await embedder.embed([sentence(i) for i in range(100)], InputType.DOCUMENT)).failed
        assert server.counters.statuses[413] == 0 and max(server.counters.batch_sizes) == 16


async def test_aimd_finds_the_servers_concurrency(session: aiohttp.ClientSession) -> None:
    saved = Saved()
    async with FakeCompatible(models={MODEL: DIMS}, max_batch=4, max_concurrency=2, latency_s=0.02) as server:
        embedder = compatible_embedder(session, server, saved)
        result = await embedder.embed([sentence(i) for i in range(240)], InputType.DOCUMENT)
        assert not result.failed
        c = server.counters
        assert c.ok == 60 and c.throttled / c.requests < 0.1, c.statuses  # no storm
        assert saved.calls[-1][1].concurrency in (1, 2)


async def test_settings_bound_requests_from_the_start(session: aiohttp.ClientSession) -> None:
    saved = Saved()
    async with FakeCompatible(
        models={MODEL: DIMS}, max_batch=16, max_concurrency=2, latency_s=0.01
    ) as server:
        embedder = compatible_embedder(session, server, saved, max_inputs_per_request=8, max_concurrency=2)
        assert not (await embedder.embed([sentence(i) for i in range(200)], InputType.DOCUMENT)).failed
        c = server.counters
        assert c.statuses[413] == 0 and c.statuses[429] == 0 and max(c.batch_sizes) == 8
        assert c.max_in_flight == 2
        assert not saved.calls  # set, not learned: nothing to remember


async def test_the_whole_budget_is_spent(session: aiohttp.ClientSession) -> None:
    """At 30,000 tokens/min (a bucket of 30,000, refilled at 500/s), ~31,500 tokens cannot take
    less than (31,500 - 30,000) / 500 s: the embedder is within a few percent of that, without
    429s. Pacing at the nominal rate from the start would take about a minute."""
    tpm, latency = 30_000, 0.02
    async with FakeOpenAI(api_key="any-key", tpm=tpm, rpm=3000, latency_s=latency, jitter_s=0.01) as fake:
        rec, box = record(fake.base_url, default_model="text-embedding-3-small", dimensions=None)
        embedder = EmbedderRegistry(session, box, POLICY).get(rec, "text-embedding-3-small", 256)
        await embedder.embed(["probe"], InputType.DOCUMENT)  # learns the limits, as any first call
        fake.reset_counters()
        texts = [sentence(i) for i in range(3150)]
        result = await asyncio.wait_for(embedder.embed(texts, InputType.DOCUMENT), 30)
        assert not result.failed
        c = fake.counters
        bound = max(0, c.tokens - tpm) / (tpm / 60) + latency
        achieved = c.last_ok_at - c.request_times[0]
        assert c.throttled == 0, c.statuses
        assert bound * 0.97 <= achieved <= bound * 1.1 + 0.3, (bound, achieved)


# -- over the API: a provider record for a compatible server --------------------------------------


async def test_a_compatible_server_over_the_api(org: Org, user_db: UserDb) -> None:
    async with FakeCompatible(models={MODEL: DIMS}, max_batch=16, max_concurrency=8) as server:
        body = {"name": "tei", "provider": "openai", "default_model": MODEL, "base_url": server.base_url}
        status, code, err = rest_error(await org.http("POST", "/v1/embedding-providers", body))
        assert (status, code) == (400, "validation_error") and err["details"][0]["field"] == "dimensions"
        status, _, err = rest_error(
            await org.http(
                "POST",
                "/v1/embedding-providers",
                {**body, "base_url": None, "api_key": "sk-x", "dimensions": DIMS},
            )
        )
        assert status == 400 and "base_url" in err["message"]  # no base URL: OpenAI's catalog only

        wrong = (await org.http("POST", "/v1/embedding-providers", {**body, "dimensions": 512})).json()
        tested = (await org.http("POST", f"/v1/embedding-providers/{wrong['id']}/test")).json()
        assert (tested["status"], tested["reason"]) == ("failed", "provider_error")
        assert "384" in tested["message"] and "512" in tested["message"], tested

        made = await org.http("POST", "/v1/embedding-providers", {**body, "dimensions": DIMS})
        assert made.status_code == 200, made.text
        emb = made.json()
        assert emb["dimensions"] == DIMS  # and no api_key: this server needs none
        tested = (await org.http("POST", f"/v1/embedding-providers/{emb['id']}/test")).json()
        assert tested["status"] == "ok", tested

        conn = await org.http(
            "POST",
            "/v1/providers/postgresql/connections",
            {"name": "src", "mode": "platform", "credentials": user_db.credentials()},
        )
        vt = await org.http(
            "POST",
            "/v1/vector-tables",
            {
                "name": "compatible",
                "connection_id": conn.json()["id"],
                "embedding_provider_id": emb["id"],
                "source_table": "products",
                "primary_key_column": "id",
                "columns": [
                    {"name": "name", "role": "embedding"},
                    {"name": "description", "role": "embedding"},
                ],
            },
        )
        assert vt.status_code == 200, vt.text
        assert (vt.json()["embedding_model"], vt.json()["embedding_dimensions"]) == (MODEL, DIMS)
        vt_id, ref = vt.json()["id"], vt.json()["platform_vector_ref"]
        try:
            started = time.monotonic()
            await org.http("POST", f"/v1/vector-tables/{vt_id}/backfill")
            assert (await wait_synced(org, vt_id, 60))["sync_status"] == "synced"
            assert time.monotonic() - started < 60
            owner = await asyncpg.connect(user_db.owner_dsn)
            try:
                assert await owner.fetchval(f'SELECT count(*) FROM "{ref}"') == PRODUCT_ROWS
            finally:
                await owner.close()
            learned = (await org.http("GET", f"/v1/embedding-providers/{emb['id']}")).json()
            assert learned["learned_max_inputs_per_request"] == 16, learned
            assert max(server.counters.batch_sizes) == 16
        finally:
            await org.http("DELETE", f"/v1/vector-tables/{vt_id}")


async def test_a_wide_table_is_queried_with_a_wider_beam(
    org: Org, user_db: UserDb, service: app.Service
) -> None:
    """Tables of 1,024 dimensions and more are searched with hnsw.ef_search 400, narrower ones
    with 200 (sinks/pgvector_search.ef_search_for): one query pool each, on the same database."""
    wide_model, wide = "BAAI/bge-large-en-v1.5", 1024
    engine = service.query_engine
    assert engine is not None
    async with FakeCompatible(models={wide_model: wide}) as server:
        body = {"name": "tei-large", "provider": "openai", "default_model": wide_model}
        made = await org.http(
            "POST", "/v1/embedding-providers", {**body, "base_url": server.base_url, "dimensions": wide}
        )
        assert made.status_code == 200, made.text
        conn = await org.http(
            "POST",
            "/v1/providers/postgresql/connections",
            {"name": "src", "mode": "platform", "credentials": user_db.credentials()},
        )
        changes = {"name": "wide", "embedding_model": wide_model, "embedding_dimensions": wide}
        vt = await org.http(
            "POST", "/v1/vector-tables", seed_body(conn.json()["id"], made.json()["id"], **changes)
        )
        assert vt.status_code == 200, vt.text
        vt_id = vt.json()["id"]
        try:
            await org.http("POST", f"/v1/vector-tables/{vt_id}/backfill")
            assert (await wait_synced(org, vt_id, 60))["sync_status"] == "synced"
            r = await org.http(
                "POST", f"/v1/vector-tables/{vt_id}/query", {"query": "warm jacket", "limit": 3}
            )
            assert r.status_code == 200 and len(r.json()["results"]) == 3, r.text
            (variant,) = [v for v in engine.pools.pools if v[0].startswith(f"{conn.json()['id']}:")]
            assert variant[1] == 400 == ef_search_for(wide) and ef_search_for(wide - 1) == 200
            async with engine.pools.pools[variant].acquire() as c:
                assert await c.fetchval("SHOW hnsw.ef_search") == "400"
        finally:
            await org.http("DELETE", f"/v1/vector-tables/{vt_id}")
            await org.http("DELETE", f"/v1/connections/{conn.json()['id']}")


async def test_limit_settings_are_checked_and_shown(org: Org) -> None:
    body = {
        "name": "vllm",
        "provider": "openai",
        "default_model": "text-embedding-3-small",
        "base_url": "http://vllm.internal:8000/v1",
    }
    for change, field in (
        ({"max_inputs_per_request": 4096}, "max_inputs_per_request"),  # OpenAI's API takes 2,048
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"dimensions": 1536}, "dimensions"),  # a catalog model's size is known
        (
            {"provider": "local", "default_model": "local-lexical-384", "max_concurrency": 2},
            "max_concurrency",
        ),
    ):
        status, code, err = rest_error(await org.http("POST", "/v1/embedding-providers", {**body, **change}))
        assert (status, code, err["details"][0]["field"]) == (400, "validation_error", field), err
    made = await org.http(
        "POST", "/v1/embedding-providers", {**body, "max_inputs_per_request": 64, "max_concurrency": 8}
    )
    assert made.status_code == 200, made.text
    got = (await org.http("GET", f"/v1/embedding-providers/{made.json()['id']}")).json()
    assert (got["max_inputs_per_request"], got["max_concurrency"]) == (64, 8)
    assert "learned_max_concurrency" not in got  # nothing learned yet
