"""The session's log check (tests/harness.unexpected_tracebacks) finds what it must."""

from __future__ import annotations

import json

from tests.harness import INJECTED, unexpected_tracebacks


def test_only_unasked_tracebacks_are_reported() -> None:
    lines = [
        json.dumps({"event": "rpc", "outcome": "OK"}),
        json.dumps(
            {"event": "unhandled error", "method": "/m/A", "exception": "Traceback...\nValueError: x"}
        ),
        json.dumps(
            {
                "event": "unhandled error",
                "method": "/m/B",
                "exception": f"Traceback...\nRuntimeError: {INJECTED}",
            }
        ),
        "ERROR asyncio Task exception was never retrieved",
        "Traceback (most recent call last):",
        "not json {",
    ]
    found = unexpected_tracebacks("\n".join(lines))
    assert found == ["unhandled error [/m/A]: ValueError: x", "Traceback (most recent call last):"]
