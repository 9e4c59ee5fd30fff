"""Pushed subscriptions at scale: 1,000 concurrent watch streams on one server while a backfill
and sync cycles run (docs/watch.md).

    python -m bench.bench_watch [--watchers 1000] [--rest-share 0.1] [--window 15]

One server process (its own PostgreSQL, a fake OpenAI in a process of its own whose fixed
latency paces the work, so that the work does not depend on how busy the watchers keep the
CPU) and an Envoy in front of it. Table `big` is backfilled (100-row chunks: about ten
checkpoints a second) while table `small` is synced every second with a few source rows
changed every half second. Watchers: WatchVectorTable streams on both tables and WatchTask
streams on the backfill, over gRPC and, for `--rest-share` of them, as NDJSON through Envoy.

- event delay: from the change being committed (the event's `time`: the control plane's
  clock in the transaction of the change) to the event reaching the client, over every event
  of the measured window on every stream; WatchTask messages (no time of their own) are
  matched to the table event of the same task state.
- control-plane query rate: the server's top-level statements in the control database per
  second (pg_stat_statements, preloaded for the run; the bench's own reads left out), with 10
  watchers, with all of them, and with 10 again (the work's own variation); also per window:
  transactions (pg_stat_database), the watch path's statements (the hub's read per change and
  the starting reads of watches), reads and writes per table, and the backfill's rows/s, so
  that a change of the work's pace is told apart from a cost of the watchers.
- server RSS: sampled at the end of each window; the difference, per 1,000 watchers.
- event delay with 10 watchers too (`event_delay_p99_ms_10`): what the design costs, before
  1,000 streams share the two cores with PostgreSQL, Envoy and the bench's own clients.

Last line: {"watchers", "event_delay_p50_ms", "event_delay_p99_ms", "control_plane_queries_per_s_10",
"control_plane_queries_per_s_1000", "server_rss_mb_per_1k_watchers", ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import multiprocessing
import secrets
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import httpx
from embedd.v1 import sync_pb2, sync_pb2_grpc, task_pb2, task_pb2_grpc, values_pb2
from embedd_client import EmbeddClient
from embedd_server.devtools.envoy import DESCRIPTOR, ENVOY_YAML, EnvoyProcess, render_config
from embedd_server.devtools.serverproc import ServerProcess, create_org, new_secret_key

from bench.bench_backfill import load_source
from bench.common import create_table, local_postgres, openai_provider, platform_connection, prepare_databases

BIG_ROWS = 150_000
SMALL_ROWS = 2_000
FAKE_LATENCY_S = 0.1
_RUNNING = values_pb2.TaskStatus.running

# A task state as both streams show it: (task id, status, phase, rows processed).
State = tuple[str, str, str, int]


def _serve_fake(api_key: str, latency_s: float, ready: Any) -> None:
    """A fake OpenAI in a process of its own (its own event loop and CPU time)."""
    from tests.fakes.providers import FakeOpenAI  # noqa: PLC0415 - only in the child process

    async def serve() -> None:
        async with FakeOpenAI(api_key=api_key, latency_s=latency_s) as fake:
            ready.put(fake.base_url)
            await asyncio.Event().wait()

    asyncio.run(serve())


@dataclass
class Recorder:
    """What the streams received, with the wall clock at arrival."""

    measuring: bool = False
    window: tuple[float, float] = (0.0, 0.0)
    table_delays: list[float] = field(default_factory=list)
    state_times: dict[State, float] = field(default_factory=dict)  # a task state -> its event time
    task_arrivals: list[tuple[State, float]] = field(default_factory=list)
    events: int = 0
    first_message: int = 0  # streams that received their first message
    snapshots: int = 0

    def table_event(self, sequence: int, kind: str, at: float, state: State | None) -> None:
        arrived = time.time()
        if kind == "snapshot":
            self.snapshots += 1
        if kind in ("snapshot", "heartbeat"):
            return
        if state is not None:
            self.state_times.setdefault(state, at)
        start, end = self.window
        if self.measuring and start <= at <= end:
            self.table_delays.append(arrived - at)
            self.events += 1

    def task_event(self, state: State) -> None:
        if self.measuring:
            self.task_arrivals.append((state, time.time()))

    def delays_ms(self) -> list[float]:
        start, end = self.window
        matched = [
            arrived - self.state_times[state]
            for state, arrived in self.task_arrivals
            if state in self.state_times and start <= self.state_times[state] <= end
        ]
        return [d * 1000 for d in self.table_delays + matched]


def _phase(value: int) -> str:
    return values_pb2.TaskPhase.Value.Name(value)  # type: ignore[arg-type]


def _status(value: int) -> str:
    return values_pb2.TaskStatus.Value.Name(value)  # type: ignore[arg-type]


async def grpc_table(stub: sync_pb2_grpc.SyncServiceStub, key: str, vt_id: str, rec: Recorder) -> None:
    first = True
    call = stub.WatchVectorTable(
        sync_pb2.WatchVectorTableRequest(vector_table_id=vt_id),
        metadata=(("authorization", f"Bearer {key}"),),
    )
    async for event in call:
        if first:
            rec.first_message, first = rec.first_message + 1, False
        kind = event.WhichOneof("event")
        state = None
        if kind == "progress":
            p = event.progress
            state = (p.task_id, _status(p.status), _phase(p.phase), int(p.rows_processed))
        rec.table_event(event.sequence, kind or "", event.time.ToDatetime(dt.UTC).timestamp(), state)


async def grpc_task(stub: task_pb2_grpc.TaskServiceStub, key: str, task_id: str, rec: Recorder) -> None:
    first, last = True, None
    call = stub.WatchTask(
        task_pb2.WatchTaskRequest(task_id=task_id), metadata=(("authorization", f"Bearer {key}"),)
    )
    async for event in call:
        if first:
            rec.first_message, first = rec.first_message + 1, False
        t = event.task
        state = (t.id, _status(t.status), _phase(t.phase), int(t.progress.rows_processed))
        if state != last:  # a keepalive repeats the state: not an event
            rec.task_event(state)
            last = state


async def rest_stream(
    rest: httpx.AsyncClient, key: str, path: str, rec: Recorder, on_line: Callable[..., None]
) -> None:
    async with rest.stream("GET", path, headers={"Authorization": f"Bearer {key}"}) as response:
        response.raise_for_status()
        first = True
        async for line in response.aiter_lines():
            if not line.strip():
                continue
            if first:
                rec.first_message, first = rec.first_message + 1, False
            on_line(json.loads(line))


def rest_table_line(rec: Recorder) -> Callable[[dict[str, Any]], None]:
    def on_line(event: dict[str, Any]) -> None:
        kind = next(
            k for k in ("snapshot", "progress", "sync_cycle", "status_change", "heartbeat") if k in event
        )
        at = dt.datetime.fromisoformat(event["time"]).timestamp()
        state = None
        if kind == "progress":
            p = event["progress"]
            state = (p["task_id"], p["status"], p["phase"], int(p["rows_processed"]))
        rec.table_event(event["sequence"], kind, at, state)

    return on_line


def rest_task_line(rec: Recorder) -> Callable[[dict[str, Any]], None]:
    last: list[State] = []

    def on_line(event: dict[str, Any]) -> None:
        t = event["task"]
        state = (t["id"], t["status"], t["phase"], int(t["progress"]["rows_processed"]))
        if not last or last[0] != state:
            rec.task_event(state)
            last[:] = [state]

    return on_line


def is_rest(i: int, share: float) -> bool:
    """Pairs of streams (a table watch and a task watch) go through Envoy, `share` of them."""
    return share > 0 and (i // 2) % round(1 / share) == 0


@dataclass
class Fleet:
    """The watch streams, opened in batches, each a task of its own."""

    key: str
    tables: tuple[str, str]
    task_id: str
    channels: list[grpc.aio.Channel]
    rest: httpx.AsyncClient
    rec: Recorder
    rest_share: float
    runners: list[asyncio.Task[None]] = field(default_factory=list)

    def open(self, n: int) -> None:
        for _ in range(n):
            i = len(self.runners)
            rest = is_rest(i, self.rest_share)
            table_watch = i % 2 == 0
            vt_id = self.tables[(i // 2) % 2]
            if rest and table_watch:
                work = rest_stream(
                    self.rest,
                    self.key,
                    f"/v1/vector-tables/{vt_id}/watch",
                    self.rec,
                    rest_table_line(self.rec),
                )
            elif rest:
                work = rest_stream(
                    self.rest, self.key, f"/v1/tasks/{self.task_id}/watch", self.rec, rest_task_line(self.rec)
                )
            else:
                channel = self.channels[i % len(self.channels)]
                if table_watch:
                    work = grpc_table(sync_pb2_grpc.SyncServiceStub(channel), self.key, vt_id, self.rec)
                else:
                    work = grpc_task(task_pb2_grpc.TaskServiceStub(channel), self.key, self.task_id, self.rec)
            self.runners.append(asyncio.create_task(work))

    def failures(self) -> list[BaseException]:
        return [r.exception() for r in self.runners if r.done() and not r.cancelled() and r.exception()]  # type: ignore[misc]

    async def close(self, keep: int = 0) -> None:
        """Ends all streams but the first `keep`."""
        ending, self.runners = self.runners[keep:], self.runners[:keep]
        for runner in ending:
            runner.cancel()
        await asyncio.gather(*ending, return_exceptions=True)


async def with_statement_stats(pg: Any) -> None:
    """pg_stat_statements needs to be preloaded: set it, restart."""
    conn = await asyncpg.connect(pg.superuser_dsn(direct=True))
    try:
        await conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    finally:
        await conn.close()
    pg.stop()
    pg.start()


async def create_extension(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE EXTENSION pg_stat_statements")
    finally:
        await conn.close()


# The statements of the watch path: the hub's read per change, the starting points of a watch.
_WATCH_STATEMENTS = ("%event_sequence AS current%", "%AS latest_task%", "%t.*, v.event_sequence%")


@dataclass(frozen=True)
class Counts:
    transactions: int
    statements: int  # top-level statements the server ran in the control plane
    watch_statements: int


async def counts(admin: asyncpg.Connection[Any]) -> Counts:
    """The control plane's counters now (the server's statements only: not the bench's)."""
    row = await admin.fetchrow(
        "SELECT (SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'bench_control')"
        "   AS transactions,"
        " coalesce(sum(s.calls), 0)::bigint AS statements,"
        " coalesce(sum(s.calls) FILTER (WHERE s.query LIKE ANY ($1)), 0)::bigint AS watch_statements"
        " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid JOIN pg_roles r ON r.oid = s.userid"
        " WHERE d.datname = 'bench_control' AND s.query NOT LIKE '%pg_stat_%'"
        " AND s.query NOT LIKE '%/* bench */%'",
        list(_WATCH_STATEMENTS),
    )
    assert row is not None
    return Counts(row["transactions"], row["statements"], row["watch_statements"])


