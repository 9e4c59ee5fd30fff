"""Query latency (gRPC, REST through Envoy, the raw SQL) and recall, on 100,000 products.

    python bench/bench_query.py [--rows 100000] [--queries 400]

Same machine, same run, same PostgreSQL. The demo products (`--rows`, 384 dims, the local
lexical embedder) are backfilled by a real server process (`POST .../backfill`), so the
vector table, its HNSW index and btree metadata indexes are the server's own. Then, with the
query embeddings cached (each query text is sent once before timing), one client at a time:

  grpc   QueryVectorTable over gRPC
  rest   POST /v1/vector-tables/{id}/query through Envoy's transcoder
  rest_raw  the same through Envoy from a minimal HTTP/1.1 client (bench.common.RawHttp):
         httpx's own per-request cost left out
  grpc_floor  a bare grpc.aio server answering the service's own response bytes, through the
         same client (bench/grpc_floor.py): what grpc.aio costs with none of our code
  sql    the statements the engine issues for the same query (sinks.pgvector_search), run
         directly with asyncpg on a connection made like the engine's (statements prepared
         once per connection; rows as asyncpg decodes them)

for unfiltered queries, and over gRPC for price-window filters selecting ~1 % and ~0.1 % of
the rows. `qps_rest` is 16 concurrent REST clients for a few seconds. Recall@10 is against an
exact ranking in numpy of every stored vector (the same as a search without index); a result
counts as a hit when its exact score reaches the 10th best exact score (the lexical embedder
has ties). A sweep of filter sizes (exact path vs HNSW path, direct SQL) shows where the
engine's EXACT_THRESHOLD comes from (with a selective range filter PostgreSQL's planner may
still serve the "hnsw" statement from the btree index), and a sweep of hnsw.ef_search where
DEFAULT_EF_SEARCH comes from.

Last line: {"grpc_p50_ms", "rest_p50_ms", "rest_raw_p50_ms", "grpc_floor_p50_ms", "sql_p50_ms",
"grpc_p99_ms", "rest_p99_ms", "sql_p99_ms", "qps_rest", "recall_unfiltered", "recall_filtered",
"filtered_p50_ms", "filtered_full_page_share", "ratelimit_cost_p50_ms"}.
`ratelimit_cost_p50_ms`: gRPC p50 of a server with rate limits on less that of one with them
off (`EMBEDD_RATE_LIMITS_ENABLED=false`), two fresh servers on the same control plane, queries
alternating between them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
from embedd.v1 import (
    query_pb2,
    vector_table_pb2,
)
from embedd_client import EmbeddClient
from embedd_server.devtools.demo_data import SCHEMA, products
from embedd_server.devtools.envoy import EnvoyProcess, render_config
from embedd_server.devtools.serverproc import ServerProcess, create_org, new_secret_key
from embedd_server.domain.credentials import PgCredentials
from embedd_server.domain.filters import parse_filters
from embedd_server.engine.query import QUERY_STATEMENT_CACHE
from embedd_server.network_policy import PERMISSIVE
from embedd_server.providers.local import lexical_vector
from embedd_server.sinks.pgvector import PgVectorTable, encode_vectors
from embedd_server.sinks.pgvector_filters import CompiledFilter, to_sql
from embedd_server.sinks.pgvector_search import (
    FILTER_FIRST_PARAM,
    PgVectorSearch,
    SearchStatement,
    prepare_query_connection,
    run_count,
    run_search,
    session_settings,
)
from embedd_server.sinks.pgvector_store import EXACT_THRESHOLD
from embedd_server.sources.postgres import connect
from google.protobuf import json_format

from bench.common import (
    PRODUCT_COLUMNS,
    ROOT,
    RawHttp,
    backfill,
    create_table,
    local_postgres,
    platform_records,
    prepare_databases,
)

COLUMNS = PRODUCT_COLUMNS
LIMIT = 10
WORDS = [
    "warm",
    "jacket",
    "hiking",
    "fleece",
    "merino",
    "wool",
    "tent",
    "backpacking",
    "lightweight",
    "waterproof",
    "boots",
    "trail",
    "running",
    "winter",
    "camping",
    "stove",
    "climbing",
    "harness",
    "rope",
    "daypack",
    "gloves",
    "beanie",
    "headlamp",
    "down",
    "insulated",
    "breathable",
    "alpine",
    "desert",
    "coastal",
    "ski",
    "touring",
    "sleeping",
    "bag",
    "pad",
    "duffel",
]


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def query_texts(n: int, seed: int = 7) -> list[str]:
    rnd = random.Random(seed)
    return [" ".join(rnd.sample(WORDS, rnd.randint(2, 5))) for _ in range(n)]


async def load_source(dsn: str, rows: int) -> list[float]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA)
        data = [tuple(p) for p in products(rows)]
        await conn.copy_records_to_table(
            "products", records=data, columns=["id", "name", "description", "category", "price", "in_stock"]
        )
        await conn.execute("GRANT SELECT ON products TO bench_user; ANALYZE products")
        return sorted(float(p[4]) for p in data)
    finally:
        await conn.close()


def source_credentials(pg_port: int, password: str) -> PgCredentials:
    """The bench's source database as the vector table's connection reads it."""
    return PgCredentials(
        host="127.0.0.1", port=pg_port, database="bench_source", user="bench_user", password=password
    )


async def fill(client: EmbeddClient, pg_port: int, password: str, rows: int) -> vector_table_pb2.VectorTable:
    conn_id, emb_id = await platform_records(client, pg_port, password)
    vt = await create_table(client, conn_id, emb_id, "products")
    started = time.perf_counter()
    task = await backfill(client, vt.id)
    assert task.progress.rows_processed == rows, task
    log(f"backfill of {rows} rows: {time.perf_counter() - started:.1f} s")
    return vt


class Exact:
    """Every stored vector and price, for exact rankings in numpy."""

    def __init__(self, ids: list[str], vectors: np.ndarray[Any, Any], prices: np.ndarray[Any, Any]) -> None:
        self.ids = ids
        self.vectors = vectors
        self.prices = prices
        self.index = {pk: i for i, pk in enumerate(ids)}

    def recall(self, text: str, got: list[str], window: tuple[float, float] | None) -> float:
        scores = self.vectors @ lexical_vector(text)
        if window is not None:
            mask = (self.prices >= window[0]) & (self.prices < window[1])
            scores = np.where(mask, scores, -np.inf)
        top = np.sort(scores)[::-1][:LIMIT]
        kth = top[-1] - 1e-5
        hits = sum(1 for pk in got[:LIMIT] if scores[self.index[pk]] >= kth)
        return hits / min(LIMIT, int(np.isfinite(top).sum()) or 1)


async def load_exact(creds: PgCredentials, ref: str) -> Exact:
    conn = await connect(creds, policy=PERMISSIVE, vector=True)
    try:
        rows = await conn.fetch(
            f"SELECT pk_value, embedding AS e, (metadata->>'price')::float8 AS price FROM {ref}"
        )
    finally:
        await conn.close()
    vectors = np.array([r["e"].to_numpy() for r in rows], dtype=np.float32)
    return Exact([r["pk_value"] for r in rows], vectors, np.array([r["price"] for r in rows]))


def windows(prices: list[float], share: float, n: int, seed: int) -> list[tuple[float, float]]:
    """Price windows [lo, hi) each selecting about `share` of the rows."""
    rnd = random.Random(seed)
    width = max(1, int(len(prices) * share))
    out = []
    while len(out) < n:
        start = rnd.randrange(0, len(prices) - width - 1)
        lo, hi = prices[start], prices[start + width]
        if hi > lo:
            out.append((lo, hi))
    return out


async def timed(n: int, call: Callable[[int], Awaitable[Any]]) -> list[float]:
    out = []
    for i in range(n):
        started = time.perf_counter()
        await call(i)
        out.append((time.perf_counter() - started) * 1000)
    return out


def compiled(window: tuple[float, float] | None) -> CompiledFilter:
    filters = None if window is None else {"price": {"gte": window[0], "lt": window[1]}}
    return to_sql(parse_filters(filters, COLUMNS), first_param=FILTER_FIRST_PARAM)


async def sweep(
    pool: asyncpg.Pool[Any], search: PgVectorSearch, prices: list[float], exact: Exact
) -> list[dict[str, Any]]:
    """Exact path vs HNSW path by filter size, direct SQL: where the threshold comes from."""
    rows = []
    texts = query_texts(20, seed=11)
    for share in (0.001, 0.01, 0.02, 0.05, 0.1):
        ws = windows(prices, share, len(texts), seed=int(share * 1e6))
        line: dict[str, Any] = {"matched": int(len(prices) * share)}
        for path in ("exact", "hnsw"):
            times, recalls = [], []
            async with pool.acquire() as conn:
                for text, w in zip(texts, ws, strict=True):
                    vector = encode_vectors(lexical_vector(text)[None, :])[0]
                    where = compiled(w)
                    stmt = (search.exact if path == "exact" else search.hnsw)(vector, where, LIMIT, False)
                    started = time.perf_counter()
                    hits = await run_search(conn, stmt)
                    times.append((time.perf_counter() - started) * 1000)
                    recalls.append(exact.recall(text, [h.pk for h in hits], w))
            line[f"{path}_p50_ms"] = round(statistics.median(times), 2)
            line[f"{path}_recall"] = round(statistics.mean(recalls), 3)
        rows.append(line)
        log("sweep", json.dumps(line))
    return rows


async def ef_sweep(pool: asyncpg.Pool[Any], search: PgVectorSearch, exact: Exact) -> list[dict[str, Any]]:
    """Unfiltered recall@10 and SQL latency by hnsw.ef_search: where DEFAULT_EF_SEARCH comes from."""
    out = []
    texts = query_texts(100, seed=5)
    for ef in (40, 64, 100, 128, 200, 300, 400):
        times, recalls = [], []
        async with pool.acquire() as conn:
            await conn.execute(session_settings(ef_search=ef))
            for text in texts:
                vector = encode_vectors(lexical_vector(text)[None, :])[0]
                stmt = search.hnsw(vector, compiled(None), LIMIT, False)
                started = time.perf_counter()
                hits = await run_search(conn, stmt)
                times.append((time.perf_counter() - started) * 1000)
                recalls.append(exact.recall(text, [h.pk for h in hits], None))
            await conn.execute(session_settings())  # the pool's connections serve on
        line = {
            "ef_search": ef,
            "p50_ms": round(statistics.median(times), 2),
            "recall": round(statistics.mean(recalls), 4),
        }
        log("ef", json.dumps(line))
        out.append(line)
    return out


async def main(rows: int, n_queries: int) -> dict[str, Any]:
    password = secrets.token_urlsafe(12)
    with local_postgres() as pg, tempfile.TemporaryDirectory(prefix="embedd-bench-envoy-") as envoy_dir:
        control, source = await prepare_databases(pg, password)
        prices = await load_source(source, rows)
        key = new_secret_key()
        server = ServerProcess(control, key).start()
        try:
            api_key = create_org(control, key)
            config = render_config(
                ROOT / "envoy" / "envoy.yaml",
                grpc_host="127.0.0.1",
                grpc_port=server.port,
                http_host="127.0.0.1",
                http_port=0,
                admin_port=0,
                descriptor=ROOT / "envoy" / "embedd.binpb",
            )
            with EnvoyProcess(config, work_dir=Path(envoy_dir)) as envoy:
                async with (
                    EmbeddClient(f"127.0.0.1:{server.port}", api_key) as client,
                    httpx.AsyncClient(
                        base_url=envoy.http_url,
                        headers={"Authorization": f"Bearer {api_key}"},
                        limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
                    ) as http,
                ):
                    vt = await fill(client, pg.backend_port, password, rows)
                    creds = source_credentials(pg.backend_port, password)
                    result = await measure(client, http, vt, creds, prices, n_queries)
                    result["ratelimit_cost_p50_ms"] = await rate_limit_cost(
                        control, key, api_key, vt.id, n_queries
                    )
                    return result
        finally:
            server.stop()


async def rate_limit_cost(control: str, key: str, api_key: str, vt_id: str, n_queries: int) -> float:
    """p50 of gRPC queries to a server with rate limits on less p50 of the same queries to one
    with them off: two fresh servers on the same control plane, alike but for that (no engine:
    the sync cycles of the server under test would land on one of them only), one query each
    in turn (and which goes first alternating) so that drift hits both alike."""
    servers = [
        ServerProcess(control, key, rate_limits_enabled=on, engine_enabled="false").start()
        for on in ("true", "false")
    ]
    times: list[list[float]] = [[], []]
    try:
        clients = [EmbeddClient(f"127.0.0.1:{s.port}", api_key) for s in servers]
        texts = query_texts(50)
        for i in range(2 * n_queries + 50):
            request = query_pb2.QueryVectorTableRequest(
                vector_table_id=vt_id, query=texts[i % 50], limit=LIMIT
            )
            pairs = list(zip(clients, times, strict=True))
            for c, out in pairs if i % 2 else pairs[::-1]:  # who goes first alternates too
                started = time.perf_counter()
                await c.query.QueryVectorTable(request)
                if i >= 50:  # warm-up: query embeddings, pools
                    out.append((time.perf_counter() - started) * 1000)
        for c in clients:
            await c.close()
    finally:
        for s in servers:
            s.stop()
    on_ms, off_ms = (statistics.median(t) for t in times)
    log("rate limits on / off p50 ms", round(on_ms, 3), round(off_ms, 3))
    return round(on_ms - off_ms, 3)


async def measure(
    client: EmbeddClient,
    http: httpx.AsyncClient,
    vt: vector_table_pb2.VectorTable,
    creds: PgCredentials,
    prices: list[float],
    n_queries: int,
) -> dict[str, Any]:
    exact = await load_exact(creds, f'"public"."{vt.platform_vector_ref}"')
    texts = query_texts(50)
    one_pct = windows(prices, 0.01, 50, seed=1)
    tenth_pct = windows(prices, 0.001, 50, seed=2)
    path = f"/v1/vector-tables/{vt.id}/query"

    def grpc_request(text: str, window: tuple[float, float] | None) -> query_pb2.QueryVectorTableRequest:
        req = query_pb2.QueryVectorTableRequest(vector_table_id=vt.id, query=text, limit=LIMIT)
        if window is not None:
            req.filters.update({"price": {"gte": window[0], "lt": window[1]}})
        return req

    async def grpc_ids(text: str, window: tuple[float, float] | None) -> list[str]:
        response = await client.query.QueryVectorTable(grpc_request(text, window))
        return [r.id for r in response.results]

    # Warm up: every query text once (the embedding cache), pools, Envoy, page cache.
    for text, w1, w2 in zip(texts, one_pct, tenth_pct, strict=True):
        await grpc_ids(text, None)
        await grpc_ids(text, w1)
        await grpc_ids(text, w2)
        r = await http.post(path, json={"query": text, "limit": LIMIT})
        assert r.status_code == 200, r.text

    # Recall and full pages (gRPC: the same engine as REST).
    recall_unfiltered = statistics.mean([exact.recall(t, await grpc_ids(t, None), None) for t in texts])
    filtered_recalls: dict[str, float] = {}
    full_pages, filtered_times = [], []
    for name, ws in (("1%", one_pct), ("0.1%", tenth_pct)):
        recalls = []
        for text, w in zip(texts, ws, strict=True):
            started = time.perf_counter()
            ids = await grpc_ids(text, w)
            filtered_times.append((time.perf_counter() - started) * 1000)
            recalls.append(exact.recall(text, ids, w))
            full_pages.append(len(ids) == LIMIT)
        filtered_recalls[name] = statistics.mean(recalls)
    log("recall", json.dumps({"unfiltered": recall_unfiltered, **filtered_recalls}))

    # Latency, one client at a time, unfiltered, interleaved rounds so drift hits all three.
    # The table the server made, indexed as it indexes new tables (docs/indexes.md).
    search = PgVectorSearch(PgVectorTable("public", vt.platform_vector_ref, 384, halfvec=True))
    vectors = [encode_vectors(lexical_vector(t)[None, :])[0] for t in texts]
    statements: list[SearchStatement] = [search.hnsw(v, compiled(None), LIMIT, False) for v in vectors]

    async def make(*_: object, **__: object) -> asyncpg.Connection[Any]:
        return await connect(creds, policy=PERMISSIVE, statement_cache_size=QUERY_STATEMENT_CACHE)

    async def no_reset(conn: asyncpg.Connection[Any]) -> None:
        return None

    pool: asyncpg.Pool[Any] = await asyncpg.create_pool(
        connect=make, min_size=1, max_size=2, init=prepare_query_connection, reset=no_reset
    )
    canned = await client.query.QueryVectorTable(grpc_request(texts[0], None))
    floor = await asyncio.create_subprocess_exec(  # our own interpreter and module
        sys.executable,
        "-m",
        "bench.grpc_floor",
        canned.SerializeToString().hex(),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert floor.stdout is not None
    floor_port = int(await floor.stdout.readline())
    raw = await RawHttp.open(str(http.base_url))
    raw_headers = {"Authorization": http.headers["Authorization"], "Content-Type": "application/json"}
    bodies = [json.dumps({"query": t, "limit": LIMIT}).encode() for t in texts]
    try:
        grpc_ms: list[float] = []
        rest_ms: list[float] = []
        rest_raw_ms: list[float] = []
        floor_ms: list[float] = []
        sql_ms: list[float] = []

        async def via_grpc(i: int) -> None:
            await client.query.QueryVectorTable(grpc_request(texts[i % len(texts)], None))

        async def via_rest(i: int) -> None:
            r = await http.post(path, json={"query": texts[i % len(texts)], "limit": LIMIT})
            assert r.status_code == 200

        async def via_rest_raw(i: int) -> None:
            status, _ = await raw.post(path, bodies[i % len(bodies)], raw_headers)
            assert status == 200

        async def via_floor(i: int) -> None:
            await floor_client.query.QueryVectorTable(grpc_request(texts[i % len(texts)], None))

        async def via_sql(i: int) -> None:  # the rows as asyncpg decodes them: nothing of ours
            statement = statements[i % len(statements)]
            async with pool.acquire() as conn:
                await conn.fetch(statement.sql, *statement.params)

        rounds = 4
        async with EmbeddClient(f"127.0.0.1:{floor_port}", "sk_floor") as floor_client:
            await timed(50, via_floor)
            await timed(50, via_rest_raw)
            for _ in range(rounds):
                grpc_ms += await timed(n_queries // rounds, via_grpc)
                rest_ms += await timed(n_queries // rounds, via_rest)
                rest_raw_ms += await timed(n_queries // rounds, via_rest_raw)
                floor_ms += await timed(n_queries // rounds, via_floor)
                sql_ms += await timed(n_queries // rounds, via_sql)

        # The filtered SQL the engine runs (probe + exact), for reference.
        async def filtered_sql(i: int) -> None:
            w = one_pct[i % len(one_pct)]
            where = compiled(w)
            async with pool.acquire() as conn:
                await run_count(conn, search.count_sql(where), EXACT_THRESHOLD + 1)
                await run_search(conn, search.exact(vectors[i % len(vectors)], where, LIMIT, False))

        filtered_sql_ms = await timed(n_queries // 2, filtered_sql)

        # Throughput: 16 concurrent REST clients.
        counter = 0
        deadline = time.perf_counter() + 5.0

        async def worker(offset: int) -> None:
            nonlocal counter
            i = offset
            while time.perf_counter() < deadline:
                r = await http.post(path, json={"query": texts[i % len(texts)], "limit": LIMIT})
                assert r.status_code == 200
                counter += 1
                i += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(16)))
        qps_rest = counter / (time.perf_counter() - started)

        sweep_rows = await sweep(pool, search, prices, exact)
        ef_rows = await ef_sweep(pool, search, exact)
    finally:
        await raw.aclose()
        floor.kill()
        await floor.wait()
        await pool.close()

    # A sanity check that the REST body is the gRPC one.
    r = await http.post(path, json={"query": texts[0], "limit": 3})
    g = await client.query.QueryVectorTable(
        query_pb2.QueryVectorTableRequest(vector_table_id=vt.id, query=texts[0], limit=3)
    )
    assert [x["id"] for x in r.json()["results"]] == [json_format.MessageToDict(x)["id"] for x in g.results]

    log("filtered SQL (probe + exact, 1%) p50 ms", round(statistics.median(filtered_sql_ms), 2))
    log("sweep", json.dumps(sweep_rows))
    log("ef_search", json.dumps(ef_rows))
    return {
        "grpc_p50_ms": round(statistics.median(grpc_ms), 3),
        "rest_p50_ms": round(statistics.median(rest_ms), 3),
        "rest_raw_p50_ms": round(statistics.median(rest_raw_ms), 3),
        "grpc_floor_p50_ms": round(statistics.median(floor_ms), 3),
        "sql_p50_ms": round(statistics.median(sql_ms), 3),
        "grpc_p99_ms": round(pct(grpc_ms, 0.99), 3),
        "rest_p99_ms": round(pct(rest_ms, 0.99), 3),
        "sql_p99_ms": round(pct(sql_ms, 0.99), 3),
        "qps_rest": round(qps_rest, 1),
        "recall_unfiltered": round(recall_unfiltered, 4),
        "recall_filtered": round(min(filtered_recalls.values()), 4),
        "filtered_p50_ms": round(statistics.median(filtered_times), 3),
        "filtered_full_page_share": round(sum(full_pages) / len(full_pages), 4),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=400)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.rows, args.queries))))
