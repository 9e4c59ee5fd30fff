"""The check every fault scenario ends with, whatever the fault was:

1. every source row is in the vectors exactly once, with its current text, metadata hash and
   (when the scenario knows the provider's vectors) the vector of that text;
2. no task is left running or pending;
3. no build leftovers (`_swap` / `_old` tables in platform mode);
4. nothing in `error` that should not be: the table is `synced` with no `last_error`, and the
   table's tasks all completed except the failures the scenario caused on purpose (each with
   a clear `last_error`, never "internal error").

It waits (polling) until the system has settled - tasks finished, the sync caught up - then
asserts all of it. Where the vectors are is behind `VectorStoreView`: platform mode reads the
user's PostgreSQL; managed mode plugs in a view of its Qdrant collection. The rest goes
through the API and the source database, the same in both modes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import numpy as np
from embedd.v1 import sync_pb2, task_pb2, values_pb2, vector_table_pb2
from embedd_client import EmbeddClient
from embedd_server.domain.vector_tables import VectorTableSpec
from embedd_server.sources.queries import source_rows
from embedd_server.sources.sql import qualified


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored vector, as the check sees it."""

    pk: str
    row_hash: str
    text: str
    vector: np.ndarray[Any, Any]


class VectorStoreView(Protocol):
    """Where a vector table's vectors are (platform: a pgvector table; managed: a collection)."""

    async def stored(self) -> list[Stored]:
        """Every stored vector, duplicates included (a store that allowed them would show them)."""

    async def leftovers(self) -> list[str]:
        """Names of build leftovers (a re-backfill's swap table, the table it replaced)."""


class PgVectorView:
    """Platform mode: the vector table in the user's PostgreSQL."""

    def __init__(self, dsn: str, schema: str, ref: str) -> None:
        self._dsn, self._schema, self._ref = dsn, schema, ref

    async def stored(self) -> list[Stored]:
        conn = await asyncpg.connect(self._dsn)
        try:
            table = qualified(self._schema, self._ref)
            rows = await conn.fetch(
                f"SELECT pk_value, row_hash, embedded_text, embedding::text AS v FROM {table}"
            )
        finally:
            await conn.close()
        return [
            Stored(
                r["pk_value"],
                r["row_hash"],
                r["embedded_text"],
                np.array(json.loads(r["v"]), dtype=np.float32),
            )
            for r in rows
        ]

    async def leftovers(self) -> list[str]:
        conn = await asyncpg.connect(self._dsn)
        try:
            rows = await conn.fetch(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = $1 AND c.relname IN ($2, $3)",
                self._schema,
                f"{self._ref}_swap",
                f"{self._ref}_old",
            )
        finally:
            await conn.close()
        return [r["relname"] for r in rows]


# Builds the view of a vector table from its spec and its API resource.
ViewFactory = Callable[[VectorTableSpec, vector_table_pb2.VectorTable], VectorStoreView]


def platform_views(owner_dsn: str) -> ViewFactory:
    return lambda spec, vt: PgVectorView(owner_dsn, spec.target_schema, vt.platform_vector_ref)


@dataclass
class Settled:
    """What the check saw, for the scenario's report."""

    rows: int
    waited_s: float
    tasks: list[tuple[str, str, int]] = field(default_factory=list)  # (type, status, attempts)

    def __str__(self) -> str:
        tasks = ", ".join(f"{t}:{s}x{a}" for t, s, a in self.tasks)
        return f"{self.rows} rows exactly once, settled after {self.waited_s:.1f}s; tasks {tasks}"


@dataclass
class _Seen:
    problems: list[str]
    rows: int = 0
    tasks: list[task_pb2.Task] = field(default_factory=list)


async def _source(owner_dsn: str, spec: VectorTableSpec) -> dict[str, tuple[str, str]]:
    sql, params = source_rows(spec)
    conn = await asyncpg.connect(owner_dsn)
    try:
        rows = await conn.fetch(f"SELECT pk, row_hash, text FROM ({sql}) src", *params)
    finally:
        await conn.close()
    return {r["pk"]: (r["row_hash"], r["text"]) for r in rows}


async def _spec(control_dsn: str, vt_id: str) -> VectorTableSpec:
    conn = await asyncpg.connect(control_dsn)
    try:
        raw = await conn.fetchval("SELECT spec FROM vector_tables WHERE id = $1", vt_id)
    finally:
        await conn.close()
    assert raw is not None, f"vector table {vt_id} is gone from the control plane"
    return VectorTableSpec.from_json(json.loads(raw) if isinstance(raw, str) else raw)