# Where the control plane's work goes, table by table: scans (reads) and rows written.
_TABLE_STATS = (
    "SELECT relname, seq_scan + coalesce(idx_scan, 0) AS reads,"
    " n_tup_ins + n_tup_upd + n_tup_del AS writes FROM pg_stat_user_tables"
)
_PROCESSED = "/* bench */ SELECT coalesce(sum(rows_processed), 0)::bigint FROM tasks WHERE status = 'running'"


@dataclass
class Window:
    queries_per_s: float  # the server's statements in the control plane
    transactions_per_s: float
    watch_queries_per_s: float  # of those, the watch path's (_WATCH_STATEMENTS)
    rss_mb: float
    snapshots: int  # snapshots the streams received (a slow consumer's resync)
    tables_per_s: dict[str, tuple[float, float]]  # table -> (reads, rows written) per second
    backfill_rows_per_s: float


async def measure_window(
    admin: asyncpg.Connection[Any],
    control: asyncpg.Connection[Any],
    server: ServerProcess,
    rec: Recorder,
    seconds: float,
) -> Window:
    """The server's statements and transactions in the control plane per second over
    `seconds` (both readings lag the backends' counters alike, by up to a second), its RSS,
    and where the reads and writes went."""
    before, stats_before = await counts(admin), await control.fetch(_TABLE_STATS)
    rows_before = await control.fetchval(_PROCESSED)
    started, snapshots = time.time(), rec.snapshots
    rec.window, rec.measuring = (started, started + seconds), True
    await asyncio.sleep(seconds)
    rec.measuring = False
    after, stats_after = await counts(admin), await control.fetch(_TABLE_STATS)
    rows_after = await control.fetchval(_PROCESSED)
    old = {r["relname"]: (r["reads"], r["writes"]) for r in stats_before}
    tables = {
        r["relname"]: (
            round((r["reads"] - old[r["relname"]][0]) / seconds, 1),
            round((r["writes"] - old[r["relname"]][1]) / seconds, 1),
        )
        for r in stats_after
        if r["relname"] in old and (r["reads"], r["writes"]) != old[r["relname"]]
    }
    return Window(
        (after.statements - before.statements) / seconds,
        (after.transactions - before.transactions) / seconds,
        (after.watch_statements - before.watch_statements) / seconds,
        server.sample_rss() / 2**20,
        rec.snapshots - snapshots,
        tables,
        (rows_after - rows_before) / seconds,
    )


