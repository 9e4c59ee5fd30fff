"""Pushed subscriptions (docs/watch.md): WatchVectorTable over gRPC and REST (NDJSON through
Envoy), WatchTask's phases, resuming by sequence from the bounded history, heartbeats that keep
an idle REST watch open through Envoy, and a LISTEN connection lost and found again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from embedd.v1 import sync_pb2, task_pb2, values_pb2
from embedd_client import EmbeddClient, Reconnect
from embedd_server import app
from embedd_server.config import Settings
from embedd_server.devtools.envoy import EnvoyProcess, render_config
from embedd_server.devtools.pg import LocalPostgres, create_database
from embedd_server.devtools.serverproc import ServerProcess, create_org, new_secret_key
from google.protobuf import json_format

from tests.conftest import UserDb
from tests.harness import (
    ROOT,
    CountingRegistry,
    Org,
    assert_no_lua_errors,
    counting,
    drop_control_plane,
    rest_error,
    wait_for,
)
from tests.integration.test_backfill_durability import make_table
from tests.integration.test_vector_tables import create_vt
from tests.tcpproxy import TcpProxy

Event = dict[str, Any]
KINDS = ("snapshot", "progress", "sync_cycle", "status_change", "heartbeat")
PHASES = ["reading", "embedding", "writing", "indexing"]


def kind(event: Event) -> str:
    return next(k for k in KINDS if k in event)


def as_dict(message: Any) -> Event:
    """A gRPC message as the REST API prints it."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class Watch:
    """Events of one stream, collected in the background."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def of(self, name: str) -> list[Event]:
        return [e[name] for e in self.events if kind(e) == name]

    def sequenced(self) -> list[tuple[int, str]]:
        return [(e["sequence"], kind(e)) for e in self.events if kind(e) != "heartbeat"]

    async def until(self, predicate: Callable[[Event], bool], what: str, within_s: float = 20.0) -> Event:
        await wait_for(lambda: any(predicate(e) for e in self.events), within_s, what=what)
        return next(e for e in self.events if predicate(e))


def runs_of(phases: list[str]) -> list[str]:
    """The phases in the order they came, each run of one phase once."""
    return [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]


def synced(event: Event) -> bool:
    """The table is synced: a snapshot that says so, or the status change to it."""
    if kind(event) == "snapshot":
        return bool(event["snapshot"]["status"]["sync_status"] == "synced")
    return kind(event) == "status_change" and event["status_change"]["status"] == "synced"


def fill_completed(task_type: str) -> Callable[[Event], bool]:
    return lambda e: (
        kind(e) == "progress"
        and e["progress"]["task_type"] == task_type
        and e["progress"]["status"] == "completed"
    )


def status_change(cause: str) -> Callable[[Event], bool]:
    return lambda e: kind(e) == "status_change" and e["status_change"]["cause"] == cause


@contextlib.asynccontextmanager
async def grpc_watch(org: Org | EmbeddClient, vt_id: str, after: int | None = None) -> AsyncIterator[Watch]:
    watch = Watch()
    async with org.client() if isinstance(org, Org) else contextlib.nullcontext(org) as c:
        request = sync_pb2.WatchVectorTableRequest(vector_table_id=vt_id)
        if after is not None:
            request.after_sequence = after
        stream = c.sync.WatchVectorTable(request)

        async def read() -> None:
            async for message in stream:
                watch.events.append(as_dict(message))

        reader = asyncio.create_task(read())
        try:
            yield watch
        finally:
            stream.cancel()
            await asyncio.gather(reader, return_exceptions=True)


@contextlib.asynccontextmanager
async def rest_watch(org: Org, rest: httpx.AsyncClient, vt_id: str, query: str = "") -> AsyncIterator[Watch]:
    watch = Watch()
    ready = asyncio.Event()
    content_type: list[str] = []

    async def read() -> None:
        async with rest.stream("GET", f"/v1/vector-tables/{vt_id}/watch{query}", headers=org.headers()) as r:
            assert r.status_code == 200, await r.aread()
            content_type.append(r.headers["content-type"])
            ready.set()
            async for line in r.aiter_lines():
                if line.strip():
                    watch.events.append(json.loads(line))

    reader = asyncio.create_task(read())
    try:
        await asyncio.wait({reader, asyncio.create_task(ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if reader.done():
            reader.result()
        assert content_type == ["application/x-ndjson"]
        yield watch
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


@pytest.fixture
async def source(user_db: UserDb) -> AsyncIterator[str]:
    """A small source table of the test's own (the test changes its rows)."""
    name = f"watch_{secrets.token_hex(3)}"
    conn = await asyncpg.connect(user_db.owner_dsn)
    try:
        await conn.execute(
            f"CREATE TABLE {name} (id int PRIMARY KEY, name text, description text);"
            f"INSERT INTO {name} SELECT g, 'item ' || g, 'thing ' || g FROM generate_series(1, 50) g;"
            f"GRANT SELECT ON {name} TO embedd_user;"
        )
        yield name
        await conn.execute(f"DROP TABLE {name}")
    finally:
        await conn.close()


