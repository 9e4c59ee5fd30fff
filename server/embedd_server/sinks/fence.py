"""Fencing in the user's database: whoever holds a lease in the control plane is the only one
writing a vector table.

The control plane refuses a stale holder's writes (domain/leases.py), but its writes to the
user's database are in another database: a holder paused past its lease (SIGSTOP, a long GC,
a partition) could wake up and write a chunk, or even commit a swap, after a new holder took
over. So a job holds a session-level advisory lock, keyed by the vector table, on the
connection it writes with. A new holder that finds the lock held (by a holder whose lease it
now has) ends that session with `pg_terminate_backend`: everything the stale holder sends
afterwards is refused by a closed connection. A session whose process died releases the lock
by itself. The same role may terminate its own sessions, so no extra privilege is needed.

Tasks (fills, re-backfills) and sync cycles use separate keys: the control plane never runs
both on one table, and a fill queued while a cycle finishes must not kill it. The lock is
a session's, so the engine needs a real session to the user's database (a proxy in
transaction-pooling mode would not keep it).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

_TERMINATE_WAIT_MS = 5_000
_LOCK_ATTEMPTS = 50
_LOCK_PAUSE_S = 0.1


class Holder(enum.IntEnum):
    """The first advisory-lock key: who holds the table ('EMB' and a kind)."""

    TASK = 0x454D4201
    SYNC = 0x454D4202


def table_key(ref: str) -> int:
    """The second key: a stable 32-bit signed hash of the live table's name."""
    return int.from_bytes(hashlib.sha256(ref.encode()).digest()[:4], "big", signed=True)


async def _try_lock(conn: asyncpg.Connection[Any], holder: Holder, key: int) -> bool:
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", int(holder), key))


async def _terminate_holders(conn: asyncpg.Connection[Any], holder: Holder, key: int) -> None:
    await conn.execute(
        "SELECT pg_terminate_backend(l.pid, $3) FROM pg_locks l"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.pid <> pg_backend_pid()"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND l.classid::bigint = ($1::bigint & 4294967295) AND l.objid::bigint = ($2::bigint & 4294967295)"
        " AND l.objsubid = 2",
        int(holder),
        key,
        _TERMINATE_WAIT_MS,
    )


async def take_over(
    conn: asyncpg.Connection[Any], ref: str, holder: Holder, confirm: Callable[[], Awaitable[None]]
) -> None:
    """Holds the table's `holder` lock on `conn` until the session ends. `confirm` checks the
    control-plane lease (raising LeaseLost): before ending anyone's session, so only a true
    holder takes over, and once the lock is held, so a stale holder never proceeds."""
    key = table_key(ref)
    if not await _try_lock(conn, holder, key):
        await confirm()
        for _ in range(_LOCK_ATTEMPTS):
            await _terminate_holders(conn, holder, key)
            if await _try_lock(conn, holder, key):
                break
            await asyncio.sleep(_LOCK_PAUSE_S)  # a holder that was just connecting
        else:
            raise TimeoutError(f"could not take over vector table {ref!r} from its previous holder")
    await confirm()


async def _nothing() -> None:
    return None


async def evict_all(conn: asyncpg.Connection[Any], ref: str) -> None:
    """Ends every holder's session (the table is being dropped: its row is deleted, so every
    holder is stale) and holds both locks until the session ends."""
    for holder in Holder:
        await take_over(conn, ref, holder, _nothing)
