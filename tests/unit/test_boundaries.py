"""Pure rules at the edges: embedding-column ordinals, numbers that must fit their proto
fields, the embedder registry forgetting decrypted keys, the Envoy log check, and the
search settings a query relies on."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import aiohttp
import pytest
from embedd.v1 import sync_pb2
from embedd_server.domain.models import EmbeddingProvider, Task, VectorTable
from embedd_server.domain.vector_tables import ColumnSpec, VectorTableSpec, order_embedding_columns
from embedd_server.providers.registry import EmbedderRegistry
from embedd_server.secretbox import SecretBox
from embedd_server.services.query import MAX_LIMIT
from embedd_server.services.tasks import task_to_proto
from embedd_server.services.vector_tables import sync_status_to_proto
from embedd_server.sinks.pgvector_search import DEFAULT_EF_SEARCH

from tests.harness import assert_no_lua_errors, lua_errors

NOW = dt.datetime(2026, 3, 13, tzinfo=dt.UTC)


def _emb(name: str, ordinal: int | None = None) -> ColumnSpec:
    return ColumnSpec(name, "embedding", ordinal)


# -- ordinals ----------------------------------------------------------------------------------


def _order(*columns: ColumnSpec) -> list[str]:
    ordered, problems = order_embedding_columns(columns)
    assert problems == []
    spec = VectorTableSpec("public", "t", "id", "m", 3, tuple(ordered))
    return [c.name for c in spec.embedding_columns]


def test_explicit_ordinals_are_honoured_in_any_request_order() -> None:
    assert _order(_emb("b", 2), _emb("a", 1), _emb("c", 3)) == ["a", "b", "c"]
    assert _order(_emb("a", 10), _emb("b", 5)) == ["b", "a"]


def test_columns_without_an_ordinal_follow_those_with_one_in_request_order() -> None:
    # before the fix, `x` took ordinal 1 and tied with `y`: the explicit order was lost
    assert _order(_emb("x"), _emb("y", 1)) == ["y", "x"]
    assert _order(_emb("x"), _emb("y", 2), _emb("z"), _emb("w", 1)) == ["w", "y", "x", "z"]
    assert _order(_emb("x"), _emb("y")) == ["x", "y"]
    ordered, _ = order_embedding_columns([_emb("x"), _emb("y", 2), ColumnSpec("m", "metadata")])
    assert [c.ordinal for c in ordered] == [3, 2, None]


def test_a_duplicate_ordinal_is_an_error_naming_both_columns() -> None:
    _, problems = order_embedding_columns(
        [_emb("name", 1), ColumnSpec("m", "metadata"), _emb("description", 1)]
    )
    assert [p.field for p in problems] == ["columns[2].ordinal"]
    assert "'name' and 'description' both have ordinal 1" in problems[0].description
    _, problems = order_embedding_columns([_emb("a", 0), _emb("b", 10**9)])
    assert [p.field for p in problems] == ["columns[0].ordinal", "columns[1].ordinal"]


# -- numbers that must fit their fields -------------------------------------------------------


def _table(**changes: object) -> VectorTable:
    base = {
        "id": "vt_1",
        "org_id": "o",
        "env_id": "e",
        "name": "t",
        "connection_id": "c",
        "embedding_provider_id": "p",
        "spec": VectorTableSpec("public", "t", "id", "m", 3, (_emb("a", 1),)),
        "sync_status": "synced",
        "platform_vector_ref": "r",
        "created_at": NOW,
        "synced_rows": 5,
        "total_rows": 5,
        "last_synced_at": NOW,
        "last_error": None,
        "last_error_at": None,
    }
    return VectorTable(**{**base, **changes})  # type: ignore[arg-type]


def test_sync_status_numbers_never_fail_the_call() -> None:
    """Counts past 2^32 and a staleness below zero (before the fix: the replica's clock minus
    the database's) used to raise in protobuf, i.e. answer internal_error."""
    msg = sync_status_to_proto(_table(synced_rows=2**40, total_rows=2**41, staleness_s=-12.5))
    # clamped into a uint32, or exact once the counters are 64-bit
    assert msg.synced_rows in (2**32 - 1, 2**40) and msg.total_rows in (2**32 - 1, 2**41)
    assert msg.staleness_secs == 0 and msg.HasField("staleness_secs")
    assert not sync_status_to_proto(_table(last_synced_at=None)).HasField("staleness_secs")
    assert sync_status_to_proto(_table(staleness_s=42.9)).staleness_secs == 42


def test_task_numbers_never_fail_the_call() -> None:
    task = Task(
        "task_1",
        "o",
        "e",
        "backfill",
        "vt_1",
        "running",
        2**40,
        3,
        None,
        None,
        2**40,
        2**40,
        -1,
        None,
        NOW,
        None,
        None,
    )
    msg = task_to_proto(task)
    assert msg.progress.rows_processed > 0 and msg.progress.rows_failed == 0 and msg.attempts == 2**31 - 1


def test_the_numbers_fit_whatever_the_field_type() -> None:
    from embedd_server.services.convert import set_counters  # noqa: PLC0415

    msg = set_counters(sync_pb2.GetSyncStatusResponse(), synced_rows=-5, total_rows=2**70)
    # Counts are doubles (JSON prints numbers, exact to 2^53): any count, never a negative one.
    assert msg.synced_rows == 0 and msg.total_rows == float(2**70)


# -- the embedder registry forgets decrypted keys ----------------------------------------------


def _provider(box: SecretBox, key: str = "sk-one", provider_id: str = "emb_1") -> EmbeddingProvider:
    return EmbeddingProvider(
        provider_id,
        "o",
        "e",
        "p",
        "openai",
        "text-embedding-3-small",
        None,
        NOW,
        box.encrypt(key, bound_to=provider_id),
    )


@pytest.fixture
async def session() -> aiohttp.ClientSession:
    async with aiohttp.ClientSession() as s:
        yield s  # type: ignore[misc]


async def test_deleted_changed_and_old_records_lose_their_embedders(session: aiohttp.ClientSession) -> None:
    box = SecretBox(os.urandom(32))
    now = [0.0]
    registry = EmbedderRegistry(session, box, ttl_s=60.0, max_embedders=4, clock=lambda: now[0])
    record = _provider(box)
    first = registry.get(record, "text-embedding-3-small", 256)
    assert registry.get(record, "text-embedding-3-small", 256) is first  # cached: one limiter per key
    registry.evict(record.id)  # the provider record was deleted
    assert registry.cached(record.id) == 0
    second = registry.get(record, "text-embedding-3-small", 256)
    assert second is not first
    changed = _provider(box, key="sk-two")  # a new key on the same record
    assert registry.get(changed, "text-embedding-3-small", 256) is not second
    assert registry.cached(record.id) == 1
    now[0] += 61  # past the TTL: a record deleted on another replica is forgotten here too
    assert registry.get(changed, "text-embedding-3-small", 256) is not second
    for i in range(10):  # bounded
        registry.get(_provider(box, provider_id=f"emb_{i + 10}"), "text-embedding-3-small", 256)
    assert sum(registry.cached(f"emb_{i + 10}") for i in range(10)) + registry.cached(record.id) <= 4


# -- the Envoy log check, and the search settings ------------------------------------------------


def test_lua_errors_in_the_envoy_log_fail_the_check(tmp_path: Path) -> None:
    log = tmp_path / "envoy.log"
    log.write_text("[warning][config] fine\n")
    assert_no_lua_errors(log)
    log.write_text(
        "[2026-03-13 10:00:00.000][12][error][lua] [source/extensions/filters/http/lua/lua_filter.cc:1]"
        ' script log: [string "..."]:3: attempt to index a nil value\n'
    )
    assert len(lua_errors(log.read_text())) == 1
    with pytest.raises(AssertionError, match="Lua filter logged"):
        assert_no_lua_errors(log)


def test_one_ef_search_covers_every_page() -> None:
    """Why the query path never sets ef_search per query: the session's covers twice the
    largest page. Raising MAX_LIMIT past this needs a per-query setting again."""
    assert DEFAULT_EF_SEARCH >= 2 * MAX_LIMIT
