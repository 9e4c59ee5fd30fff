"""Managed mode's filters are never bypassed: random filters over random rows, Qdrant (real
local mode) running the translated filter vs the oracle (tests/oracle.py), as the platform
test does with PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from embedd_server.domain.filters import parse_filters
from embedd_server.services.query import struct_to_python
from embedd_server.sinks.qdrant_filters import METADATA, to_qdrant
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qdrant_client import QdrantClient
from qdrant_client.http import models

from tests.filter_strategies import PROP_COLUMNS, PROP_TYPES, ROW, random_filters
from tests.oracle import evaluate, matches

COLLECTION = "prop_rows"


@pytest.fixture(scope="module")
def qdrant() -> Iterator[QdrantClient]:
    client = QdrantClient(location=":memory:")
    client.create_collection(
        COLLECTION, vectors_config=models.VectorParams(size=2, distance=models.Distance.COSINE)
    )
    yield client
    client.close()


def _load(client: QdrantClient, rows: list[dict[str, Any]]) -> None:
    client.delete(COLLECTION, points_selector=models.FilterSelector(filter=models.Filter()))
    if rows:
        client.upsert(
            COLLECTION,
            [
                models.PointStruct(
                    id=str(uuid.uuid5(uuid.NAMESPACE_OID, str(n))),
                    vector=[1.0, float(n)],
                    # As the store writes it: the metadata JSON of the source query, parsed.
                    payload={"pk": str(n), METADATA: json.loads(json.dumps(row))},
                )
                for n, row in enumerate(rows)
            ],
        )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, max_size=25), filters=random_filters())
def test_filters_never_bypassed(
    qdrant: QdrantClient, rows: list[dict[str, Any]], filters: dict[str, Any]
) -> None:
    struct = struct_pb2.Struct()
    struct.update(filters)
    tree = parse_filters(struct_to_python(struct), PROP_COLUMNS)
    _load(qdrant, rows)
    found, _ = qdrant.scroll(COLLECTION, scroll_filter=to_qdrant(tree), limit=100, with_payload=["pk"])
    expected = {str(n) for n, r in enumerate(rows) if evaluate(filters, r, PROP_TYPES)}
    assert {str(n) for n, r in enumerate(rows) if matches(tree, r)} == expected, (filters, tree)
    assert {p.payload["pk"] for p in found if p.payload} == expected, (filters, to_qdrant(tree))
