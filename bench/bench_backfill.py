"""Backfill throughput against a raw baseline, and server memory against table size.

    python bench/bench_backfill.py [--rows 100000] [--rss-rows 400000]

Same machine, same run, same PostgreSQL: `--rows` products rows, 384 dimensions, the
zero-latency local embedder. Baseline = binary COPY of the same vectors into a fresh table +
CREATE INDEX hnsw (what a hand-written loader would do at best). Ours = POST .../backfill to
a server process until the task completes (read, compose in SQL, embed, COPY, checkpoints,
index). The server's peak RSS is sampled during its backfill; with `--rss-rows` a second
server backfills a table of that size, to show memory does not grow with the table.
Last line: {"rows", "rows_per_s", "baseline_rows_per_s", "ratio", "peak_rss_mb", ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time

import asyncpg
from embedd_client import EmbeddClient
from embedd_server.devtools.demo_data import SCHEMA, products
from embedd_server.devtools.serverproc import ServerProcess, create_org, new_secret_key
from embedd_server.domain.vector_tables import VectorTableSpec
from embedd_server.providers.base import InputType
from embedd_server.providers.local import LexicalEmbedder
from embedd_server.sinks.pgvector import PgVectorTable, VectorRow, encode_vectors, register_vector_codec
from embedd_server.sources.queries import keyset_read

from bench.common import (
    PRODUCT_COLUMNS,
    backfill,
    create_table,
    local_postgres,
    platform_records,
    prepare_databases,
    sample_until,
)

COLUMNS = PRODUCT_COLUMNS


async def load_source(dsn: str, table: str, rows: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA.replace("public.products", f"public.{table}"))
        await conn.copy_records_to_table(
            table,
            records=[tuple(p) for p in products(rows)],
            columns=["id", "name", "description", "category", "price", "in_stock"],
        )
        await conn.execute(f"GRANT SELECT ON {table} TO bench_user; ANALYZE {table}")
    finally:
        await conn.close()


async def baseline(dsn: str, table: str, rows: int) -> float:
    """rows/s of COPY + CREATE INDEX for the very vectors our backfill computes."""
    spec = VectorTableSpec("public", table, "id", "local-lexical-384", 384, tuple(COLUMNS), pk_type="integer")
    query = keyset_read(spec)
    conn = await asyncpg.connect(dsn)
    try:
        fetched = await conn.fetch(query.sql, None, rows, *query.params)
        vectors = (await LexicalEmbedder().embed([r["text"] for r in fetched], InputType.DOCUMENT)).vectors
        encoded = encode_vectors(vectors)
        records = [
            VectorRow(r["pk"], encoded[i], r["text"], r["metadata"], r["row_hash"])
            for i, r in enumerate(fetched)
        ]
        target = PgVectorTable("public", "baseline_vectors", 384, halfvec=True)  # the server's index
        await target.create(conn, with_index=False)
        await register_vector_codec(conn)
        started = time.perf_counter()
        await target.write(conn, records, upsert=False)
        await target.create_hnsw(conn, "1GB")
        elapsed = time.perf_counter() - started
        await target.drop(conn)
        return rows / elapsed
    finally:
        await conn.close()


async def ours(
    control: str, key: str, pg_port: int, password: str, table: str, rows: int
) -> tuple[float, int]:
    """(rows/s, peak RSS bytes) of a backfill by a fresh server process (the same secret key
    for every run: they share one control plane, as replicas do)."""
    server = ServerProcess(control, key).start()
    try:
        api_key = create_org(control, key)
        async with EmbeddClient(f"127.0.0.1:{server.port}", api_key) as c:
            conn_id, emb_id = await platform_records(c, pg_port, password)
            vt = await create_table(c, conn_id, emb_id, table)
            done = asyncio.Event()
            sampler = asyncio.create_task(sample_until(server, done))
            started = time.perf_counter()
            task = await backfill(c, vt.id)
            assert task.progress.rows_processed == rows, task
            elapsed = time.perf_counter() - started
            done.set()
            await sampler
        return rows / elapsed, server.peak_rss
    finally:
        server.stop()


async def main(rows: int, rss_rows: int) -> dict[str, object]:
    password = secrets.token_urlsafe(12)
    with local_postgres() as pg:
        control, source = await prepare_databases(pg, password)
        await load_source(source, "products", rows)
        baseline_rps = await baseline(source, "products", rows)
        key = new_secret_key()
        rps, rss = await ours(control, key, pg.backend_port, password, "products", rows)
        result: dict[str, object] = {
            "rows": rows,
            "rows_per_s": round(rps, 1),
            "baseline_rows_per_s": round(baseline_rps, 1),
            "ratio": round(rps / baseline_rps, 3),
            "peak_rss_mb": round(rss / 2**20, 1),
        }
        if rss_rows:
            await load_source(source, "products_large", rss_rows)
            _, rss_large = await ours(control, key, pg.backend_port, password, "products_large", rss_rows)
            result["rss_rows"] = rss_rows
            result["peak_rss_mb_large"] = round(rss_large / 2**20, 1)
            result["rss_growth"] = round(rss_large / rss, 3)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rss-rows", type=int, default=400_000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.rows, args.rss_rows))))
