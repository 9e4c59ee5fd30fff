"""A backfill the way a user runs one against a remote provider: to queryable, to indexed,
and within the provider's budget.

    python -m bench.bench_remote [--rows 100000] [--queries 200] [--latencies 0,0.15]

For each provider latency: a PostgreSQL of its own, `--rows` product rows, a server process,
an `openai` embedding provider whose base URL is the fake OpenAI (tests/fakes/providers.py;
no rate limit, each request answered after the latency), a vector table with
text-embedding-3-small at 1,536 dimensions; POST backfill, then GetSyncStatus every 0.1 s:

  synced_s_<ms>ms       POST backfill -> sync_status synced (every row written: queryable)
  index_ready_s_<ms>ms  POST backfill -> index_status ready (docs/indexes.md)
  index_recall          recall@10 of QueryVectorTable (the service's own query path, on the
                        built index) against an exact ranking of the stored vectors (numpy),
                        over `--queries` product phrases, at the last latency; a result is
                        a hit when its exact score reaches the 10th best (ties)
  index_recall_without_rerank  the same on the same index in the index's own order (SQL,
                        the service's session settings): what the halfvec re-rank adds

and the budget case of bench/bench_budget.py (2,000 rows at 60,000 TPM):
`budget_time_ratio` (the budget's lower bound / the time achieved) and `rate_429`.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import numpy as np
from embedd.v1 import query_pb2, sync_pb2, values_pb2
from embedd_client import EmbeddClient
from embedd_server.devtools.demo_data import products
from embedd_server.devtools.serverproc import ServerProcess, create_org, new_secret_key
from embedd_server.sinks.pgvector import PgVectorTable, encode_vectors, register_vector_codec
from embedd_server.sinks.pgvector_search import ef_search_for, prepare_query_connection

from bench.bench_budget import DIMENSIONS, load_products, measure
from bench.common import create_table, local_postgres, openai_provider, platform_connection, prepare_databases
from tests.fakes.providers import FakeOpenAI, FakeProvider

K = 10


def phrases(n: int) -> list[str]:
    """Short product phrases, as a shopper would type them."""
    rng = random.Random(5)
    words = [w for p in products(2000) for w in p.name.lower().split() if len(w) > 2]
    return [" ".join(rng.sample(words, 2)) for _ in range(n)]


async def stored_vectors(dsn: str, ref: str) -> tuple[list[str], np.ndarray[Any, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        await register_vector_codec(conn)
        rows = await conn.fetch(f'SELECT pk_value, embedding FROM "{ref}" WHERE embedding IS NOT NULL')
    finally:
        await conn.close()
    matrix = np.vstack([r["embedding"].to_numpy() for r in rows]).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return [r["pk_value"] for r in rows], matrix


Answer = Callable[[str, np.ndarray[Any, Any]], Awaitable[list[str]]]


async def recall(
    fake: FakeProvider, answer: Answer, ids: list[str], matrix: np.ndarray[Any, Any], n: int
) -> float:
    """A result is a hit when its exact score reaches the 10th best exact score: the fake's
    lexical vectors have ties, which any of the tied rows answers correctly (as bench_query)."""
    row_of = {pk: i for i, pk in enumerate(ids)}
    found = 0
    for text in phrases(n):
        query = fake.expected(text, None, DIMENSIONS).astype(np.float32)
        scores = matrix @ query
        tenth = float(np.partition(-scores, K - 1)[K - 1]) * -1
        found += sum(1 for pk in await answer(text, query) if scores[row_of[pk]] >= tenth - 1e-6)
    return found / (K * n)


def by_service(client: EmbeddClient, vt_id: str) -> Answer:
    """QueryVectorTable: the service's query path (a halfvec index's candidates re-ranked)."""

    async def answer(text: str, query: np.ndarray[Any, Any]) -> list[str]:
        response = await client.query.QueryVectorTable(
            query_pb2.QueryVectorTableRequest(vector_table_id=vt_id, query=text, limit=K)
        )
        return [r.id for r in response.results]

    return answer


def by_index_order(conn: asyncpg.Connection[Any], ref: str) -> Answer:
    """The index's own order, nothing re-ranked, on the same index and session settings."""
    indexed = PgVectorTable("public", ref, DIMENSIONS, halfvec=True).vector_expression()
    sql = f'SELECT pk_value FROM "{ref}" ORDER BY {indexed} <=> $1::vector::halfvec({DIMENSIONS}) LIMIT {K}'

    async def answer(text: str, query: np.ndarray[Any, Any]) -> list[str]:
        return [r["pk_value"] for r in await conn.fetch(sql, encode_vectors(query.reshape(1, -1))[0])]

    return answer


