"""Envoy and replicas: Envoy restarted under a query load (clients see errors, the server
none), and several servers behind one Envoy, one of which is killed under a query load while
it runs a backfill (only its in-flight requests may fail, Envoy stops routing to it, another
replica takes its task over)."""

from __future__ import annotations

import asyncio
import time

from tests.faults.stack import ROWS, QueryLoad, Stack, envoy_hosts, server_errors
from tests.harness import wait_for


async def test_envoy_restarted_under_load(stack: Stack) -> None:
    server = await stack.start_server()
    table = await stack.synced_table(500)
    envoy = await stack.start_envoy()
    async with stack.rest() as rest:
        load = QueryLoad(rest, table.id).start()
        try:
            await load.wait_ok(50)
            await asyncio.to_thread(envoy.kill)
            killed_at = time.monotonic()
            await wait_for(lambda: bool(load.failed(killed_at)), 10, what="clients to see Envoy gone")
            await asyncio.to_thread(envoy.start)  # same port
            back_at = time.monotonic()
            await load.wait_ok(50, since=back_at)
            steady = time.monotonic()
            await load.wait_ok(50, since=steady)
        finally:
            await load.stop()
    seen = load.failed(killed_at)
    assert seen and not load.failed(steady), load.failed(steady)
    assert not server_errors(stack, server), server_errors(stack, server)
    kinds = sorted(set(seen))
    print(
        f"envoy restarted under load: {len(load.outcomes)} queries, {len(seen)} failed on the client"
        f" side while it was down or its connections were dead ({kinds}), none after; the server"
        f" logged no error; {load.ok(back_at)} ok after the restart; " + await stack.settled(table)
    )


async def test_replica_killed_under_load_during_a_backfill(stack: Stack) -> None:
    servers = [await stack.start_server() for _ in range(3)]
    queried = await stack.synced_table(500)
    envoy = await stack.start_envoy()
    filled = await stack.make_table(await stack.make_source(ROWS))
    stack.provider.latency_s = 0.05
    async with stack.rest() as rest:
        load = QueryLoad(rest, queried.id, concurrency=6).start()
        try:
            await load.wait_ok(60)
            task_id = await stack.backfill(filled)
            victim = stack.replica_of((await stack.wait_progress(task_id, ROWS // 5))["lease_owner"])
            assert victim is not None
            before = envoy_hosts(envoy)
            assert int(before[victim.port]["rq_total"]) > 0, "the victim served no queries"
            victim.kill()
            killed_at = time.monotonic()

            def ejected() -> bool:
                flags = envoy_hosts(envoy)[victim.port]["health_flags"]
                return flags != "healthy"

            await wait_for(ejected, 20, what="Envoy to stop routing to the killed replica")
            ejected_s = time.monotonic() - killed_at
            marked = envoy_hosts(envoy)[victim.port]
            since = time.monotonic()
            await load.wait_ok(100, since=since)
            after = envoy_hosts(envoy)
        finally:
            await load.stop()
    failed = load.failed(killed_at)
    assert len(failed) <= 6, failed  # at most one in flight per client
    assert not load.failed(since), load.failed(since)
    assert after[victim.port]["rq_total"] == marked["rq_total"], "Envoy still sent it requests"
    done = await stack.wait_task(task_id, "completed")
    assert done["attempts"] == 2
    [taker] = [
        s
        for s in servers
        if any(
            r.get("task_id") == task_id and r["event"] == "task attempt done" for r in stack.log_records(s)
        )
    ]
    assert taker is not victim
    for server in servers:
        if server is not victim:
            assert not server_errors(stack, server), server_errors(stack, server)
    print(
        f"replica killed: {len(failed)} of {len(load.outcomes)} queries failed ({failed}); Envoy marked it"
        f" {marked['health_flags']} {ejected_s:.1f}s after the kill; {load.ok(since)} ok after;"
        f" the backfill was taken over by replica {servers.index(taker)}; queried: "
        + await stack.settled(queried)
        + "; filled: "
        + await stack.settled(filled)
    )


async def test_replica_stopped_gracefully_under_load(stack: Stack) -> None:
    """A deploy: SIGTERM. The replica says NOT_SERVING, drains, and hands its task back at
    once (the interrupted attempt does not count); no client sees an error."""
    servers = [await stack.start_server(shutdown_grace_s="2") for _ in range(2)]
    queried = await stack.synced_table(500)
    await stack.start_envoy()
    filled = await stack.make_table(await stack.make_source(ROWS))
    stack.provider.latency_s = 0.05
    async with stack.rest() as rest:
        load = QueryLoad(rest, queried.id, concurrency=6).start()
        try:
            await load.wait_ok(60)
            task_id = await stack.backfill(filled)
            stopped = stack.replica_of((await stack.wait_progress(task_id, ROWS // 5))["lease_owner"])
            assert stopped is not None
            stopping_at = time.monotonic()
            await asyncio.to_thread(stopped.stop)
            stop_s = time.monotonic() - stopping_at
            await load.wait_ok(100, since=time.monotonic())
        finally:
            await load.stop()
    assert not load.failed(stopping_at), load.failed(stopping_at)
    done = await stack.wait_task(task_id, "completed")
    assert done["attempts"] == 1  # handed back, not lost: the next claim is the first that counts
    [survivor] = [s for s in servers if s is not stopped]
    assert not server_errors(stack, survivor), server_errors(stack, survivor)
    print(
        f"replica stopped (SIGTERM) under load: it stopped in {stop_s:.1f}s, 0 of"
        f" {len(load.outcomes)} queries failed, its backfill was handed back and finished by the"
        f" other; queried: " + await stack.settled(queried) + "; filled: " + await stack.settled(filled)
    )
