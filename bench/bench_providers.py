"""The embedder against a rate-limited provider: how close to the budget, how few 429s.

    python -m bench.bench_providers [--texts 50000] [--tpm 2000000] [--latency 0.15]

A fake OpenAI server (tests/fakes/providers.py) with a fixed tokens-per-minute budget (token
bucket holding 5 s of budget, like providers that enforce per-minute limits over shorter
periods), 3,000 requests/min and 150 ms per request. The real `OpenAIEmbedder`, built by the
registry for a provider record with a base URL override (so it starts with *unknown* limits
and learns them from the `x-ratelimit-*` headers), embeds `--texts` product-like texts of
about 60 tokens, handed over as the backfill does: chunks of 2,000 texts, two in flight.

tpm_utilization = (tokens the fake accepted / minutes from first request to last response)
÷ the budget. rate_429 = 429 answers ÷ all requests. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import time

import aiohttp
from embedd_server.domain.models import EmbeddingProvider
from embedd_server.providers.base import InputType
from embedd_server.providers.registry import EmbedderRegistry
from embedd_server.secretbox import SecretBox

from tests.fakes.providers import FakeOpenAI

WORDS = [
    "soft",
    "warm",
    "blue",
    "grey",
    "wool",
    "silk",
    "linen",
    "cotton",
    "shirt",
    "dress",
    "coat",
    "boot",
    "shoe",
    "sock",
    "belt",
    "hat",
    "scarf",
    "glove",
    "bag",
    "slim",
    "wide",
    "long",
    "tall",
    "mini",
    "easy",
    "fast",
    "fine",
    "rich",
    "pure",
    "dark",
    "pale",
    "bold",
    "calm",
    "cool",
]


def text(i: int) -> str:
    words = " ".join(WORDS[(i * 13 + k * 7) % len(WORDS)] for k in range(50))
    return f"Product {i}: {words}. Category {i % 40}, price {i % 997}.99"


async def run(n: int, tpm: int, latency: float) -> dict[str, float | int]:
    key = "bench-key"
    async with FakeOpenAI(api_key=key, tpm=tpm, rpm=3000, burst_s=5.0, latency_s=latency) as fake:
        box = SecretBox(os.urandom(32))
        record = EmbeddingProvider(
            id="emb_bench",
            org_id="org",
            env_id="env",
            name="bench",
            provider="openai",
            default_model="text-embedding-3-small",
            base_url=fake.base_url,
            created_at=dt.datetime.now(dt.UTC),
            api_key_enc=box.encrypt(key, bound_to="emb_bench"),
        )
        connector = aiohttp.TCPConnector(limit=100)
        async with aiohttp.ClientSession(connector=connector) as session:
            embedder = EmbedderRegistry(session, box).get(record, "text-embedding-3-small", 512)
            texts = [text(i) for i in range(n)]
            chunks = [texts[i : i + 2000] for i in range(0, n, 2000)]
            queue: asyncio.Queue[list[str]] = asyncio.Queue()
            for chunk in chunks:
                queue.put_nowait(chunk)
            failed = 0

            async def worker() -> None:
                nonlocal failed
                while not queue.empty():
                    chunk = queue.get_nowait()
                    result = await embedder.embed(chunk, InputType.DOCUMENT)
                    failed += len(result.failed)

            started = time.monotonic()
            await asyncio.gather(worker(), worker())
            ended = time.monotonic()
        c = fake.counters
        first = c.request_times[0] if c.request_times else started
        minutes = (ended - first) / 60
        achieved = c.tokens / minutes
        print(
            f"texts={n} failed={failed} tokens={c.tokens} requests={c.requests} 429s={c.throttled} "
            f"elapsed={ended - first:.1f}s achieved_tpm={achieved:,.0f} budget_tpm={tpm:,} "
            f"mean_batch={sum(c.batch_sizes) / max(1, len(c.batch_sizes)):.0f}"
        )
        return {
            "tpm_utilization": round(achieved / tpm, 4),
            "rate_429": round(c.throttled / max(1, c.requests), 4),
            "texts": n,
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=50_000)
    parser.add_argument("--tpm", type=int, default=2_000_000)
    parser.add_argument("--latency", type=float, default=0.15)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.texts, args.tpm, args.latency))))


if __name__ == "__main__":
    main()
