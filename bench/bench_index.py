"""ANN index choice by measurement: build time and recall@10 per index kind and dimension.

    python -m bench.bench_index [--rows 100000] [--queries 200] [--dims 384,1536,3072]

Same machine, same run, same PostgreSQL (maintenance_work_mem 1GB, one parallel maintenance
worker, as the service builds). For each dimension, two vector sets of `--rows` rows:

  lexical    the vectors the service's tests and the fake providers produce
             (providers.local.lexical_vector of the demo products' text; queries are
             "query " + short product phrases, as the fakes embed queries)
  clustered  unit vectors around 100 Gaussian centres (dense, like real embeddings; the
             queries are other draws around the same centres)

and for each index kind, CREATE INDEX is timed and recall@10 measured against an exact
numpy ranking, at the query path's settings (hnsw.ef_search 200):

  vector       HNSW on `embedding vector_cosine_ops` (at most 2000 dims)
  halfvec      HNSW on `(embedding::halfvec(d)) halfvec_cosine_ops`
  bit+rerank   HNSW on `(binary_quantize(embedding)::bit(d)) bit_hamming_ops`, the 200 nearest
               by Hamming distance re-ranked by exact cosine distance

each at ef_construction 64 (pgvector's default) and 32. Last line: one JSON object with every
measurement; docs/indexes.md has the table and the choice made from it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
from embedd_server.devtools.demo_data import products
from embedd_server.providers.local import lexical_vector
from embedd_server.sinks.pgvector import encode_vectors, register_vector_codec

from bench.bench_budget import budget_products
from bench.bench_remote import phrases
from bench.common import local_postgres

K = 10
RERANK = 200
EF_SEARCH = 200


@dataclass(frozen=True)
class Kind:
    name: str
    ef_construction: int

    def expression(self, dims: int) -> tuple[str, str]:
        """(indexed expression, operator class)."""
        if self.name == "vector":
            return "embedding", "vector_cosine_ops"
        if self.name == "halfvec":
            return f"(embedding::halfvec({dims}))", "halfvec_cosine_ops"
        return f"(binary_quantize(embedding)::bit({dims}))", "bit_hamming_ops"

    def search_sql(self, dims: int) -> str:
        if self.name == "vector":
            return f"SELECT id FROM t ORDER BY embedding <=> $1::vector LIMIT {K}"
        if self.name == "halfvec":
            half = f"halfvec({dims})"
            return f"SELECT id FROM t ORDER BY embedding::{half} <=> $1::vector::{half} LIMIT {K}"
        return (
            "SELECT id FROM (SELECT id, embedding FROM t"
            f" ORDER BY binary_quantize(embedding)::bit({dims}) <~> binary_quantize($1::vector)::bit({dims})"
            f" LIMIT {RERANK}) c ORDER BY embedding <=> $1::vector LIMIT {K}"
        )


def kinds(dims: int) -> list[Kind]:
    names = ["halfvec", "bit+rerank"] if dims > 2000 else ["vector", "halfvec", "bit+rerank"]
    return [Kind(n, efc) for n in names for efc in (64, 32)]


def lexical_set(rows: int, queries: int, dims: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    texts = [f"Product: {p.name}\nDescription: {p.description}" for p in products(rows)]
    data = np.vstack([lexical_vector(t, dims) for t in texts]).astype(np.float32)
    rnd = random.Random(7)  # deterministic bench data
    phrases = []
    for _ in range(queries):
        words = rnd.choice(texts).replace("\n", " ").split()
        start = rnd.randrange(max(1, len(words) - 4))
        phrases.append("query " + " ".join(words[start : start + 4]))
    return data, np.vstack([lexical_vector(q, dims) for q in phrases]).astype(np.float32)


def long_set(rows: int, queries: int, dims: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Rows like bench_remote's (descriptions lengthened with shared detail words: many
    near-equal vectors) and its two-word queries."""
    texts = [f"Product: {p.name}\nDescription: {p.description}" for p in budget_products(rows)]
    data = np.vstack([lexical_vector(t, dims) for t in texts]).astype(np.float32)
    return data, np.vstack([lexical_vector(q, dims) for q in phrases(queries)]).astype(np.float32)


