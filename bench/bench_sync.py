"""Sync latency, the cost of a poll, and queries across a re-backfill swap.

    python bench/bench_sync.py [--rows 100000] [--swap-rows 20000]

- sync latency: a committed UPDATE of a source row's text, until the query API returns the
  new text for it (1 s poll interval): p50 / p95 over 20 updates.
- poll cost: one batch-mode comparison of `--rows` rows with nothing changed, run directly in
  the database as the server runs it (median of 5), and the rows it ships (must be 0).
- swap under load: a query loop at full speed over gRPC across a whole re-backfill of
  `--swap-rows` rows: failed queries, empty pages, and the longest stall.
Last line: {"sync_latency_p50_s", "sync_latency_p95_s", "poll_ms_100k", "swap_failed_queries",
"swap_max_stall_ms", ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import time
from typing import Any

import asyncpg
from embedd.v1 import (
    query_pb2,
    task_pb2,
    values_pb2,
    vector_table_pb2,
)
from embedd_client import EmbeddClient
from embedd_server.devtools.serverproc import ServerProcess, create_org, new_secret_key
from embedd_server.domain.vector_tables import VectorTableSpec
from embedd_server.services.vector_tables import column_to_proto
from embedd_server.sources.queries import diff_all
from embedd_server.sources.sql import qualified
from google.protobuf import struct_pb2

from bench.bench_backfill import load_source
from bench.common import (
    PRODUCT_COLUMNS,
    backfill,
    create_table,
    local_postgres,
    platform_records,
    prepare_databases,
    wait_task,
)


async def make_table(
    c: EmbeddClient, conn_id: str, emb_id: str, table: str, interval: int
) -> vector_table_pb2.VectorTable:
    vt = await create_table(c, conn_id, emb_id, table, interval=interval)
    await backfill(c, vt.id)
    return vt


async def sync_latency(c: EmbeddClient, source: str, vt_id: str, table: str) -> list[float]:
    owner = await asyncpg.connect(source)
    latencies = []
    try:
        for i in range(20):
            # A unique price makes the row findable by filter (the exact path), so what is
            # measured is sync, not whether an approximate search ranks the row first.
            name, price = f"Probe Lantern {i} {secrets.token_hex(3)}", 100_000 + i
            await owner.execute(
                f"UPDATE {table} SET name = $1, price = $2 WHERE id = $3", name, price, 100 + i
            )
            started = time.perf_counter()
            filters = struct_pb2.Struct()
            filters.update({"price": price})
            while time.perf_counter() - started < 60:
                res = await c.query.QueryVectorTable(
                    query_pb2.QueryVectorTableRequest(
                        vector_table_id=vt_id,
                        query=name,
                        limit=1,
                        include_embedded_text=True,
                        filters=filters,
                    )
                )
                if res.results and name in res.results[0].embedded_text:
                    break
                await asyncio.sleep(0.02)
            latencies.append(time.perf_counter() - started)
    finally:
        await owner.close()
    return latencies


async def poll_cost(source: str, table: str, ref: str) -> tuple[float, int]:
    spec = VectorTableSpec(
        "public", table, "id", "local-lexical-384", 384, PRODUCT_COLUMNS, pk_type="integer"
    )
    query = diff_all(spec, qualified("public", ref))
    conn = await asyncpg.connect(source)
    times, shipped = [], 0
    try:
        for _ in range(5):
            started = time.perf_counter()
            rows = await conn.fetch(query.sql, *query.params)
            times.append(time.perf_counter() - started)
            shipped = max(shipped, len(rows))
    finally:
        await conn.close()
    return statistics.median(times) * 1000, shipped


async def swap_under_load(c: EmbeddClient, vt: vector_table_pb2.VectorTable) -> dict[str, Any]:
    stop = asyncio.Event()
    stats: dict[str, Any] = {"queries": 0, "failed": 0, "empty": 0, "max_ms": 0.0}

    async def loop() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                res = await c.query.QueryVectorTable(
                    query_pb2.QueryVectorTableRequest(
                        vector_table_id=vt.id, query="warm jacket for hiking", limit=10
                    )
                )
                stats["empty"] += not res.results
            except Exception:
                stats["failed"] += 1
            stats["queries"] += 1
            stats["max_ms"] = max(stats["max_ms"], (time.perf_counter() - started) * 1000)

    runner = asyncio.create_task(loop())
    await asyncio.sleep(0.5)
    changed = [column_to_proto(c) for c in PRODUCT_COLUMNS]
    changed[0].name_prefix = "Item: "
    await c.vector_tables.UpdateVectorTable(
        vector_table_pb2.UpdateVectorTableRequest(
            vector_table=vector_table_pb2.VectorTable(id=vt.id, columns=changed)
        )
    )
    tasks = await c.tasks.ListTasks(task_pb2.ListTasksRequest(target_id=vt.id))
    rebackfill = next(t for t in tasks.tasks if t.task_type == values_pb2.TaskType.rebackfill)
    await wait_task(c, rebackfill.id)
    await asyncio.sleep(0.5)
    stop.set()
    await runner
    return stats


async def main(rows: int, swap_rows: int) -> dict[str, Any]:
    password = secrets.token_urlsafe(12)
    with local_postgres() as pg:
        control, source = await prepare_databases(pg, password)
        await load_source(source, "products", rows)
        await load_source(source, "products_small", swap_rows)
        key = new_secret_key()
        server = ServerProcess(control, key, engine_poll_s="0.2").start()
        try:
            api_key = create_org(control, key)
            async with EmbeddClient(f"127.0.0.1:{server.port}", api_key) as c:
                conn_id, emb_id = await platform_records(c, pg.backend_port, password)
                small = await make_table(c, conn_id, emb_id, "products_small", interval=1)
                big = await make_table(c, conn_id, emb_id, "products", interval=3600)
                poll_ms, shipped = await poll_cost(source, "products", big.platform_vector_ref)
                latencies = await sync_latency(c, source, small.id, "products_small")
                swap = await swap_under_load(c, small)
        finally:
            server.stop()
    latencies.sort()
    return {
        "sync_latency_p50_s": round(statistics.median(latencies), 3),
        "sync_latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3),
        "poll_ms_100k": round(poll_ms, 1),
        "poll_rows_shipped": shipped,
        "swap_queries": swap["queries"],
        "swap_failed_queries": swap["failed"],
        "swap_empty_pages": swap["empty"],
        "swap_max_stall_ms": round(swap["max_ms"], 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--swap-rows", type=int, default=20_000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.rows, args.swap_rows))))
