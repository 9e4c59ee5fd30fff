"""The event hub (engine/hub.py): one read per change whatever the number of watchers, fan-out,
coalesced progress, overflow into a snapshot, bounded memory, unsubscribe on cancel, and an
event rendered once for all its streams."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import sys
from typing import Any

from embedd_server.domain.events import EventBatch, StatusChange, TableEvent
from embedd_server.domain.models import Task
from embedd_server.engine.hub import EventHub, Signal, Watcher
from embedd_server.services.events import RenderCache, event_to_proto

T0 = dt.datetime(2026, 3, 13, tzinfo=dt.UTC)


def task(rows: int, status: str = "running", task_id: str = "task_a") -> Task:
    return Task(
        id=task_id,
        org_id="org_a",
        env_id="env_a",
        task_type="backfill",
        target_id="vt_a",
        status=status,
        attempts=1,
        max_attempts=3,
        last_error=None,
        last_processed_pk=None,
        rows_processed=rows,
        rows_total=1000,
        rows_failed=0,
        lease_owner=None,
        created_at=T0,
        started_at=T0,
        finished_at=None,
        phase="embedding",
    )


class Source:
    """The control plane's events of one table, in memory; counts reads."""

    def __init__(self) -> None:
        self.events: list[TableEvent] = []
        self.reads = 0
        self.deleted = False
        self.history = 1000

    @property
    def current(self) -> int:
        return self.events[-1].sequence if self.events else 0

    def progress(self, rows: int, task_id: str = "task_a", status: str = "running") -> TableEvent:
        seq = self.current + 1
        event = TableEvent(seq, T0 + dt.timedelta(seconds=seq), task=task(rows, status, task_id))
        self.events.append(event)
        return event

    def change(self, previous: str = "synced", status: str = "paused") -> TableEvent:
        event = TableEvent(self.current + 1, T0, change=StatusChange(previous, status))
        self.events.append(event)
        return event

    async def read_after(self, vt_id: str, after: int) -> EventBatch | None:
        self.reads += 1
        await asyncio.sleep(0)  # a real read yields to the loop
        if self.deleted:
            return None
        after_floor = [e for e in self.events if e.sequence > max(after, self.current - self.history)]
        return EventBatch(self.current, self.current - self.history, after_floor)


async def drain(watcher: Watcher, until_seq: int) -> list[TableEvent | Signal]:
    got: list[TableEvent | Signal] = []
    while True:
        item = await watcher.next(5.0)
        assert item is not None, f"nothing arrived; got {got}"
        got.append(item)
        if isinstance(item, Signal) or item.sequence >= until_seq:
            return got


async def test_one_read_per_change_whatever_the_number_of_watchers() -> None:
    source = Source()
    hub = EventHub(source)
    async with contextlib.AsyncExitStack() as stack:
        watchers = [await stack.enter_async_context(hub.subscribe("vt_a")) for _ in range(100)]
        for w in watchers:
            w.start_after(0)
        event = source.change()
        hub.notify(f"vt_a {event.sequence}")
        hub.notify(f"vt_a {event.sequence}")  # a duplicate notification while reading
        for w in watchers:
            assert await drain(w, event.sequence) == [event]
        assert source.reads == 1
        hub.notify(f"vt_a {event.sequence}")  # already read: ignored
        hub.notify("vt_other 7")  # nobody here watches it
        assert source.reads == 1
    assert hub.watchers == 0


async def test_progress_coalesces_for_a_slow_watcher_and_other_events_keep_their_order() -> None:
    """Row counts coalesce; a status change, and a new phase, are kept, in order."""
    source = Source()
    hub = EventHub(source, capacity=4)
    async with hub.subscribe("vt_a") as slow, hub.subscribe("vt_a") as fast:
        slow.start_after(0)
        fast.start_after(0)
        changes = []
        for rows in range(0, 1000, 10):
            source.progress(rows)
            if rows == 500:
                changes.append(source.change("backfilling", "paused"))
            hub.notify(f"vt_a {source.current}")
            await drain(fast, source.current)  # the fast one reads every event as it comes
        assert slow.queued == 2  # one status change, and only the latest progress
        first, second = await slow.next(0), await slow.next(0)
        assert [first] == changes
        assert isinstance(second, TableEvent) and second.task is not None
        assert second.task.rows_processed == 990 and second.sequence == source.current
        indexing = dataclasses.replace(task(1000), phase="indexing")
        for event in (source.progress(1000), TableEvent(source.current + 1, T0, task=indexing)):
            if event.task is indexing:
                source.events.append(event)
            hub.notify(f"vt_a {event.sequence}")
            await drain(fast, event.sequence)
        kept = [await slow.next(0), await slow.next(0)]
        assert [e.task.phase for e in kept if isinstance(e, TableEvent) and e.task] == [
            "embedding",
            "indexing",
        ]


async def test_an_overflowing_watcher_gets_a_snapshot_signal_not_a_silent_gap() -> None:
    source = Source()
    hub = EventHub(source, capacity=3)
    async with hub.subscribe("vt_a") as watcher:
        watcher.start_after(0)
        for _ in range(5):
            source.change()
            hub.notify(f"vt_a {source.current}")
        async with hub.subscribe("vt_a") as probe:  # wait until the hub has read them all
            probe.start_after(source.current - 1)
            source.change()
            hub.notify(f"vt_a {source.current}")
            await drain(probe, source.current)
        assert await watcher.next(0) is Signal.MISSED
        watcher.start_after(source.current)  # the caller sent a snapshot as of now
        assert watcher.queued == 0
        after = source.change()
        hub.notify(f"vt_a {after.sequence}")
        assert await drain(watcher, after.sequence) == [after]


