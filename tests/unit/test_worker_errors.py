"""How a failed task attempt is described (engine/worker.py): the real cause, never a promise."""

from __future__ import annotations

import datetime as dt

import anyio
import pytest
from embedd_server.domain.models import Task
from embedd_server.engine.context import EngineDeps, EngineSettings
from embedd_server.engine.worker import Worker, _guard, describe_error
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

    async def fail(self, error: str, *, retry: bool) -> None:
        self.failed.append((error, retry))


async def test_a_host_the_network_policy_refuses_fails_the_task_at_once() -> None:
    """Retrying cannot make the address public: no retry, the reason in last_error."""
    deps = EngineDeps(None, None, None, None, None, None, EngineSettings())  # type: ignore[arg-type]
    worker = Worker(deps)

    async def refused(lease: object) -> None:
        raise NetworkPolicyDenied("db.internal")

    worker._execute = refused  # type: ignore[method-assign,assignment]
    now = dt.datetime(2026, 3, 13, tzinfo=dt.UTC)
    task = Task(
        "task_a",
        "org_a",
        "env_a",
        "backfill",
        "vt_a",
        "running",
        1,
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
    [(error, retry)] = lease.failed
    assert not retry and "network policy" in error
