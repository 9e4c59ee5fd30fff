"""QueryService: semantic search over a vector table (validate -> engine -> proto)."""

from __future__ import annotations

import asyncio
from typing import Any

from embedd.v1 import query_pb2, query_pb2_grpc
from google.protobuf import struct_pb2

from embedd_server.auth import current_principal
from embedd_server.domain.errors import ApiError, Kind, not_found
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
    def __init__(self, store: VectorTableStore, engine: QueryEngine) -> None:
        self._store = store
        self._engine = engine

    async def QueryVectorTable(
        self, request: query_pb2.QueryVectorTableRequest, context: Context
    ) -> query_pb2.QueryVectorTableResponse:
        vt_id = check_id(request.vector_table_id, "vt_", "vector_table_id")
        query = request_from_proto(request)
        p = current_principal()
        results = None
        for attempt in range(_STALE_RETRIES):
            vt = await self._store.get(p.org_id, p.env_id, vt_id)
            if vt is None:
                raise not_found("vector_table_not_found", "Vector table", vt_id)
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
            item = response.results.add(id=r.id, score=r.score)
            item.metadata.update(r.metadata)
            if r.embedded_text is not None:
                item.embedded_text = r.embedded_text
        return response