def clustered_set(rows: int, queries: int, dims: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((100, dims)).astype(np.float32)

    def draw(n: int) -> np.ndarray[Any, Any]:
        picked = centres[rng.integers(0, 100, n)] + 0.5 * rng.standard_normal((n, dims)).astype(np.float32)
        return (picked / np.linalg.norm(picked, axis=1, keepdims=True)).astype(np.float32)

    return draw(rows), draw(queries)


def exact_top(data: np.ndarray[Any, Any], queries: np.ndarray[Any, Any]) -> list[set[int]]:
    norms = np.linalg.norm(data, axis=1)
    norms[norms == 0] = 1.0
    out = []
    for q in queries:
        scores = (data @ q) / norms
        out.append({int(i) + 1 for i in np.argpartition(-scores, K)[:K]})
    return out


async def load(conn: asyncpg.Connection[Any], data: np.ndarray[Any, Any]) -> None:
    dims = data.shape[1]
    await conn.execute(
        f"DROP TABLE IF EXISTS t; CREATE TABLE t (id integer PRIMARY KEY, embedding vector({dims}))"
    )
    encoded = encode_vectors(data)
    step = 10_000
    for start in range(0, len(encoded), step):
        records = [(start + i + 1, v) for i, v in enumerate(encoded[start : start + step])]
        await conn.copy_records_to_table("t", records=records, columns=["id", "embedding"])
    await conn.execute("VACUUM ANALYZE t")


async def measure(
    conn: asyncpg.Connection[Any], kind: Kind, dims: int, queries: np.ndarray[Any, Any], truth: list[set[int]]
) -> dict[str, Any]:
    expression, ops = kind.expression(dims)
    await conn.execute("DROP INDEX IF EXISTS t_ann")
    started = time.perf_counter()
    await conn.execute(
        f"CREATE INDEX t_ann ON t USING hnsw ({expression} {ops})"
        f" WITH (m = 16, ef_construction = {kind.ef_construction})"
    )
    build_s = time.perf_counter() - started
    sql = kind.search_sql(dims)
    hits, latencies = 0, []
    for q, expected in zip(encode_vectors(queries), truth, strict=True):
        t0 = time.perf_counter()
        rows = await conn.fetch(sql, q)
        latencies.append((time.perf_counter() - t0) * 1000)
        hits += len({r["id"] for r in rows} & expected)
    size = await conn.fetchval("SELECT pg_relation_size('t_ann')")
    return {
        "kind": kind.name,
        "ef_construction": kind.ef_construction,
        "build_s": round(build_s, 1),
        "recall_at_10": round(hits / (K * len(truth)), 3),
        "p50_ms": round(statistics.median(latencies), 2),
        "index_mb": round(size / 2**20, 1),
    }


SETS = {"lexical": lexical_set, "clustered": clustered_set, "long": long_set}


async def run(
    rows: int,
    queries: int,
    dims_list: list[int],
    sets: tuple[str, ...] = ("lexical", "clustered"),
    kind_names: tuple[str, ...] = ("vector", "halfvec", "bit+rerank"),
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with local_postgres() as pg:
        conn = await asyncpg.connect(pg.superuser_dsn(direct=True))
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            await register_vector_codec(conn)
            await conn.execute(
                "SET maintenance_work_mem = '1GB'; SET max_parallel_maintenance_workers = 1;"
                f" SET hnsw.ef_search = {EF_SEARCH}"
            )
            for dims in dims_list:
                for name, make in SETS.items():
                    if name not in sets:
                        continue
                    data, qs = make(rows, queries, dims)
                    truth = exact_top(data, qs)
                    await load(conn, data)
                    for kind in kinds(dims):
                        if kind.name not in kind_names:
                            continue
                        result = {"dims": dims, "vectors": name, **await measure(conn, kind, dims, qs, truth)}
                        print(json.dumps(result), flush=True)
                        results.append(result)
        finally:
            await conn.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--dims", default="384,1536,3072")
    parser.add_argument("--sets", default="lexical,clustered", help="of lexical, clustered, long")
    parser.add_argument("--kinds", default="vector,halfvec,bit+rerank")
    args = parser.parse_args()
    dims = [int(d) for d in args.dims.split(",")]
    results = asyncio.run(
        run(args.rows, args.queries, dims, tuple(args.sets.split(",")), tuple(args.kinds.split(",")))
    )
    print(json.dumps({"rows": args.rows, "queries": args.queries, "results": results}))


if __name__ == "__main__":
    main()
