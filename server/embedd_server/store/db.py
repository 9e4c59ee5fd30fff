"""The control-plane pool and its versioned migrations."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

log = structlog.get_logger(__name__)

# Where a statement runs: the pool, or one connection (inside a transaction). The stubs make
# these classes generic; the runtime does not.
if TYPE_CHECKING:
    Executor: TypeAlias = asyncpg.Pool[Any] | asyncpg.Connection[Any] | PoolConnectionProxy[Any]
else:
    Executor = Any

# Any constant works; it only has to be the same in every replica.
_MIGRATION_LOCK = 0x656D6264  # "embd"
_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# The listener's connection, as pg_stat_activity shows it.
APPLICATION_NAME = "embedd-listener"


def _migrations() -> list[tuple[int, str, str]]:
    files = resources.files("embedd_server.store") / "migrations"
    found = []
    for entry in files.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


async def migrate(conn: asyncpg.Connection[Any] | PoolConnectionProxy[Any]) -> list[str]:
    """Applies pending migrations in order, one transaction each, under an advisory lock
    so that replicas starting together do not race. Returns the names applied."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in _migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            applied.append(name)
            log.info("migration applied", migration=name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied


async def _no_reset(conn: asyncpg.Connection[Any]) -> None:
    return None


@contextlib.asynccontextmanager
async def acquire(pool: asyncpg.Pool[Any]) -> AsyncIterator[PoolConnectionProxy[Any]]:
    """A pooled connection that is closed, not reused, when asyncpg finds it in the middle of
    an operation that never ended (InternalClientError "another operation is in progress"):
    a session the server ended mid-transaction - a restart, idle_in_transaction_session_timeout
    - can come back from the pool in that state (asyncpg issue 784). The pool opens a new one;
    the caller's attempt fails and is retried like any lost connection."""
    async with pool.acquire() as conn:
        try:
            yield conn
        except asyncpg.InternalClientError:
            conn.terminate()
            raise


async def create_pool(
    dsn: str, *, min_size: int, max_size: int, idle_in_transaction_timeout_s: float = 5.0
) -> asyncpg.Pool[Any]:
    """The control-plane pool, with migrations applied before it is handed out.

    A transaction left open by a process that stalled inside it (paused, partitioned) is
    ended by PostgreSQL after `idle_in_transaction_timeout_s`: its row locks - a task row
    locked by a checkpoint - would otherwise keep the task from every other replica's claim
    (SKIP LOCKED skips it) until the process woke up, or its TCP connection timed out hours
    later (docs/facts.md, "Faults"). Every control-plane transaction runs SQL only, so none
    is idle for long."""
    # No RESET ALL on release: the control plane never changes session state outside a
    # transaction (SET LOCAL only), and the reset would cost every query a round trip.
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        reset=_no_reset,
        server_settings={
            "idle_in_transaction_session_timeout": str(int(idle_in_transaction_timeout_s * 1000))
        },
    )
    async with pool.acquire() as conn:
        await migrate(conn)
    return pool


def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Channel:
    """A NOTIFY channel and who hears it. `on_ready` runs whenever the channel is listened
    to (again); `on_lost` when the connection dropped: notifications may be missed until the
    next `on_ready`."""

    name: str
    on_message: Callable[[str], None]
    on_ready: Callable[[], None] = _nothing
    on_lost: Callable[[], None] = _nothing


class Listener:
    """LISTEN on a few channels over one dedicated connection (one per process), reconnecting
    when it drops. `healthy` is False while disconnected."""

    def __init__(self, dsn: str, channels: Sequence[Channel]) -> None:
        self._dsn = dsn
        self._channels = tuple(channels)
        self._conn: asyncpg.Connection[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self.healthy = False

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.create_task(self._watch(), name="listen")

    @property
    def server_pid(self) -> int | None:
        """The control-plane backend serving the LISTEN (pg_stat_activity.pid), if connected."""
        conn = self._conn
        return conn.get_server_pid() if conn is not None and not conn.is_closed() else None

    async def _connect(self) -> None:
        conn: asyncpg.Connection[Any] = await asyncpg.connect(
            self._dsn, server_settings={"application_name": APPLICATION_NAME}
        )
        for channel in self._channels:
            await conn.add_listener(channel.name, self._receiver(channel))
        conn.add_termination_listener(lambda _: self._lost())
        self._conn = conn
        self.healthy = True
        for channel in self._channels:
            channel.on_ready()

    @staticmethod
    def _receiver(channel: Channel) -> Callable[[object, int, str, object], None]:
        def received(_conn: object, _pid: int, _channel: str, payload: object) -> None:
            channel.on_message(str(payload))

        return received

    def _lost(self) -> None:
        if not self.healthy:
            return
        self.healthy = False
        for channel in self._channels:
            channel.on_lost()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._conn is None or self._conn.is_closed():
                self._lost()
                try:
                    await self._connect()
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("listener reconnect failed", error=str(exc))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()