NAME_ONLY = [{"name": "name", "role": "embedding"}, {"name": "description", "role": "metadata"}]


async def test_a_table_watch_follows_backfill_status_and_sync_over_grpc_and_rest(
    org: Org, user_db: UserDb, source: str, rest: httpx.AsyncClient
) -> None:
    vt = await create_vt(
        org, user_db, name="watched", source_table=source, columns=NAME_ONLY, sync_interval_seconds=1
    )
    async with grpc_watch(org, vt["id"]) as g, rest_watch(org, rest, vt["id"]) as r:
        first = await g.until(lambda e: True, "the snapshot")
        assert kind(first) == "snapshot" and first["snapshot"]["missed_events"] is False
        assert first["snapshot"]["status"]["sync_status"] == "pending" and "progress" not in first["snapshot"]
        start = first["sequence"]
        task = (await org.http("POST", f"/v1/vector-tables/{vt['id']}/backfill")).json()
        await g.until(status_change("backfill_completed"), "the backfill to complete")

        assert (await org.http("POST", f"/v1/vector-tables/{vt['id']}/sync/pause")).status_code == 200
        await g.until(status_change("paused"), "the pause")
        assert (await org.http("POST", f"/v1/vector-tables/{vt['id']}/sync/resume")).status_code == 200
        await g.until(status_change("resumed"), "the resume")

        owner = await asyncpg.connect(user_db.owner_dsn)
        try:
            await owner.execute(
                f"INSERT INTO {source} VALUES (101, 'new one', 'x'), (102, 'new two', 'y');"
                f"UPDATE {source} SET name = 'renamed' WHERE id = 1;"
                f"UPDATE {source} SET description = 'only metadata' WHERE id = 2;"
                f"DELETE FROM {source} WHERE id = 3;"
            )
        finally:
            await owner.close()
        cycle = await g.until(
            lambda e: kind(e) == "sync_cycle" and e["sync_cycle"]["inserted"] > 0, "the sync cycle"
        )
        counts = {k: cycle["sync_cycle"][k] for k in ("inserted", "reembedded", "metadata_only", "deleted")}
        assert counts == {"inserted": 2, "reembedded": 1, "metadata_only": 1, "deleted": 1}
        assert cycle["sync_cycle"]["failed"] == 0 and cycle["sync_cycle"]["duration_ms"] > 0
        await r.until(lambda e: e.get("sequence") == cycle["sequence"], "the same cycle over REST")

    progress = g.of("progress")
    assert {p["task_id"] for p in progress} == {task["task_id"]}
    assert progress[-1]["status"] == "completed" and progress[-1]["rows_processed"] == 50
    assert progress[-1]["eta_seconds"] == 0
    assert runs_of([p["phase"] for p in progress if p["status"] == "running"]) == PHASES
    causes = [c["cause"] for c in g.of("status_change")]
    assert causes == ["backfill_started", "backfill_completed", "paused", "resumed"]
    sequences = [seq for seq, _ in g.sequenced()]
    assert sequences[0] == start and sequences == sorted(set(sequences)), sequences
    # REST saw the same events (the same numbers, the same kinds), as NDJSON through Envoy.
    assert r.sequenced() == g.sequenced()[: len(r.sequenced())]
    assert r.of("status_change") == g.of("status_change")


