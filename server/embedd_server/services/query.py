"""QueryService: semantic search over a vector table (validate -> engine -> proto)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from embedd.v1 import query_pb2, query_pb2_grpc
from google.protobuf import struct_pb2

from embedd_server.auth import current_principal
from embedd_server.domain.errors import ApiError, Kind, not_found
from embedd_server.domain.models import VectorTable
from embedd_server.domain.validation import Violations, check_id
from embedd_server.engine.query import QueryEngine, QueryRequest, StaleTable
from embedd_server.services.base import Context
from embedd_server.store.vector_tables import VectorTableStore

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
MAX_QUERY_CHARS = 10_000
_STALE_RETRIES = 25  # ~6 s of backoff, far longer than a swap's two control-plane writes


def struct_to_python(value: struct_pb2.Struct) -> dict[str, Any]:
    return {k: value_to_python(v) for k, v in value.fields.items()}


def value_to_python(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_python(value.struct_value)
    if kind == "list_value":
        return [value_to_python(v) for v in value.list_value.values]
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def request_from_proto(request: query_pb2.QueryVectorTableRequest) -> QueryRequest:
    v = Violations()
    if not request.query.strip():
        v.add("query", "is required: the text to search for")
    elif len(request.query) > MAX_QUERY_CHARS:
        v.add("query", f"must be at most {MAX_QUERY_CHARS} characters (got {len(request.query)})")
    limit = request.limit or DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        v.add("limit", f"must be between 1 and {MAX_LIMIT} (default {DEFAULT_LIMIT})")
    min_score = request.min_score if request.HasField("min_score") else None
    if min_score is not None and not 0.0 <= min_score <= 1.0:
        v.add("min_score", "must be between 0 and 1 (a cosine similarity)")
    v.raise_if_any()
    return QueryRequest(
        text=request.query,
        limit=limit,
        filters=struct_to_python(request.filters) if request.HasField("filters") else None,
        min_score=min_score,
        include_embedded_text=request.include_embedded_text,
    )


class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    def __init__(self, store: VectorTableStore, engine: QueryEngine, record_ttl_s: float = 1.0) -> None:
        self._store = store
        self._engine = engine
        # Queries are the hot path: a vector table's record (spec, readiness) is reused for
        # `record_ttl_s`, one round trip saved per query. Only ready tables are kept, and a
        # query that meets a swapped table reloads it (StaleTable), so staleness is bounded
        # and never serves the wrong dimensions.
        self._ttl = record_ttl_s
        self._records: dict[tuple[str, str, str], tuple[float, VectorTable]] = {}

    async def _table(self, org_id: str, env_id: str, vt_id: str, *, fresh: bool) -> VectorTable:
        key = (org_id, env_id, vt_id)
        now = time.monotonic()
        cached = self._records.get(key)
        if cached is not None and cached[0] > now and not fresh:
            return cached[1]
        vt = await self._store.get(org_id, env_id, vt_id)
        if vt is None:
            self._records.pop(key, None)
            raise not_found("vector_table_not_found", "Vector table", vt_id)
        if vt.last_synced_at is not None:
            if len(self._records) > 10_000:
                self._records.clear()
            self._records[key] = (now + self._ttl, vt)
        return vt

    async def QueryVectorTable(
        self, request: query_pb2.QueryVectorTableRequest, context: Context
    ) -> query_pb2.QueryVectorTableResponse:
        vt_id = check_id(request.vector_table_id, "vt_", "vector_table_id")
        query = request_from_proto(request)
        p = current_principal()
        results = None
        for attempt in range(_STALE_RETRIES):
            vt = await self._table(p.org_id, p.env_id, vt_id, fresh=attempt > 0)
            try:
                results = await self._engine.query(vt, query)
                break
            except StaleTable:
                # A re-backfill swap is committing; its new spec lands in a moment.
                await asyncio.sleep(0.02 * (attempt + 1))
        if results is None:
            raise ApiError(
                Kind.UNAVAILABLE,
                "vector_table_swapping",
                "The vector table is being swapped in by a re-backfill. Retry in a second.",
            )
        response = query_pb2.QueryVectorTableResponse()
        for r in results:
            # Vectors are float32: digits past the sixth are noise.
            item = response.results.add(id=r.pk, score=round(r.score, 6))
            item.metadata.update(r.metadata)
            if r.embedded_text is not None:
                item.embedded_text = r.embedded_text
        return response