async def change_rows(source: str, stop: asyncio.Event) -> None:
    """A few source rows of `small` changed every half second: a sync cycle with changes."""
    conn = await asyncpg.connect(source)
    try:
        i = 0
        while not stop.is_set():
            i += 1
            await conn.execute(
                "UPDATE small SET name = name || '!' WHERE id = ANY($1::int[])",
                [(i * 7 + k) % SMALL_ROWS + 1 for k in range(3)],
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def fake_openai(api_key: str) -> AsyncIterator[str]:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    proc = ctx.Process(target=_serve_fake, args=(api_key, FAKE_LATENCY_S, ready), daemon=True)
    proc.start()
    try:
        yield await asyncio.to_thread(ready.get, True, 30)
    finally:
        proc.terminate()
        proc.join(5)


async def wait_running(client: EmbeddClient, task_id: str) -> None:
    async for event in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id)):
        if event.task.status == _RUNNING and event.task.progress.rows_processed > 0:
            return
    raise AssertionError("the backfill ended before the benchmark began")


async def run(watchers: int, rest_share: float, window_s: float) -> dict[str, Any]:
    password, api_key = secrets.token_urlsafe(12), "sk-bench-" + secrets.token_hex(8)
    with local_postgres() as pg:
        await with_statement_stats(pg)
        control, source = await prepare_databases(pg, password)
        await create_extension(pg.superuser_dsn(direct=True))  # the view, where `admin` reads it
        await load_source(source, "big", BIG_ROWS)
        await load_source(source, "small", SMALL_ROWS)
        key = new_secret_key()
        server = ServerProcess(control, key, engine_chunk_rows="100", engine_inflight_chunks="1").start()
        config = render_config(
            ENVOY_YAML, grpc_host="127.0.0.1", grpc_port=server.port, http_host="127.0.0.1", http_port=0,
            admin_port=0, descriptor=DESCRIPTOR,
        )  # fmt: skip
        stop = asyncio.Event()
        admin = await asyncpg.connect(pg.superuser_dsn(direct=True))
        try:
            async with (
                fake_openai(api_key) as base_url,
                EmbeddClient(f"127.0.0.1:{server.port}", bench_key := create_org(control, key)) as client,
            ):
                conn_id = await platform_connection(client, pg.backend_port, password)
                emb_id = await openai_provider(client, base_url, api_key)

                def table(name: str, interval: int) -> Any:
                    return create_table(
                        client,
                        conn_id,
                        emb_id,
                        name,
                        interval=interval,
                        model="text-embedding-3-small",
                        dimensions=256,
                    )

                small, big = await table("small", 1), await table("big", 3600)
                first = await client.sync.BackfillVectorTable(
                    sync_pb2.BackfillVectorTableRequest(vector_table_id=small.id)
                )
                async for event in client.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=first.task_id)):
                    if event.done:
                        break
                changer = asyncio.create_task(change_rows(source, stop))
                task = await client.sync.BackfillVectorTable(
                    sync_pb2.BackfillVectorTableRequest(vector_table_id=big.id)
                )
                await wait_running(client, task.task_id)
                with EnvoyProcess(config) as envoy:
                    result = await watch_and_measure(
                        server,
                        admin,
                        control,
                        envoy,
                        bench_key,
                        (big.id, small.id),
                        task.task_id,
                        watchers,
                        rest_share,
                        window_s,
                    )
                stop.set()
                await changer
        finally:
            await admin.close()
            server.stop()
    return result


