"""The whole provider budget: a backfill through a rate-limited fake OpenAI, against the
budget's lower bound.

    python -m bench.bench_budget [--rows 2000] [--tpm 60000] [--latency 0.15] [--jitter 0.02]

The way a user runs it: a server process, an `openai` embedding provider whose base URL is the
fake (tests/fakes/providers.py; limits unknown to the server until the fake's `x-ratelimit-*`
headers tell them), a vector table (text-embedding-3-small, 1,536 dims) over `--rows` product
rows of about 68 tokens each (2,000 rows: ~136k tokens), POST backfill, wait for the task.
The fake enforces `--tpm` tokens and 3,000 requests per minute as OpenAI does (a bucket
holding one minute of budget, refilled continuously) and answers each request after
`--latency` seconds; requests reach its limiter after up to `--jitter` seconds of transit, so
that concurrent ones arrive in another order than they were sent, as over a network.

Lower bound (docs/providers.md): with bucket capacity C = TPM tokens, refill r = TPM/60 tokens
per second and T = the tokens the provider counted, no client can finish sooner than
max(0, T - C) / r + one request's latency after its first request.
achieved_s = first request at the fake -> last accepted answer; budget_time_ratio =
lower bound / achieved; rate_429 = 429 answers / requests. backfill_s = POST backfill -> task
completed (adds reading, writing and the index build). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time
from collections.abc import Iterator

import asyncpg
from embedd_client import EmbeddClient
from embedd_server.devtools.demo_data import SCHEMA, Product, products
from embedd_server.devtools.serverproc import ServerProcess, create_org, new_secret_key

from bench.common import (
    backfill,
    create_table,
    local_postgres,
    openai_provider,
    platform_connection,
    prepare_databases,
)
from tests.fakes.providers import FakeOpenAI

_DETAILS = ("soft", "warm", "wool", "silk", "coat", "boot", "belt", "hat", "bag", "slim", "wide", "long")
DIMENSIONS = 1536


def budget_products(rows: int) -> Iterator[Product]:
    """The demo catalogue, each description lengthened to about 68 tokens a row."""
    for p in products(rows):
        details = " ".join(_DETAILS[(p.id * 5 + k * 7) % len(_DETAILS)] for k in range(24))
        yield p._replace(description=f"{p.description} Details: {details}.")


async def load_products(dsn: str, rows: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA)
        await conn.copy_records_to_table(
            "products",
            records=[tuple(p) for p in budget_products(rows)],
            columns=["id", "name", "description", "category", "price", "in_stock"],
        )
        await conn.execute("GRANT SELECT ON products TO bench_user; ANALYZE products")
    finally:
        await conn.close()


def lower_bound_s(tokens: int, tpm: float, latency_s: float) -> float:
    """The budget's lower bound for sending `tokens` (see the module doc)."""
    return max(0.0, tokens - tpm) / (tpm / 60) + latency_s


async def measure(
    rows: int = 2000, tpm: int = 60_000, latency_s: float = 0.15, jitter_s: float = 0.02
) -> dict[str, float | int]:
    """Runs the whole case (own PostgreSQL, server process, fake OpenAI) and returns the keys
    `budget_lower_bound_s`, `achieved_s`, `budget_time_ratio`, `rate_429` and details."""
    password, api_key = secrets.token_urlsafe(12), "sk-bench-" + secrets.token_hex(8)
    with local_postgres() as pg:
        control, source = await prepare_databases(pg, password)
        await load_products(source, rows)
        key = new_secret_key()
        server = ServerProcess(control, key).start()
        try:
            async with (
                FakeOpenAI(
                    api_key=api_key, tpm=tpm, rpm=3000, latency_s=latency_s, jitter_s=jitter_s
                ) as fake,
                EmbeddClient(f"127.0.0.1:{server.port}", create_org(control, key)) as client,
            ):
                conn_id = await platform_connection(client, pg.backend_port, password)
                emb_id = await openai_provider(client, fake.base_url, api_key)
                vt = await create_table(
                    client, conn_id, emb_id, "products", model="text-embedding-3-small", dimensions=DIMENSIONS
                )
                fake.reset_counters()
                started = time.monotonic()
                task = await backfill(client, vt.id)
                backfill_s = time.monotonic() - started
                assert task.progress.rows_processed == rows, task
                c = fake.counters
        finally:
            server.stop()
    achieved = c.last_ok_at - c.request_times[0]
    bound = lower_bound_s(c.tokens, tpm, latency_s)
    return {
        "budget_lower_bound_s": round(bound, 2),
        "achieved_s": round(achieved, 2),
        "budget_time_ratio": round(bound / achieved, 4),
        "rate_429": round(c.throttled / max(1, c.requests), 4),
        "backfill_s": round(backfill_s, 2),
        "rows": rows,
        "tokens": c.tokens,
        "requests": c.requests,
        "throttled": c.throttled,
        "tpm": tpm,
        "latency_s": latency_s,
        "jitter_s": jitter_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--tpm", type=int, default=60_000)
    parser.add_argument("--latency", type=float, default=0.15)
    parser.add_argument("--jitter", type=float, default=0.02)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.rows, args.tpm, args.latency, args.jitter))))


if __name__ == "__main__":
    main()
