"""Platform mode search: the SQL a query runs against a pgvector table (and nothing else).

Two paths, chosen by the engine from how many rows the filter selects
(docs/facts.md, "Query paths"; measured again by bench/bench_query.py):

- exact: the rows the filter selects (through the btree metadata expression indexes), ranked
  by exact cosine distance. `OFFSET 0` fences the subquery so the planner cannot hand the
  ORDER BY to the HNSW index: recall 1.0 and `limit` rows whenever `limit` rows match.
- hnsw: the HNSW index with `hnsw.iterative_scan = relaxed_order`, `hnsw.ef_search` and
  `hnsw.max_scan_tuples` (set once on every query connection: ef_search 200 covers twice the
  largest page, 100; 400 for vectors of 1,024 dimensions and more, `ef_search_for`), the
  filter applied during the scan; then re-sorted by exact distance (relaxed order returns
  rows slightly out of order).

`count_sql` is the cheap, exact selectivity probe: it stops counting at the threshold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from embedd_server.domain.vector_tables import HALFVEC_MIN_DIMS, HNSW_MAX_HALFVEC_DIMS
from embedd_server.sinks.base import Hit
from embedd_server.sinks.pgvector import PgVectorTable, register_vector_codec
from embedd_server.sinks.pgvector_filters import CompiledFilter

# Filter parameters are numbered from here: $1 is the query vector (or the probe's limit).
FILTER_FIRST_PARAM = 2
# Measured on 100k x 384 (bench/bench_query.py, unfiltered recall@10 / SQL p50): ef 40 0.82 /
# 2.4 ms, 100 0.92 / 2.8 ms, 128 0.94 / 3.2 ms, 200 0.97 / 4.4 ms; a later build: 200 0.93 /
# 4.4 ms, 300 0.951 / 5.5 ms, 400 0.959 / 7.2 ms. 200 is kept here for latency (docs/indexes.md).
DEFAULT_EF_SEARCH = 200
# Wide vectors (HALFVEC_MIN_DIMS and up: a halfvec index for new tables) need a wider beam.
# On 100k x 1,536 rows that are nearly alike (bench-remote's), halfvec HNSW recall@10 through
# this module's statement: ef 200 0.946 / 7.4 ms, 400 0.973 / 10.6 ms, 800 0.985 / 16.6 ms;
# re-ranking 200 candidates instead of 40 changed nothing (docs/indexes.md).
WIDE_EF_SEARCH = 400
MAX_SCAN_TUPLES = 20_000
# A halfvec index orders by distances of ~3 significant digits: among near-equal candidates
# it may keep the wrong ones. It is asked for this many more, and they are re-ranked by the
# exact distance of the stored vectors (docs/indexes.md, bench/bench_remote.py).
HALFVEC_RERANK_EXTRA = 30
# Cosine distance is at most 2. A zero vector's distance is NaN, which PostgreSQL sorts above
# every number: this drops it (and NULL) instead of returning a NaN score.
_VALID = "d <= 3"

if TYPE_CHECKING:
    Conn: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
else:
    Conn = Any


def ef_search_for(dimensions: int) -> int:
    """The query path's hnsw.ef_search for a table of these dimensions."""
    return WIDE_EF_SEARCH if dimensions >= HALFVEC_MIN_DIMS else DEFAULT_EF_SEARCH


def session_settings(ef_search: int = DEFAULT_EF_SEARCH, max_scan_tuples: int = MAX_SCAN_TUPLES) -> str:
    """Session GUCs of a query connection (pgvector 0.8: iterative_scan takes
    off | relaxed_order | strict_order). One simple-protocol statement."""
    return (
        f"SET hnsw.iterative_scan = relaxed_order; SET hnsw.ef_search = {int(ef_search)};"
        f" SET hnsw.max_scan_tuples = {int(max_scan_tuples)}"
    )


async def prepare_query_connection(conn: asyncpg.Connection[Any], ef_search: int = DEFAULT_EF_SEARCH) -> None:
    """Pool `init` of a query connection: the vector codec and the session GUCs."""
    await register_vector_codec(conn)
    await conn.execute(session_settings(ef_search))


@dataclass(frozen=True, slots=True)
class SearchStatement:
    """One statement of a search: SQL and its parameters (the query vector first)."""

    sql: str
    params: list[object]


class PgVectorSearch:
    """Search statements over one physical vector table."""

    def __init__(self, table: PgVectorTable) -> None:
        self.table = table

    @property
    def has_index(self) -> bool:
        return self.table.dimensions <= HNSW_MAX_HALFVEC_DIMS

    def _columns(self, include_text: bool) -> str:
        text = ", embedded_text" if include_text else ""
        return f"pk_value, metadata{text}, embedding <=> $1::vector AS d"

    def _outer(self, include_text: bool) -> str:
        text = "embedded_text" if include_text else "NULL::text AS embedded_text"
        return f"SELECT pk_value, metadata::text AS metadata, {text}, d FROM"

    def count_sql(self, where: CompiledFilter) -> SearchStatement:
        """How many rows the filter selects, counting no further than $1 (the cap)."""
        sql = f"SELECT count(*) FROM (SELECT 1 FROM {self.table.qualified} WHERE {where.sql} LIMIT $1) s"
        return SearchStatement(sql, [None, *where.params])

    def exact(self, vector: bytes, where: CompiledFilter, limit: int, include_text: bool) -> SearchStatement:
        sql = (
            f"{self._outer(include_text)} (SELECT {self._columns(include_text)}"
            f" FROM {self.table.qualified} WHERE {where.sql} OFFSET 0) s"
            f" WHERE {_VALID} ORDER BY d LIMIT {int(limit)}"
        )
        return SearchStatement(sql, [vector, *where.params])

    def hnsw(self, vector: bytes, where: CompiledFilter, limit: int, include_text: bool) -> SearchStatement:
        dims = self.table.dimensions
        if self.table.halfvec:
            order = f"{self.table.vector_expression()} <=> ($1::vector)::halfvec({dims})"
        else:
            order = f"{self.table.vector_expression()} <=> $1::vector"
        candidates = limit + HALFVEC_RERANK_EXTRA if self.table.halfvec else limit
        sql = (
            f"{self._outer(include_text)} (SELECT {self._columns(include_text)}"
            f" FROM {self.table.qualified} WHERE {where.sql} ORDER BY {order} LIMIT {int(candidates)}) s"
            f" WHERE {_VALID} ORDER BY d LIMIT {int(limit)}"
        )
        return SearchStatement(sql, [vector, *where.params])


async def run_count(conn: Conn, statement: SearchStatement, cap: int) -> int:
    params = [cap, *statement.params[1:]]
    return int(await conn.fetchval(statement.sql, *params))


async def run_search(conn: Conn, statement: SearchStatement) -> list[Hit]:
    """The hits as the engine answers them: score = cosine similarity, metadata parsed."""
    rows = await conn.fetch(statement.sql, *statement.params)
    return [Hit(r["pk_value"], 1.0 - r["d"], json.loads(r["metadata"]), r["embedded_text"]) for r in rows]