async def watch_and_measure(
    server: ServerProcess,
    admin: asyncpg.Connection[Any],
    control_dsn: str,
    envoy: EnvoyProcess,
    key: str,
    tables: tuple[str, str],
    task_id: str,
    watchers: int,
    rest_share: float,
    window_s: float,
) -> dict[str, Any]:
    """10 watchers, a window; all of them, a window; back to 10, a window (the noise)."""
    rec = Recorder()
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") for _ in range(10)]
    limits = httpx.Limits(max_connections=watchers, max_keepalive_connections=watchers)
    control = await asyncpg.connect(control_dsn)
    async with httpx.AsyncClient(
        base_url=envoy.http_url, timeout=httpx.Timeout(30, read=None), limits=limits
    ) as rest:
        fleet = Fleet(key, tables, task_id, channels, rest, rec, rest_share)
        try:
            fleet.open(10)
            await until(lambda: rec.first_message >= 10, fleet)
            await asyncio.sleep(3)
            few = await measure_window(admin, control, server, rec, window_s)
            events_10 = rec.events / window_s
            delays_10 = sorted(rec.delays_ms())
            rec.events = 0
            rec.table_delays.clear()
            rec.task_arrivals.clear()
            while len(fleet.runners) < watchers:
                fleet.open(min(100, watchers - len(fleet.runners)))
                await until(lambda: rec.first_message >= len(fleet.runners), fleet)
            await asyncio.sleep(3)
            many = await measure_window(admin, control, server, rec, window_s)
            events_all = rec.events / window_s
            delays = sorted(rec.delays_ms())
            assert not fleet.failures(), fleet.failures()[:3]
            rec.table_delays.clear()
            rec.task_arrivals.clear()
            await fleet.close(keep=10)
            await asyncio.sleep(3)
            again = await measure_window(admin, control, server, rec, window_s)
        finally:
            await fleet.close()
            await control.close()
            for channel in channels:
                await channel.close()
    q = statistics.quantiles(delays, n=100) if len(delays) >= 2 else [0.0] * 99
    q_10 = statistics.quantiles(delays_10, n=100) if len(delays_10) >= 2 else [0.0] * 99
    rest_n = sum(1 for i in range(watchers) if is_rest(i, rest_share))
    return {
        "watchers": watchers,
        "event_delay_p50_ms": round(statistics.median(delays), 1) if delays else None,
        "event_delay_p99_ms": round(q[98], 1),
        "control_plane_queries_per_s_10": round(few.queries_per_s, 1),
        f"control_plane_queries_per_s_{watchers}": round(many.queries_per_s, 1),
        "server_rss_mb_per_1k_watchers": round((many.rss_mb - few.rss_mb) / (watchers - 10) * 1000, 1),
        "control_plane_queries_per_s_10_again": round(again.queries_per_s, 1),
        "control_plane_transactions_per_s_10": round(few.transactions_per_s, 1),
        f"control_plane_transactions_per_s_{watchers}": round(many.transactions_per_s, 1),
        "control_plane_transactions_per_s_10_again": round(again.transactions_per_s, 1),
        "watch_path_queries_per_s_10": round(few.watch_queries_per_s, 1),
        f"watch_path_queries_per_s_{watchers}": round(many.watch_queries_per_s, 1),
        "watch_path_queries_per_s_10_again": round(again.watch_queries_per_s, 1),
        "event_delay_p50_ms_10": round(q_10[49], 1),
        "event_delay_p99_ms_10": round(q_10[98], 1),
        "backfill_rows_per_s_10": round(few.backfill_rows_per_s),
        f"backfill_rows_per_s_{watchers}": round(many.backfill_rows_per_s),
        "backfill_rows_per_s_10_again": round(again.backfill_rows_per_s),
        "tables_reads_writes_per_s_10": few.tables_per_s,
        f"tables_reads_writes_per_s_{watchers}": many.tables_per_s,
        "tables_reads_writes_per_s_10_again": again.tables_per_s,
        f"snapshots_resent_{watchers}": many.snapshots,
        "server_rss_mb_10": round(few.rss_mb, 1),
        f"server_rss_mb_{watchers}": round(many.rss_mb, 1),
        "delays_measured": len(delays),
        "table_events_delivered_per_s_10": round(events_10, 1),
        f"table_events_delivered_per_s_{watchers}": round(events_all, 1),
        "rest_watchers": rest_n,
        "window_s": window_s,
    }


async def until(predicate: Callable[[], bool], fleet: Fleet, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        failures = fleet.failures()
        assert not failures, failures[:3]
        assert time.monotonic() < deadline, "the watch streams did not all start"
        await asyncio.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--rest-share", type=float, default=0.1)
    parser.add_argument("--window", type=float, default=15.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.watchers, args.rest_share, args.window))))


if __name__ == "__main__":
    main()
