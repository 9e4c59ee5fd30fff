"""How a failed task attempt is described (engine/worker.py): the real cause, never a promise."""

from __future__ import annotations

import datetime as dt

import anyio
import asyncpg
import pytest
import structlog
from embedd_server.domain.models import Task
from embedd_server.engine.context import ConnectionLost, EngineDeps, EngineSettings, connections_watched
from embedd_server.engine.worker import MAX_RETRY_DELAY_S, Worker, _guard, describe_error, retry_delay
from embedd_server.network_policy import NetworkPolicyDenied
from embedd_server.providers.base import ProviderError


def test_last_error_never_says_it_is_retried() -> None:
    """The same text ends up on a task that failed for good."""
    for exc in (ValueError("x"), RuntimeError(), KeyError("k")):
        text = describe_error(exc)
        assert "retried" not in text and exc.__class__.__name__ in text
    assert "network policy" in describe_error(NetworkPolicyDenied("db.internal"))


async def test_a_stage_failure_is_classified_not_its_task_group() -> None:
    """anyio wraps a stage's ProviderError (a rejected key) in an ExceptionGroup: the worker
    must see the ProviderError, or a bad key reads 'internal error (ExceptionGroup)'."""

    async def pipeline() -> None:
        async def stage() -> None:
            raise ProviderError("bad_key", "openai rejected the API key")

        async with anyio.create_task_group() as tg:
            tg.start_soon(stage)

    with pytest.raises(ProviderError, match="rejected the API key"):
        await _guard(pipeline())


class _Lease:
    """Stands in for a TaskLease: records how the attempt ended."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.failed: list[tuple[str, bool]] = []

    async def renew(self) -> None:
        return None

    async def release(self) -> None:
        return None

    async def fail(self, error: str, *, retry: bool, retry_in_s: float = 0.0) -> None:
        self.failed.append((error, retry))
        self.retry_in_s = retry_in_s


async def _attempt(failure: BaseException, *, attempt: int = 1) -> _Lease:
    """Runs one attempt of a task (attempt number `attempt` of 3) that fails with `failure`."""
    deps = EngineDeps(None, None, None, None, None, None, EngineSettings())  # type: ignore[arg-type]
    worker = Worker(deps)

    async def failing(lease: object) -> None:
        raise failure

    worker._execute = failing  # type: ignore[method-assign,assignment]
    now = dt.datetime(2026, 3, 13, tzinfo=dt.UTC)
    task = Task(
        "task_a",
        "org_a",
        "env_a",
        "backfill",
        "vt_a",
        "running",
        attempt,
        3,
        None,
        None,
        0,
        0,
        0,
        "w",
        now,
        now,
        None,
    )
    lease = _Lease(task)
    await worker._run(lease)  # type: ignore[arg-type]
    return lease


async def test_a_host_the_network_policy_refuses_fails_the_task_at_once() -> None:
    """Retrying cannot make the address public: no retry, the reason in last_error."""
    lease = await _attempt(NetworkPolicyDenied("db.internal"))
    [(error, retry)] = lease.failed
    assert not retry and "network policy" in error


@pytest.mark.parametrize(
    "lost",
    [
        ConnectionLost("the connection to the source database was closed"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CannotConnectNowError("the database system is shutting down"),
        ConnectionRefusedError(111, "Connect call failed"),
    ],
)
async def test_a_database_that_went_away_is_retried_after_a_pause_without_a_traceback(
    lost: Exception,
) -> None:
    """A restarting database used to fail a task for good within a second: each retry was
    claimed the moment the previous attempt failed, and each logged a traceback."""
    with structlog.testing.capture_logs() as logs:
        lease = await _attempt(lost)
    [(error, retry)] = lease.failed
    assert retry and lease.retry_in_s == EngineSettings().retry_backoff_s
    assert not error.startswith("internal error"), error
    assert not [r for r in logs if r["log_level"] == "error" or r.get("exc_info")], logs


async def test_an_unexpected_failure_keeps_its_traceback() -> None:
    with structlog.testing.capture_logs() as logs:
        lease = await _attempt(
            asyncpg.InterfaceError("cannot perform operation: another operation is in progress")
        )
    assert lease.failed[0][1]  # retried too
    assert any(r["log_level"] == "error" for r in logs)


def test_each_retry_waits_four_times_longer() -> None:
    assert [retry_delay(5.0, n) for n in (1, 2, 3)] == [5.0, 20.0, 80.0]
    assert retry_delay(5.0, 12) == MAX_RETRY_DELAY_S


class _Conn:
    """A connection that is closed, confused (the server ended it, the driver has not seen the
    end of the stream yet), or fine."""

    def __init__(self, state: str) -> None:
        self.state = state

    def is_closed(self) -> bool:
        return self.state == "closed"

    async def fetchval(self, sql: str) -> int:
        if self.state == "confused":
            raise asyncpg.InternalClientError(
                "cannot switch to state 11; another operation (2) is in progress"
            )
        return 1


CONFUSED = asyncpg.InternalClientError("cannot switch to state 21; another operation (2) is in progress")


@pytest.mark.parametrize("state", ["closed", "confused"])
async def test_a_driver_error_on_a_connection_that_no_longer_answers_is_a_lost_connection(state: str) -> None:
    """The fault suite saw a holder whose session a new holder had ended - and a task whose
    database restarted - fail the next COPY with asyncpg's "cannot switch to state 21;
    another operation (2) is in progress", before the connection looked closed: a traceback
    and "internal error" for what was a lost connection."""
    with pytest.raises(ConnectionLost) as lost:
        async with connections_watched(_Conn("fine"), _Conn(state)):  # type: ignore[arg-type]
            raise CONFUSED
    assert lost.value.__cause__ is CONFUSED


async def test_a_driver_error_on_connections_that_answer_is_kept() -> None:
    """Both still answer: a bug, kept as it is; and what is not the driver's passes through."""
    with pytest.raises(asyncpg.InternalClientError):
        async with connections_watched(_Conn("fine"), _Conn("fine")):  # type: ignore[arg-type]
            raise CONFUSED
    with pytest.raises(ValueError):
        async with connections_watched(_Conn("closed")):  # type: ignore[arg-type]
            raise ValueError("x")