async def test_watch_task_says_the_phase_and_has_no_eta_while_indexing(
    org: Org, user_db: UserDb, service: app.Service
) -> None:
    made = await create_vt(org, user_db)
    events: list[task_pb2.WatchTaskResponse] = []
    with counting(service, delay_s=0.3):  # the embedding phase lasts long enough to be seen
        task = (await org.http("POST", f"/v1/vector-tables/{made['id']}/backfill")).json()
        async with org.client() as c:
            async for event in c.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task["task_id"])):
                events.append(event)
    phase = values_pb2.TaskPhase.Value
    running = [e for e in events if e.task.status == values_pb2.TaskStatus.running]
    assert all(e.phase == e.task.phase for e in events)
    runs = runs_of([phase.Name(e.phase) for e in running])
    assert runs in (PHASES, PHASES[1:]), runs  # the watch may begin after the claim's `reading`
    indexing = next(e for e in running if e.phase == phase.Value("indexing"))
    assert indexing.task.progress.rows_processed == indexing.task.progress.rows_total > 0
    assert not indexing.HasField("eta_seconds")  # every row is written; the index has no ETA
    last = events[-1]
    assert last.done and last.phase == phase.Value("unspecified") and last.eta_seconds == 0
    got = (await org.http("GET", f"/v1/tasks/{task['task_id']}")).json()
    assert got["phase"] == "unspecified"


async def test_resume_by_sequence_gets_what_was_missed_or_a_snapshot_that_says_so(
    org: Org, user_db: UserDb, control_dsn: str
) -> None:
    vt = await create_vt(org, user_db)
    async with grpc_watch(org, vt["id"]) as first:
        snapshot = await first.until(lambda e: True, "the snapshot")
    seen = snapshot["sequence"]
    await org.http("POST", f"/v1/vector-tables/{vt['id']}/sync/pause")
    await org.http("POST", f"/v1/vector-tables/{vt['id']}/sync/resume")
    async with grpc_watch(org, vt["id"], after=seen) as resumed:
        await resumed.until(status_change("resumed"), "the events missed")
    assert [kind(e) for e in resumed.events][:2] == ["status_change", "status_change"]
    assert [e["sequence"] for e in resumed.events[:2]] == [seen + 1, seen + 2]

    async with grpc_watch(org, vt["id"], after=seen + 10_000) as future:  # never reached
        got = await future.until(lambda e: True, "a snapshot")
    assert kind(got) == "snapshot" and got["snapshot"]["missed_events"] is True

    ctl = await asyncpg.connect(control_dsn)
    try:  # more status changes than the history holds, straight in the control plane
        await ctl.execute(
            "DO $$ BEGIN FOR i IN 1..1005 LOOP UPDATE vector_tables SET sync_status ="
            f" CASE WHEN sync_status = 'paused' THEN 'pending' ELSE 'paused' END WHERE id = '{vt['id']}';"
            " END LOOP; END $$"
        )
        kept = await ctl.fetchval(
            "SELECT count(*) FROM vector_table_events WHERE vector_table_id = $1", vt["id"]
        )
    finally:
        await ctl.close()
    assert kept <= 1000  # bounded: the events of the last 1,000 sequence numbers
    async with grpc_watch(org, vt["id"], after=seen) as cut:
        got = await cut.until(lambda e: True, "a snapshot")
    assert kind(got) == "snapshot" and got["snapshot"]["missed_events"] is True
    assert got["sequence"] >= seen + 1007