async def fill(rows: int, latency_s: float, queries: int) -> dict[str, float]:
    password, api_key = secrets.token_urlsafe(12), "sk-bench-" + secrets.token_hex(8)
    with local_postgres() as pg:
        control, source = await prepare_databases(pg, password)
        await load_products(source, rows)
        key = new_secret_key()
        server = ServerProcess(control, key).start()
        try:
            async with (
                FakeOpenAI(api_key=api_key, latency_s=latency_s) as fake,
                EmbeddClient(f"127.0.0.1:{server.port}", create_org(control, key)) as client,
            ):
                conn_id = await platform_connection(client, pg.backend_port, password)
                emb_id = await openai_provider(client, fake.base_url, api_key)
                vt = await create_table(
                    client, conn_id, emb_id, "products", model="text-embedding-3-small", dimensions=DIMENSIONS
                )
                started = time.monotonic()
                await client.sync.BackfillVectorTable(
                    sync_pb2.BackfillVectorTableRequest(vector_table_id=vt.id)
                )
                synced_s = index_s = None
                while index_s is None:
                    status = await client.sync.GetSyncStatus(
                        sync_pb2.GetSyncStatusRequest(vector_table_id=vt.id)
                    )
                    now = time.monotonic() - started
                    if synced_s is None and status.sync_status == values_pb2.SyncStatus.synced:
                        synced_s = now
                    if status.index_status == values_pb2.IndexStatus.ready:
                        index_s = now
                    await asyncio.sleep(0.1)
                assert status.synced_rows == rows, status
                assert synced_s is not None
                ids, matrix = await stored_vectors(source, vt.platform_vector_ref)
                got = await recall(fake, by_service(client, vt.id), ids, matrix, queries)
                conn = await asyncpg.connect(source)
                try:
                    await prepare_query_connection(conn, ef_search_for(DIMENSIONS))  # as the engine's
                    plain = await recall(
                        fake, by_index_order(conn, vt.platform_vector_ref), ids, matrix, queries
                    )
                finally:
                    await conn.close()
        finally:
            server.stop()
    ms = round(latency_s * 1000)
    print(
        f"latency {ms} ms: synced {synced_s:.1f} s, index ready {index_s:.1f} s,"
        f" recall@10 {got:.3f} (index order alone {plain:.3f})"
    )
    return {
        f"synced_s_{ms}ms": round(synced_s, 1),
        f"index_ready_s_{ms}ms": round(index_s, 1),
        "index_recall": got,
        "index_recall_without_rerank": plain,
    }


async def main(rows: int, queries: int, latencies: list[float], budget: bool = True) -> dict[str, Any]:
    result: dict[str, Any] = {"rows": rows, "dimensions": DIMENSIONS}
    for latency in latencies:
        result.update(await fill(rows, latency, queries))
    if budget:
        measured = await measure()
        keys = ("budget_time_ratio", "rate_429", "achieved_s", "budget_lower_bound_s")
        result.update({k: measured[k] for k in keys})
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--latencies", default="0,0.15")
    parser.add_argument("--no-budget", action="store_true", help="leave out the budget case")
    args = parser.parse_args()
    lat = [float(x) for x in args.latencies.split(",")]
    print(json.dumps(asyncio.run(main(args.rows, args.queries, lat, not args.no_budget))))
