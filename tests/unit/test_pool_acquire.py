"""store.db.acquire: a pooled connection asyncpg finds stuck mid-operation is closed, not
handed out again (asyncpg issue 784, seen when the control plane restarted under a fill)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from embedd_server.store.db import acquire


class _Conn:
    terminated = False

    def terminate(self) -> None:
        self.terminated = True


class _Pool:
    def __init__(self) -> None:
        self.conn = _Conn()

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[_Conn]:
        yield self.conn


async def _use(pool: Any, error: Exception) -> None:
    async with acquire(pool):
        raise error


async def test_a_connection_stuck_mid_operation_is_closed() -> None:
    pool = _Pool()
    with pytest.raises(asyncpg.InternalClientError):
        await _use(
            pool,
            asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
        )
    assert pool.conn.terminated


async def test_other_errors_leave_the_connection_to_the_pool() -> None:
    pool = _Pool()
    with pytest.raises(asyncpg.UniqueViolationError):
        await _use(pool, asyncpg.UniqueViolationError("duplicate"))
    assert not pool.conn.terminated