async def test_memory_per_watcher_is_bounded() -> None:
    source = Source()
    hub = EventHub(source, capacity=8)
    async with hub.subscribe("vt_a") as idle, hub.subscribe("vt_a") as probe:
        idle.start_after(0)
        probe.start_after(0)
        for i in range(2000):
            if i % 3:
                source.progress(i, task_id=f"task_{i % 50}")
            else:
                source.change()
        hub.notify(f"vt_a {source.current}")
        await drain(probe, 1)
        while probe.queued:
            await probe.next(0)
        assert idle.queued <= 8
        queue = idle._queue  # what the watcher holds: at most `capacity` references
        assert sys.getsizeof(queue) < 2048


async def test_events_committed_before_the_start_are_left_to_the_snapshot() -> None:
    source = Source()
    hub = EventHub(source)
    async with hub.subscribe("vt_a") as first:
        first.start_after(0)
        early = source.change()
        async with hub.subscribe("vt_a") as late:  # registered; its snapshot is not read yet
            hub.notify(f"vt_a {early.sequence}")
            await drain(first, early.sequence)
            later = source.change()
            hub.notify(f"vt_a {later.sequence}")
            await drain(first, later.sequence)
            late.start_after(early.sequence)  # its snapshot covered `early`, not `later`
            assert await drain(late, later.sequence) == [later]


async def test_a_cancelled_watch_unsubscribes() -> None:
    source = Source()
    hub = EventHub(source)
    entered = asyncio.Event()

    async def watch() -> None:
        async with hub.subscribe("vt_a") as watcher:
            watcher.start_after(0)
            entered.set()
            while True:
                await watcher.next(60.0)

    runner = asyncio.create_task(watch())
    await entered.wait()
    assert hub.watchers == 1
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    assert hub.watchers == 0
    source.change()
    hub.notify(f"vt_a {source.current}")
    assert source.reads == 0  # nobody watches: nothing is read


async def test_a_deleted_table_ends_its_watches() -> None:
    source = Source()
    hub = EventHub(source)
    async with hub.subscribe("vt_a") as watcher:
        watcher.start_after(0)
        source.deleted = True
        hub.notify("vt_a 0")
        assert await watcher.next(5.0) is Signal.GONE
        assert await watcher.next(0) is Signal.GONE  # and stays so


async def test_after_a_lost_listener_resync_reads_what_was_missed() -> None:
    source = Source()
    hub = EventHub(source)
    async with hub.subscribe("vt_a") as watcher:
        watcher.start_after(0)
        missed = source.change()  # its NOTIFY went nowhere: the connection was down
        hub.resync()
        assert await drain(watcher, missed.sequence) == [missed]


async def test_a_history_cut_while_not_listening_means_a_snapshot() -> None:
    source = Source()
    source.history = 3
    hub = EventHub(source)
    async with hub.subscribe("vt_a") as watcher:
        watcher.start_after(0)
        for _ in range(10):
            source.change()
        hub.resync()
        assert await watcher.next(5.0) is Signal.MISSED


async def test_a_failing_read_is_retried() -> None:
    source = Source()
    failures = [OSError("control plane down")]
    real = source.read_after

    async def flaky(vt_id: str, after: int) -> EventBatch | None:
        if failures:
            raise failures.pop()
        return await real(vt_id, after)

    source.read_after = flaky  # type: ignore[method-assign]
    hub = EventHub(source, retry_s=0.01)
    async with hub.subscribe("vt_a") as watcher:
        watcher.start_after(0)
        event = source.change()
        hub.notify(f"vt_a {event.sequence}")
        assert await drain(watcher, event.sequence) == [event]


async def test_progress_carries_the_rate_and_eta_measured_from_event_times() -> None:
    source = Source()
    hub = EventHub(source)
    async with hub.subscribe("vt_a") as watcher:
        watcher.start_after(0)
        for rows in (100, 200, 300):  # one second apart (the events' own times)
            source.progress(rows)
        hub.notify(f"vt_a {source.current}")
        got = await drain(watcher, source.current)
        last = got[-1]
        assert isinstance(last, TableEvent) and last.rows_per_s == 100.0
        assert last.eta_seconds == 7.0  # 700 rows left at 100 rows/s


async def test_closing_the_hub_ends_every_watch_and_refuses_new_ones() -> None:
    hub = EventHub(Source())
    async with hub.subscribe("vt_a") as watcher:
        watcher.start_after(0)
        hub.close()
        assert await watcher.next(5.0) is Signal.CLOSED
        async with hub.subscribe("vt_b") as late:
            assert await late.next(5.0) is Signal.CLOSED


def test_an_event_is_rendered_once_for_all_its_streams() -> None:
    cache: RenderCache[Any] = RenderCache(size=2)
    renders: list[TableEvent] = []

    def render(event: TableEvent) -> Any:
        renders.append(event)
        return event_to_proto(event)

    first, second, third = (TableEvent(i, T0, change=StatusChange("synced", "paused")) for i in (1, 2, 3))
    shared = [cache.get(first, lambda: render(first)) for _ in range(1000)]
    assert len(renders) == 1 and all(m is shared[0] for m in shared)
    assert cache.get(first, lambda: render(first), extra=("rate", 5.0)) is not shared[0]  # other values
    cache.get(second, lambda: render(second))
    cache.get(third, lambda: render(third))  # the oldest goes: at most `size` are kept
    cache.get(first, lambda: render(first))
    assert [e.sequence for e in renders] == [1, 1, 2, 3, 1]
    equal_but_not_the_same = TableEvent(3, T0, change=StatusChange("synced", "paused"))
    cache.get(equal_but_not_the_same, lambda: render(equal_but_not_the_same))
    assert renders[-1] is equal_but_not_the_same  # keyed by the object, not by its value