def _vector_problems(stored: list[Stored], expected: Callable[[str], np.ndarray[Any, Any]]) -> list[str]:
    wrong = [s.pk for s in stored if not np.allclose(s.vector, expected(s.text), atol=1e-5)]
    return [f"{len(wrong)} vector(s) are not their text's, e.g. {wrong[:5]}"] if wrong else []


async def _look(
    client: EmbeddClient,
    control_dsn: str,
    owner_dsn: str,
    vt_id: str,
    views: ViewFactory,
    failed_tasks: int,
    expected_vector: Callable[[str], np.ndarray[Any, Any]] | None,
) -> _Seen:
    """One look at everything the check covers; the problems found (none: settled)."""
    vt = await client.vector_tables.GetVectorTable(
        vector_table_pb2.GetVectorTableRequest(vector_table_id=vt_id)
    )
    spec = await _spec(control_dsn, vt_id)
    view = views(spec, vt)
    source, stored = await asyncio.gather(_source(owner_dsn, spec), view.stored())
    seen = _Seen([], rows=len(source))
    counts = Counter(s.pk for s in stored)
    if dupes := [pk for pk, n in counts.items() if n > 1]:
        seen.problems.append(f"{len(dupes)} row(s) stored more than once, e.g. {dupes[:5]}")
    if missing := sorted(set(source) - set(counts)):
        seen.problems.append(f"{len(missing)} source row(s) missing, e.g. {missing[:5]}")
    if extra := sorted(set(counts) - set(source)):
        seen.problems.append(f"{len(extra)} vector(s) of no source row, e.g. {extra[:5]}")
    stale = [s.pk for s in stored if s.pk in source and (s.row_hash, s.text) != source[s.pk]]
    if stale:
        seen.problems.append(f"{len(stale)} vector(s) behind their source row, e.g. {stale[:5]}")
    if expected_vector is not None and not seen.problems:
        seen.problems += _vector_problems(stored, expected_vector)
    if leftovers := await view.leftovers():
        seen.problems.append(f"leftover tables: {leftovers}")
    for status in (values_pb2.TaskStatus.running, values_pb2.TaskStatus.pending):
        busy = await client.tasks.ListTasks(task_pb2.ListTasksRequest(status=status, limit=100))
        if busy.tasks:
            name = values_pb2.TaskStatus.Value.Name(status)
            seen.problems.append(f"{len(busy.tasks)} task(s) {name}: {[t.id for t in busy.tasks]}")
    status = await client.sync.GetSyncStatus(sync_pb2.GetSyncStatusRequest(vector_table_id=vt_id))
    if status.sync_status != values_pb2.SyncStatus.synced:
        seen.problems.append(f"sync_status is {values_pb2.SyncStatus.Value.Name(status.sync_status)}")
    if status.HasField("last_error"):
        seen.problems.append(f"the table shows an error: {status.last_error}")
    if (status.synced_rows, status.total_rows) != (len(source), len(source)):
        seen.problems.append(f"sync status counts {status.synced_rows:g}/{status.total_rows:g} rows")
    tasks = await client.tasks.ListTasks(task_pb2.ListTasksRequest(target_id=vt_id, limit=100))
    seen.tasks = list(tasks.tasks)
    failed = [t for t in seen.tasks if t.status == values_pb2.TaskStatus.failed]
    if len(failed) != failed_tasks:
        seen.problems.append(
            f"{len(failed)} failed task(s), expected {failed_tasks}: {[t.last_error for t in failed]}"
        )
    if unclear := [
        t.last_error for t in failed if not t.last_error or t.last_error.startswith("internal error")
    ]:
        seen.problems.append(f"failed task(s) without a clear reason: {unclear}")
    return seen


async def assert_settled(
    client: EmbeddClient,
    *,
    control_dsn: str,
    owner_dsn: str,
    vt_id: str,
    views: ViewFactory,
    failed_tasks: int = 0,
    expected_vector: Callable[[str], np.ndarray[Any, Any]] | None = None,
    timeout_s: float = 60.0,
) -> Settled:
    """Waits until the vector table has settled (see the module doc), then asserts it; fails
    with what was still wrong when `timeout_s` passes first."""
    started = time.monotonic()
    while True:
        seen = await _look(client, control_dsn, owner_dsn, vt_id, views, failed_tasks, expected_vector)
        if not seen.problems:
            break
        assert time.monotonic() - started < timeout_s, f"not settled after {timeout_s:g}s: " + "; ".join(
            seen.problems
        )
        await asyncio.sleep(0.2)
    return Settled(
        rows=seen.rows,
        waited_s=time.monotonic() - started,
        tasks=[
            (
                values_pb2.TaskType.Value.Name(t.task_type),
                values_pb2.TaskStatus.Value.Name(t.status),
                t.attempts,
            )
            for t in seen.tasks
        ],
    )