async def test_a_deleted_table_ends_its_watch_with_not_found(org: Org, user_db: UserDb) -> None:
    vt = await create_vt(org, user_db)
    async with org.client() as c:
        stream = c.sync.WatchVectorTable(sync_pb2.WatchVectorTableRequest(vector_table_id=vt["id"]))
        first = await stream.read()
        assert first.WhichOneof("event") == "snapshot"  # type: ignore[union-attr]
        await org.http("DELETE", f"/v1/vector-tables/{vt['id']}")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            while True:
                assert await stream.read() is not grpc.aio.EOF
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "was deleted" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        async with org.client() as c:
            await c.sync.WatchVectorTable(sync_pb2.WatchVectorTableRequest(vector_table_id="vt_nope")).read()
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


# -- a second replica with fast heartbeats, behind an Envoy with a short idle timeout ----------

IDLE_TIMEOUT_S = 1.0


@pytest.fixture
async def replica(server_settings: Settings) -> AsyncIterator[app.Service]:
    """Another server on the session's control plane: API only (the session's server does the
    work), heartbeats every 0.3 s."""
    settings = server_settings.model_copy(
        update={"engine_enabled": False, "watch_heartbeat_s": 0.3, "qdrant_path": None}
    )
    svc = await app.start(settings, embedders=CountingRegistry)
    yield svc
    await svc.stop(0.5)


@pytest.fixture
def short_idle_envoy(replica: app.Service, tmp_path: Any) -> Any:
    config = render_config(
        ROOT / "envoy" / "envoy.yaml",
        grpc_host="127.0.0.1",
        grpc_port=replica.port,
        http_host="127.0.0.1",
        http_port=0,
        admin_port=0,
        descriptor=ROOT / "envoy" / "embedd.binpb",
    )
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    watch_routes = [
        r for r in routes if r["match"].get("path", "").endswith(("/WatchTask", "/WatchVectorTable"))
    ]
    assert len(watch_routes) == 2
    for route in watch_routes:
        route["route"]["idle_timeout"] = f"{IDLE_TIMEOUT_S}s"
    with EnvoyProcess(config, work_dir=tmp_path) as proc:
        yield proc
    assert_no_lua_errors(proc.log_path)


async def test_an_idle_rest_watch_outlives_envoys_idle_timeout(
    org: Org, user_db: UserDb, short_idle_envoy: EnvoyProcess
) -> None:
    vt = await create_vt(org, user_db)
    async with (
        httpx.AsyncClient(base_url=short_idle_envoy.http_url, timeout=30) as rest,
        rest_watch(org, rest, vt["id"]) as watch,
    ):
        loop = asyncio.get_running_loop()
        opened = loop.time()
        await wait_for(lambda: loop.time() - opened > 3 * IDLE_TIMEOUT_S, 10, what="three idle timeouts")
        beats = watch.of("heartbeat")
        assert len(beats) >= 5, watch.events  # ~every 0.3 s
        await org.http("POST", f"/v1/vector-tables/{vt['id']}/sync/pause")  # on the session's server
        change = await watch.until(status_change("paused"), "the pause, still on the same stream")
    assert [kind(e) for e in watch.events].count("snapshot") == 1
    assert change["sequence"] == watch.events[0]["sequence"] + 1
    assert all(e["sequence"] == 0 for e in watch.events if kind(e) == "heartbeat")


