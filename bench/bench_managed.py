"""Managed mode: backfill into embedded Qdrant against a raw qdrant-client load, and query
latency and filtered recall against the raw client's search.

    python -m bench.bench_managed [--rows 20000] [--queries 200]

Same machine, same run. `--rows` demo products, 384 dimensions, the zero-latency local
embedder, in a throw-away PostgreSQL.

- Baseline load: the very points our backfill writes (same ids, vectors and payloads, computed
  here with the same SQL and embedder) upserted with qdrant-client into a fresh collection of
  a fresh embedded folder, 256 points per call, twice: with the library's storage defaults
  (`baseline_default_rows_per_s`), and with the SQLite tuning the server applies
  (`baseline_rows_per_s`, what `ratio` divides by: our overhead, not the tuning's gain).
- Ours: `POST .../backfill` of a managed table to a server process with its own embedded
  folder, until the task completes (read, compose in SQL, embed, upsert, checkpoints, index).
- Queries, one at a time, each query text sent once before timing (its embedding cached):
  `grpc_p50_ms` QueryVectorTable over gRPC with a price window selecting ~1 % of the rows;
  `raw_p50_ms` the raw client's `query_points` with the same vector and the same filter
  (translated by sinks/qdrant_filters) on the baseline collection. `recall_filtered` is
  recall@10 of the gRPC results against an exact ranking in numpy of the rows the filter
  selects (a hit when its exact score reaches the 10th best: the lexical embedder has ties).

The same two searches without the filter give `grpc_unfiltered_p50_ms` and
`raw_unfiltered_p50_ms` (the embedded engine's filter runs in Python, point by point, and
dominates the filtered numbers; the unfiltered pair shows our path's own cost more plainly).

Last line: {"rows", "rows_per_s", "baseline_rows_per_s", "ratio", "grpc_p50_ms",
"raw_p50_ms", "recall_filtered", "baseline_default_rows_per_s", "grpc_unfiltered_p50_ms",
"raw_unfiltered_p50_ms"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import statistics
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
from embedd.v1 import query_pb2
from embedd_client import EmbeddClient
from embedd_server.devtools.serverproc import ServerProcess, create_org, new_secret_key
from embedd_server.domain.filters import parse_filters
from embedd_server.domain.vector_tables import VectorTableSpec
from embedd_server.providers.base import InputType
from embedd_server.providers.local import LexicalEmbedder, lexical_vector
from embedd_server.sinks.base import SourceRow
from embedd_server.sinks.qdrant import WRITE_BATCH, point_namespace, point_payload
from embedd_server.sinks.qdrant_backend import QdrantBackend
from embedd_server.sinks.qdrant_filters import to_qdrant
from embedd_server.sources.queries import keyset_read
from qdrant_client import QdrantClient
from qdrant_client.http import models

from bench.bench_backfill import load_source
from bench.common import (
    PRODUCT_COLUMNS,
    backfill,
    create_table,
    local_postgres,
    platform_records,
    prepare_databases,
)

DIMS = 384
ALIAS = "baseline"


async def source_points(dsn: str, rows: int) -> tuple[list[SourceRow], np.ndarray[Any, Any]]:
    """The rows our backfill reads and the vectors it computes for them."""
    spec = VectorTableSpec(
        "public", "products", "id", "local-lexical-384", DIMS, PRODUCT_COLUMNS, pk_type="integer"
    )
    query = keyset_read(spec)
    conn = await asyncpg.connect(dsn)
    try:
        fetched = await conn.fetch(query.sql, None, rows, *query.params)
    finally:
        await conn.close()
    source = [SourceRow(r["pk"], r["text"], r["metadata"], r["row_hash"]) for r in fetched]
    vectors = (await LexicalEmbedder().embed([r.text or "" for r in source], InputType.DOCUMENT)).vectors
    return source, vectors


def _client(path: Path) -> QdrantClient:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return QdrantClient(path=str(path))


async def baseline_load(
    path: Path, rows: list[SourceRow], vectors: np.ndarray[Any, Any], *, tuned: bool
) -> float:
    """rows/s of a raw upsert of our points into a fresh collection (256 per call)."""
    backend = QdrantBackend(path=str(path)) if tuned else None
    client = None if tuned else _client(path)
    # Our store's ids and payloads (sinks/qdrant.py); only the calls are the raw client's.
    namespace = point_namespace(ALIAS)
    ids = [str(uuid.uuid5(namespace, r.pk)) for r in rows]
    payloads = [point_payload(r) for r in rows]
    params = models.VectorParams(size=DIMS, distance=models.Distance.COSINE)
    started = time.perf_counter()
    if backend is not None:
        await backend.call("create_collection", "points", vectors_config=params)
    else:
        assert client is not None
        client.create_collection("points", vectors_config=params)
    for start in range(0, len(rows), WRITE_BATCH):
        part = slice(start, start + WRITE_BATCH)
        batch = models.Batch(ids=ids[part], vectors=vectors[part].tolist(), payloads=payloads[part])
        if backend is not None:
            await backend.call("upsert", "points", batch)
        else:
            assert client is not None
            client.upsert("points", batch)
    elapsed = time.perf_counter() - started
    if backend is not None:
        await backend.call(
            "update_collection_aliases",
            [
                models.CreateAliasOperation(
                    create_alias=models.CreateAlias(collection_name="points", alias_name=ALIAS)
                )
            ],
        )
        await backend.aclose()
    if client is not None:
        client.close()
    return len(rows) / elapsed


def price_windows(rows: list[SourceRow], count: int, share: float) -> list[dict[str, Any]]:
    """Price windows `[lo, hi]` that each select about `share` of the rows."""
    prices = sorted(json.loads(r.metadata)["price"] for r in rows)
    width = max(int(len(prices) * share), 10)
    rnd = random.Random(7)
    windows = []
    for _ in range(count):
        lo = rnd.randrange(0, len(prices) - width)
        windows.append({"price": {"gte": prices[lo], "lte": prices[lo + width]}})
    return windows


def exact_hits(
    rows: list[SourceRow], vectors: np.ndarray[Any, Any], query: np.ndarray[Any, Any], window: dict[str, Any]
) -> tuple[float, set[str]]:
    """(10th best exact score, ids) among the rows in the price window."""
    lo, hi = window["price"]["gte"], window["price"]["lte"]
    keep = [i for i, r in enumerate(rows) if lo <= json.loads(r.metadata)["price"] <= hi]
    scores = vectors[keep] @ query
    order = np.argsort(-scores)[:10]
    return float(scores[order[-1]]), {rows[keep[i]].pk for i in order}


async def main(rows: int, queries: int) -> dict[str, object]:
    password = secrets.token_urlsafe(12)
    with local_postgres() as pg, tempfile.TemporaryDirectory(prefix="embedd-bench-qdrant-") as tmp:
        folder = Path(tmp)
        _, source_dsn = await prepare_databases(pg, password)
        control = pg.superuser_dsn("bench_control", direct=True)
        await load_source(source_dsn, "products", rows)
        points, vectors = await source_points(source_dsn, rows)
        default_rps = await baseline_load(folder / "raw-default", points, vectors, tuned=False)
        baseline_rps = await baseline_load(folder / "raw", points, vectors, tuned=True)

        key = new_secret_key()
        server = ServerProcess(control, key, qdrant_path=str(folder / "ours")).start()
        try:
            api_key = create_org(control, key)
            async with EmbeddClient(f"127.0.0.1:{server.port}", api_key) as c:
                conn_id, emb_id = await platform_records(c, pg.backend_port, password, mode="managed")
                vt = await create_table(c, conn_id, emb_id, "products")
                started = time.perf_counter()
                task = await backfill(c, vt.id)
                assert task.progress.rows_processed == rows, task
                rps = rows / (time.perf_counter() - started)
                grpc_ms, recall, grpc_plain_ms = await grpc_queries(c, vt.id, points, vectors, queries)
        finally:
            server.stop()
        raw_ms, raw_plain_ms = await raw_queries(folder / "raw", points, queries)
    return {
        "rows": rows,
        "rows_per_s": round(rps, 1),
        "baseline_rows_per_s": round(baseline_rps, 1),
        "ratio": round(rps / baseline_rps, 3),
        "grpc_p50_ms": round(statistics.median(grpc_ms), 3),
        "raw_p50_ms": round(statistics.median(raw_ms), 3),
        "recall_filtered": round(recall, 4),
        "baseline_default_rows_per_s": round(default_rps, 1),
        "grpc_unfiltered_p50_ms": round(statistics.median(grpc_plain_ms), 3),
        "raw_unfiltered_p50_ms": round(statistics.median(raw_plain_ms), 3),
    }


def _texts(count: int) -> list[str]:
    words = ["warm", "jacket", "tent", "light", "trail", "wool", "stove", "rope", "boots", "pack"]
    rnd = random.Random(3)
    return [" ".join(rnd.sample(words, 3)) for _ in range(count)]


async def grpc_queries(
    client: EmbeddClient, vt_id: str, rows: list[SourceRow], vectors: np.ndarray[Any, Any], count: int
) -> tuple[list[float], float, list[float]]:
    """(latencies in ms, mean recall@10) of filtered gRPC queries, and latencies unfiltered."""
    texts, windows = _texts(count), price_windows(rows, count, 0.01)
    requests, plain = [], []
    for text, window in zip(texts, windows, strict=True):
        request = query_pb2.QueryVectorTableRequest(vector_table_id=vt_id, query=text, limit=10)
        plain.append(query_pb2.QueryVectorTableRequest(vector_table_id=vt_id, query=text, limit=10))
        request.filters.update(window)
        requests.append(request)
        await client.query.QueryVectorTable(request)  # embeds and caches the query text
    latencies, recalls, unfiltered = [], [], []
    for request, bare, text, window in zip(requests, plain, texts, windows, strict=True):
        started = time.perf_counter()
        response = await client.query.QueryVectorTable(request)
        latencies.append((time.perf_counter() - started) * 1000)
        tenth, _ = exact_hits(rows, vectors, lexical_vector(text).astype(np.float64), window)
        got = [r.score for r in response.results]
        recalls.append(sum(1 for s in got if s >= tenth - 1e-6) / 10)
        started = time.perf_counter()
        await client.query.QueryVectorTable(bare)
        unfiltered.append((time.perf_counter() - started) * 1000)
    return latencies, statistics.fmean(recalls), unfiltered


async def raw_queries(path: Path, rows: list[SourceRow], count: int) -> tuple[list[float], list[float]]:
    """Latencies in ms of the raw client's search, same vectors and filters, on the baseline
    (filtered, and unfiltered)."""
    client = _client(path)
    columns = list(PRODUCT_COLUMNS)
    latencies: list[float] = []
    unfiltered: list[float] = []
    try:
        for text, window in zip(_texts(count), price_windows(rows, count, 0.01), strict=True):
            vector = lexical_vector(text).tolist()
            where = to_qdrant(parse_filters(window, columns))
            for filt, out in ((where, latencies), (None, unfiltered)):
                started = time.perf_counter()
                client.query_points(
                    ALIAS, query=vector, query_filter=filt, limit=10, with_payload=["pk", "metadata"]
                )
                out.append((time.perf_counter() - started) * 1000)
    finally:
        client.close()
    return latencies, unfiltered


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.rows, args.queries))))
