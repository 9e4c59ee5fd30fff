"""The replica's event hub: one reader of the control plane per watched vector table, fanning
each event out to every watcher of that table in this process (docs/watch.md).

A NOTIFY on `embedd_events` (store/events.py) says that table T has an event numbered N. If
this replica has watchers of T and has not read N yet, the hub reads T's events after the last
one it read - one query, whatever the number of watchers - and offers each to every watcher.
NOTIFY reaches only the sessions listening when it is sent (docs/facts.md, "PostgreSQL
LISTEN/NOTIFY"): after the LISTEN connection was lost, `resync` reads every watched table
again. The rows are the truth; the notifications only say when to look.

A watcher never holds more than `capacity` events. Progress of a task whose status and phase
did not change coalesces (the newer event replaces the one still queued); anything else that
does not fit makes the watcher drop its queue and ask for a snapshot instead
(`Signal.MISSED`), so a slow consumer costs bounded memory and never delays the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import structlog

from embedd_server.domain.events import EventBatch, TableEvent
from embedd_server.engine.progress import RateWindow, eta

log = structlog.get_logger(__name__)

CAPACITY = 32


class Signal(enum.Enum):
    MISSED = "missed"  # events were dropped: start again from a snapshot
    GONE = "gone"  # the vector table was deleted
    CLOSED = "closed"  # this server is stopping: the client resumes elsewhere


class EventSource(Protocol):
    async def read_after(self, vt_id: str, after: int) -> EventBatch | None:
        """The table's events after `after`; None when the table does not exist."""
        ...


def _everything(event: TableEvent) -> bool:
    return True


class Watcher:
    """One watch's bounded mailbox. Until `start_after` it keeps what it is offered; after,
    only events past the sequence its caller already covered."""

    def __init__(
        self,
        capacity: int,
        accept: Callable[[TableEvent], bool],
        on_start: Callable[[int], None],
    ) -> None:
        self._capacity = capacity
        self._accept = accept
        self._on_start = on_start
        self._queue: deque[TableEvent] = deque()
        self._signal: Signal | None = None
        self._ready = asyncio.Event()
        self._high = -1  # the highest sequence queued or covered

    def start_after(self, sequence: int) -> None:
        """Everything up to `sequence` has been sent (a snapshot, or the history)."""
        self._high = max(self._high, sequence)
        while self._queue and self._queue[0].sequence <= sequence:
            self._queue.popleft()
        self._on_start(sequence)

    def offer(self, event: TableEvent) -> None:
        if event.sequence <= self._high or not self._accept(event):
            return
        self._high = event.sequence
        for older in [q for q in self._queue if event.replaces(q)]:
            self._queue.remove(older)  # only row counts moved: the newest progress replaces it
        if len(self._queue) >= self._capacity:
            self.missed()
            return
        self._queue.append(event)
        self._ready.set()

    def missed(self) -> None:
        """Drop what is queued; the watch continues from a new snapshot."""
        self._queue.clear()
        if self._signal is None:
            self._signal = Signal.MISSED
        self._ready.set()

    def gone(self) -> None:
        self._end(Signal.GONE)

    def close(self) -> None:
        self._end(Signal.CLOSED)

    def _end(self, signal: Signal) -> None:
        self._queue.clear()
        self._signal = signal
        self._ready.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def next(self, timeout_s: float) -> TableEvent | Signal | None:
        """The next event or signal; None when nothing came for `timeout_s` seconds."""
        if not self._queue and self._signal is None:
            self._ready.clear()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._ready.wait()
            except TimeoutError:
                return None
        signal = self._signal
        if signal is not None:
            if signal is Signal.MISSED:
                self._signal = None
            return signal
        return self._queue.popleft()


@dataclasses.dataclass(eq=False)
class _Topic:
    """The watchers of one vector table in this process, and how far the hub has read."""

    vt_id: str
    watchers: set[Watcher] = dataclasses.field(default_factory=set)
    position: int | None = None  # None until the first watcher has its starting point
    wanted: bool = False  # there may be events after `position`
    reader: asyncio.Task[None] | None = None
    rates: dict[str, RateWindow] = dataclasses.field(default_factory=dict)


