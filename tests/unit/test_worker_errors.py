"""How a failed task attempt is described (engine/worker.py): the real cause, never a promise."""

from __future__ import annotations

import anyio
import pytest
from embedd_server.engine.worker import _guard, describe_error
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