async def test_events_missed_while_the_listener_was_down_are_read_again(
    org: Org, user_db: UserDb, replica: app.Service, control_dsn: str
) -> None:
    """The replica's LISTEN connection is ended; a change commits before it is back, so its
    NOTIFY reaches nobody there; the watcher on the replica still gets the event (the hub
    reads every watched table again on reconnect). Proven by the timestamps: the event's row
    is older than the new LISTEN connection (a reconnect that won the race is tried again)."""
    vt = await create_vt(org, user_db)
    replica_org = Org(org.org_id, org.key, org.read_key, f"127.0.0.1:{replica.port}", org.rest)
    listener = replica.listener
    ctl = await asyncpg.connect(control_dsn)
    try:
        async with grpc_watch(replica_org, vt["id"]) as watch:
            await watch.until(lambda e: True, "the snapshot")
            for cause, action in [("paused", "pause"), ("resumed", "resume")] * 2:
                old = listener.server_pid
                await ctl.execute("SELECT pg_terminate_backend($1, 5000)", old)
                await wait_for(lambda: not listener.healthy, 5, what="the replica to notice")
                await org.http("POST", f"/v1/vector-tables/{vt['id']}/sync/{action}")  # on the other server
                change = await watch.until(status_change(cause), f"the {action} after the reconnect")
                await wait_for(
                    lambda old=old: listener.server_pid not in (None, old), 5, what="a new listener"
                )
                reconnected = await ctl.fetchval(
                    "SELECT backend_start FROM pg_stat_activity WHERE pid = $1", listener.server_pid
                )
                committed = await ctl.fetchval(
                    "SELECT created_at FROM vector_table_events WHERE vector_table_id = $1 AND sequence = $2",
                    vt["id"],
                    change["sequence"],
                )
                if committed < reconnected:
                    return  # its NOTIFY went out before the new LISTEN: the resync found it
    finally:
        await ctl.close()
    raise AssertionError("the listener reconnected before every change; nothing was proven")


# -- two server processes on one control plane -----------------------------------------------


@pytest.fixture
async def control(pg: LocalPostgres, user_db: UserDb) -> AsyncIterator[str]:
    name = f"control_{secrets.token_hex(4)}"
    await create_database(pg.superuser_dsn(), name, with_vector=False)
    yield pg.superuser_dsn(name)
    await drop_control_plane(pg, name, user_db.owner_dsn)


async def test_a_replica_that_runs_nothing_streams_the_work_of_another(user_db: UserDb, control: str) -> None:
    """Process A does the backfill; the watchers are on process B (engine off): every event
    reaches them through the control plane (NOTIFY, then B's one read per change)."""
    key = new_secret_key()
    worker = ServerProcess(control, key, engine_chunk_rows="100").start()
    watcher = ServerProcess(control, key, engine_enabled="false").start()
    try:
        api_key = create_org(control, key)
        async with (
            EmbeddClient(f"127.0.0.1:{worker.port}", api_key) as a,
            EmbeddClient(f"127.0.0.1:{watcher.port}", api_key) as b,
        ):
            vt_id = await make_table(a, user_db, "public.products", "replicas")
            async with grpc_watch(b, vt_id) as table:
                await table.until(lambda e: True, "the snapshot")
                task = await a.sync.BackfillVectorTable(
                    sync_pb2.BackfillVectorTableRequest(vector_table_id=vt_id)
                )
                updates = [u async for u in b.watch_task(task.task_id)]
                await table.until(status_change("backfill_completed"), "the table synced, seen on B")
                await a.sync.PauseSync(sync_pb2.PauseSyncRequest(vector_table_id=vt_id))
                await table.until(status_change("paused"), "the pause made on A, seen on B")
    finally:
        worker.stop()
        watcher.stop()
    assert updates[-1].done and updates[-1].task.status == values_pb2.TaskStatus.completed
    assert updates[-1].task.progress.rows_processed == 500
    rows = [p["rows_processed"] for p in table.of("progress") if p["status"] == "running"]
    assert rows == sorted(rows) and len(set(rows)) >= 2 and max(rows) == 500  # checkpoints, in order
    assert runs_of([p["phase"] for p in table.of("progress") if p["status"] == "running"]) == PHASES


async def test_the_client_resumes_a_table_watch_after_a_dropped_connection(
    org: Org, user_db: UserDb, service: app.Service
) -> None:
    """The connection drops; a pause commits before the client is back (its first reconnect
    waits at least 1 s); the re-opened stream starts after the last sequence delivered and
    brings the pause from the history - no second snapshot, nothing missed."""
    vt = await create_vt(org, user_db)
    retries: list[float] = []
    async with TcpProxy("127.0.0.1", service.port) as proxy:
        reconnect = Reconnect(initial_backoff_s=2.0)
        async with EmbeddClient(proxy.target, org.key, reconnect=reconnect) as c:
            events = []
            async for event in c.watch_vector_table(vt["id"], on_retry=lambda err, s: retries.append(s)):
                events.append(event)
                if len(events) == 1:
                    proxy.cut()
                    await org.http("POST", f"/v1/vector-tables/{vt['id']}/sync/pause")
                if event.WhichOneof("event") == "status_change":
                    break
    assert retries and min(retries) >= 1.0 and proxy.connections >= 2
    snapshot, change = events[0], events[-1]
    assert [e.WhichOneof("event") for e in events] == ["snapshot", "status_change"]
    assert change.sequence == snapshot.sequence + 1
    assert change.status_change.cause == values_pb2.StatusCause.paused


