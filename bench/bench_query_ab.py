"""The query path of this tree against another tree's (a git worktree of an earlier commit),
in one run: one control plane, one vector table, two query servers with their engines off,
and the raw SQL, each query text sent to all three in an order shuffled per round so that
drift and call order weigh on them alike. Differences are medians of per-round pairs.

    git worktree add /tmp/before <commit>
    python -m bench.bench_query_ab --other /tmp/before [--rows 100000] [--queries 2000]

bench-query times each kind in blocks of consecutive calls; on this machine that puts the
gap between gRPC and SQL anywhere from 0.9 to 2.2 ms from one run to the next. Here the
same change is seen to within a few hundredths of a millisecond (docs/query-path.md).

Last line: {"this_p50_ms", "other_p50_ms", "sql_p50_ms", "this_minus_other_ms",
"this_minus_sql_ms", "other_minus_sql_ms"}. `sql` runs the statement the engine runs for an
unfiltered query, on a connection made like this tree's engine's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import statistics
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from embedd.v1 import query_pb2
from embedd_client import EmbeddClient
from embedd_server.devtools.serverproc import ServerProcess, create_org, new_secret_key
from embedd_server.engine.query import QUERY_STATEMENT_CACHE
from embedd_server.network_policy import PERMISSIVE
from embedd_server.providers.local import lexical_vector
from embedd_server.sinks.pgvector import PgVectorTable, encode_vectors
from embedd_server.sinks.pgvector_search import PgVectorSearch, prepare_query_connection
from embedd_server.sources.postgres import connect

from bench.bench_query import LIMIT, compiled, fill, load_source, log, query_texts, source_credentials
from bench.common import local_postgres, prepare_databases

Call = Callable[[int], Awaitable[Any]]


async def _no_reset(conn: asyncpg.Connection[Any]) -> None:
    return None


async def measure(calls: dict[str, Call], rounds: int) -> dict[str, list[float]]:
    for call in calls.values():  # warm: every text once, pools and caches
        for i in range(100):
            await call(i)
    times: dict[str, list[float]] = {name: [] for name in calls}
    loop = asyncio.get_running_loop()
    for i in range(rounds):
        order = list(calls)
        random.shuffle(order)
        for name in order:
            started = loop.time()
            await calls[name](i)
            times[name].append((loop.time() - started) * 1000)
    return times


def paired(a: list[float], b: list[float]) -> float:
    return round(statistics.median(x - y for x, y in zip(a, b, strict=True)), 3)


async def main(other: Path, rows: int, rounds: int) -> dict[str, Any]:
    password = secrets.token_urlsafe(12)
    with local_postgres() as pg:
        control, source = await prepare_databases(pg, password)
        await load_source(source, rows)
        key = new_secret_key()
        filler = ServerProcess(control, key).start()
        servers: list[ServerProcess] = [filler]
        try:
            api_key = create_org(control, key)
            async with EmbeddClient(filler.target, api_key) as client:
                vt = await fill(client, pg.backend_port, password, rows)
            filler.stop()
            this = ServerProcess(control, key, engine_enabled="false")
            that = ServerProcess(control, key, engine_enabled="false")
            that.env["PYTHONPATH"] = f"{other / 'server'}"  # ahead of this tree's install
            servers += [this.start(), that.start()]
            creds = source_credentials(pg.backend_port, password)

            async def make(*_: object, **__: object) -> asyncpg.Connection[Any]:
                return await connect(creds, policy=PERMISSIVE, statement_cache_size=QUERY_STATEMENT_CACHE)

            texts = query_texts(50)
            search = PgVectorSearch(PgVectorTable("public", vt.platform_vector_ref, 384, halfvec=True))
            statements = [
                search.hnsw(encode_vectors(lexical_vector(t)[None, :])[0], compiled(None), LIMIT, False)
                for t in texts
            ]
            pool: asyncpg.Pool[Any] = await asyncpg.create_pool(
                connect=make, min_size=1, max_size=2, init=prepare_query_connection, reset=_no_reset
            )
            async with (
                EmbeddClient(this.target, api_key) as c_this,
                EmbeddClient(that.target, api_key) as c_that,
            ):

                def via(c: EmbeddClient) -> Call:
                    async def call(i: int) -> None:
                        request = query_pb2.QueryVectorTableRequest(
                            vector_table_id=vt.id, query=texts[i % len(texts)], limit=LIMIT
                        )
                        await c.query.QueryVectorTable(request)

                    return call

                async def via_sql(i: int) -> None:
                    statement = statements[i % len(statements)]
                    async with pool.acquire() as conn:
                        await conn.fetch(statement.sql, *statement.params)

                try:
                    t = await measure({"this": via(c_this), "other": via(c_that), "sql": via_sql}, rounds)
                finally:
                    await pool.close()
        finally:
            for server in servers:
                server.stop()
    log("other tree", other)
    return {
        "this_p50_ms": round(statistics.median(t["this"]), 3),
        "other_p50_ms": round(statistics.median(t["other"]), 3),
        "sql_p50_ms": round(statistics.median(t["sql"]), 3),
        "this_minus_other_ms": paired(t["this"], t["other"]),
        "this_minus_sql_ms": paired(t["this"], t["sql"]),
        "other_minus_sql_ms": paired(t["other"], t["sql"]),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--other", type=Path, required=True, help="the other tree (a git worktree)")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000, help="rounds: one query to each of the three")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.other.resolve(), args.rows, args.queries))))
