"""What each way of filling a vector table costs at the provider, on the demo data.

    python -m bench.bench_paths [--rows 5000]

The demo catalogue (`devtools/demo_data.products`, 5,000 rows) behind a server process and
the fake OpenAI (tests/fakes/providers.py; its batch clock runs 36,000 times faster, a day in
2.4 s), text-embedding-3-small at 1,536 dimensions, three vector tables over the same rows:

- `standard`: the normal embeddings API (docs/providers.md);
- `batch`: `embedding_strategy: "batch"`, OpenAI's Batch API (docs/batch.md);
- `import`: `embedding_import` of a `vector(1536)` column holding the vectors the standard
  fill made (docs/import.md: what a user moving from another tool has).

Per path: requests and tokens at the normal API, calls to the Files and Batch APIs, tokens the
batches embedded, and the saving the service reports. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time
from typing import Any

import asyncpg
from embedd.v1 import sync_pb2, values_pb2, vector_table_pb2
from embedd_client import EmbeddClient
from embedd_server.devtools.demo_data import DEFAULT_ROWS, SCHEMA, products
from embedd_server.devtools.serverproc import ServerProcess, create_org, new_secret_key
from embedd_server.services.vector_tables import column_to_proto

from bench.common import (
    PRODUCT_COLUMNS,
    backfill,
    local_postgres,
    openai_provider,
    platform_connection,
    prepare_databases,
)
from tests.fakes.providers import FakeOpenAI

MODEL, DIMENSIONS = "text-embedding-3-small", 1536
FAST_BATCHES = {"batch_durations": (3600.0, 10_800.0, 3600.0), "batch_time_scale": 1 / 36_000}


async def load_products(dsn: str, rows: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA)
        await conn.copy_records_to_table(
            "products",
            records=[tuple(p) for p in products(rows)],
            columns=["id", "name", "description", "category", "price", "in_stock"],
        )
        await conn.execute(f"ALTER TABLE products ADD COLUMN embedding vector({DIMENSIONS})")
        await conn.execute("GRANT SELECT ON products TO bench_user; ANALYZE products")
    finally:
        await conn.close()


async def copy_vectors(dsn: str, ref: str) -> None:
    """The standard fill's vectors into `products.embedding`: vectors made before."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f'UPDATE products p SET embedding = v.embedding FROM "{ref}" v WHERE v.pk_value = p.id::text'
        )
    finally:
        await conn.close()


def table(name: str, conn_id: str, emb_id: str, **extra: Any) -> vector_table_pb2.CreateVectorTableRequest:
    return vector_table_pb2.CreateVectorTableRequest(
        vector_table=vector_table_pb2.VectorTable(
            name=name,
            connection_id=conn_id,
            embedding_provider_id=emb_id,
            source_table="public.products",
            primary_key_column="id",
            embedding_model=MODEL,
            embedding_dimensions=DIMENSIONS,
            columns=[column_to_proto(c) for c in PRODUCT_COLUMNS],
            **extra,
        )
    )


async def fill(
    client: EmbeddClient, fake: FakeOpenAI, request: vector_table_pb2.CreateVectorTableRequest
) -> dict[str, Any]:
    """Creates and fills one table; what the provider saw meanwhile."""
    vt = await client.vector_tables.CreateVectorTable(request)
    fake.reset_counters()
    fake.batches.counters = type(fake.batches.counters)()
    fake.batches.calls.clear()
    started = time.monotonic()
    task = await backfill(client, vt.id)
    status = await client.sync.GetSyncStatus(sync_pb2.GetSyncStatusRequest(vector_table_id=vt.id))
    return {
        "vector_table": vt,
        "seconds": round(time.monotonic() - started, 2),
        "rows": int(task.progress.rows_processed),
        "rows_imported": int(task.progress.rows_imported),
        "normal_api_requests": fake.counters.requests,
        "normal_api_tokens": fake.counters.tokens,
        "batch_api_calls": dict(fake.batches.calls),
        "batches": int(task.progress.batches_completed),
        "batch_tokens": fake.batches.counters.tokens,
        "reported_batch_tokens": int(status.batch_tokens),
        "estimated_saving_tokens": int(status.estimated_saving_tokens),
    }


async def measure(rows: int) -> dict[str, Any]:
    password, api_key = secrets.token_urlsafe(12), "sk-bench-" + secrets.token_hex(8)
    with local_postgres() as pg:
        control, source = await prepare_databases(pg, password)
        await load_products(source, rows)
        key = new_secret_key()
        server = ServerProcess(control, key, batch_poll_s="0.2").start()
        try:
            async with (
                FakeOpenAI(api_key=api_key, **FAST_BATCHES) as fake,  # type: ignore[arg-type]
                EmbeddClient(f"127.0.0.1:{server.port}", create_org(control, key)) as client,
            ):
                conn_id = await platform_connection(client, pg.backend_port, password)
                emb_id = await openai_provider(client, fake.base_url, api_key)
                standard = await fill(client, fake, table("standard", conn_id, emb_id))
                batch = await fill(
                    client,
                    fake,
                    table("batch", conn_id, emb_id, embedding_strategy=values_pb2.EmbeddingStrategy.batch),
                )
                await copy_vectors(source, standard["vector_table"].platform_vector_ref)
                imported = await fill(
                    client,
                    fake,
                    table(
                        "import",
                        conn_id,
                        emb_id,
                        embedding_import=vector_table_pb2.EmbeddingImport(column="embedding"),
                    ),
                )
        finally:
            server.stop()
    paths = {"standard": standard, "batch": batch, "import": imported}
    for path in paths.values():
        del path["vector_table"]
    return {"rows": rows, "model": MODEL, "dimensions": DIMENSIONS, **paths}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.rows))))


if __name__ == "__main__":
    main()