async def test_a_stopping_server_ends_its_watches_at_once_so_clients_move_on(
    org: Org, user_db: UserDb, server_settings: Settings
) -> None:
    vt = await create_vt(org, user_db)
    settings = server_settings.model_copy(update={"engine_enabled": False, "qdrant_path": None})
    svc = await app.start(settings, embedders=CountingRegistry)
    async with EmbeddClient(f"127.0.0.1:{svc.port}", org.key) as c:
        stream = c.sync.WatchVectorTable(sync_pb2.WatchVectorTableRequest(vector_table_id=vt["id"]))
        assert (await stream.read()).WhichOneof("event") == "snapshot"  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        started = loop.time()
        stopping = asyncio.create_task(svc.stop(20.0))  # a grace far longer than the test
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stream.read()
        await stopping
    assert loop.time() - started < 5.0
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert getattr(err.value, "reason", "") == "server_stopping"


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/vector-tables/vt_%00abc/watch", 400, "validation_error"),
        ("/v1/vector-tables/conn_abc/watch", 400, "validation_error"),
        ("/v1/vector-tables/vt_doesnotexist/watch", 404, "vector_table_not_found"),
        ("/v1/vector-tables/{vt}/watch?after_sequence=-1", 400, None),
        ("/v1/vector-tables/{vt}/watch?after_sequence=many", 400, None),
        ("/v1/vector-tables/{vt}/watch?since=3", 400, None),
    ],
)
async def test_a_bad_table_watch_is_an_error_not_a_stream(
    org: Org, user_db: UserDb, path: str, status: int, code: str | None
) -> None:
    if "{vt}" in path:
        path = path.replace("{vt}", (await create_vt(org, user_db))["id"])
    response = await org.http("GET", path, key=org.read_key)  # a read_only key may watch
    got_status, got_code, error = rest_error(response)
    assert got_status == status, error
    assert code is None or got_code == code, error
    assert error["message"] and error["request_id"]


async def test_a_rebackfill_is_watched_through_its_swap(org: Org, user_db: UserDb, source: str) -> None:
    vt = await create_vt(org, user_db, name="reembedded", source_table=source, columns=NAME_ONLY)
    await org.http("POST", f"/v1/vector-tables/{vt['id']}/backfill")
    async with grpc_watch(org, vt["id"]) as g:
        # Synced comes first; the fill ends once its index is built, and a column change
        # waits for that (test_index_phase shows the 409 it gets meanwhile).
        await g.until(fill_completed("backfill"), "the first fill and its index")
        renamed = [{"name": "name", "role": "embedding", "name_prefix": "Item: "}, NAME_ONLY[1]]
        r = await org.http("PATCH", f"/v1/vector-tables/{vt['id']}?update_mask=columns", {"columns": renamed})
        assert r.status_code == 200, r.text
        await g.until(status_change("swapped"), "the swap")
    causes = [c["cause"] for c in g.of("status_change")]
    assert causes[-3:] == ["pending_rebackfill", "backfill_started", "swapped"], causes
    rebackfill = [p for p in g.of("progress") if p["task_type"] == "rebackfill"]
    assert runs_of([p["phase"] for p in rebackfill if p["status"] == "running"])[-2:] == [
        "indexing",
        "swapping",
    ]
    assert rebackfill[-1]["status"] == "completed"
    swap = g.of("status_change")[-1]
    assert swap["reason"].startswith("re-backfill swapped in") and swap["status"] == "synced"