class EventHub:
    def __init__(self, source: EventSource, *, capacity: int = CAPACITY, retry_s: float = 1.0) -> None:
        self._source = source
        self._capacity = capacity
        self._retry_s = retry_s
        self._topics: dict[str, _Topic] = {}
        self._closed = False

    # -- the listener's callbacks

    def notify(self, payload: str) -> None:
        """`<vector table id> <sequence>` from NOTIFY: read it unless already read."""
        vt_id, _, seq = payload.partition(" ")
        topic = self._topics.get(vt_id)
        if topic is None:
            return
        if seq.isdigit() and 0 < int(seq) <= (topic.position if topic.position is not None else -1):
            return
        self._pull(topic)

    def resync(self) -> None:
        """Notifications may have been missed (the LISTEN connection was down): read every
        watched table again."""
        for topic in self._topics.values():
            self._pull(topic)

    # -- watches

    @contextlib.asynccontextmanager
    async def subscribe(
        self, vt_id: str, accept: Callable[[TableEvent], bool] = _everything
    ) -> AsyncIterator[Watcher]:
        """A watcher of the table's events until the block ends. Register first, then read
        the starting point and call `start_after`: nothing committed in between is lost."""
        topic = self._topics.get(vt_id)
        if topic is None:
            topic = self._topics[vt_id] = _Topic(vt_id)
        watcher = Watcher(self._capacity, accept, lambda seq: self._started(topic, seq))
        if self._closed:
            watcher.close()
        topic.watchers.add(watcher)
        try:
            yield watcher
        finally:
            topic.watchers.discard(watcher)
            if not topic.watchers:
                self._drop(topic)

    @property
    def watchers(self) -> int:
        return sum(len(t.watchers) for t in self._topics.values())

    def close(self) -> None:
        """The server is stopping: every watch ends now (its client reconnects, to another
        replica), rather than at the end of the shutdown's grace period."""
        self._closed = True
        for topic in list(self._topics.values()):
            for watcher in list(topic.watchers):
                watcher.close()

    async def stop(self) -> None:
        self.close()
        for topic in list(self._topics.values()):
            self._drop(topic)

    # -- reading

    def _started(self, topic: _Topic, sequence: int) -> None:
        if topic.position is None:
            topic.position = sequence
            if topic.wanted:
                self._pull(topic)

    def _forget(self, topic: _Topic) -> None:
        if self._topics.get(topic.vt_id) is topic:
            del self._topics[topic.vt_id]

    def _drop(self, topic: _Topic) -> None:
        self._forget(topic)
        if topic.reader is not None:
            topic.reader.cancel()

    def _pull(self, topic: _Topic) -> None:
        topic.wanted = True
        if topic.position is not None and (topic.reader is None or topic.reader.done()):
            topic.reader = asyncio.create_task(self._read(topic), name=f"events-{topic.vt_id}")

    async def _read(self, topic: _Topic) -> None:
        while topic.wanted and topic.watchers and topic.position is not None:
            topic.wanted = False
            try:
                batch = await self._source.read_after(topic.vt_id, topic.position)
            except Exception as exc:  # the control plane is unreachable: try again
                log.warning("reading table events failed; retrying", vt_id=topic.vt_id, error=str(exc))
                topic.wanted = True
                await asyncio.sleep(self._retry_s)
                continue
            if batch is None:
                for watcher in list(topic.watchers):
                    watcher.gone()
                self._forget(topic)
                return
            self._dispatch(topic, batch)

    def _dispatch(self, topic: _Topic, batch: EventBatch) -> None:
        assert topic.position is not None
        if not batch.complete_after(topic.position):
            for watcher in list(topic.watchers):  # history cut while nobody could listen
                watcher.missed()
        for event in batch.events:
            delivered = self._measured(topic, event)
            for watcher in list(topic.watchers):
                watcher.offer(delivered)
        topic.position = max(topic.position, batch.current)

    def _measured(self, topic: _Topic, event: TableEvent) -> TableEvent:
        """A progress event with this replica's rows/s and ETA."""
        task = event.task
        if task is None:
            return event
        window = topic.rates.setdefault(task.id, RateWindow())
        rate = window.add(event.at, task.rows_processed)
        if task.done:
            topic.rates.pop(task.id, None)
        return dataclasses.replace(event, rows_per_s=rate, eta_seconds=eta(task, rate))
