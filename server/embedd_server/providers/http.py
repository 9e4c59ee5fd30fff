"""Retry policy, backoff with jitter and `Retry-After` parsing for the provider clients.

Tenacity's retry loop does not fit here: a 429 is not a failure to count but a signal to the
shared limiter (which pauses every request of the provider, not just the one that got it), and
a 400 splits the batch instead of retrying it. So the clients run a small explicit loop and use
these helpers.
"""

from __future__ import annotations

import email.utils
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    # Attempts per request for transient failures: 5xx, timeouts, refused connections,
    # malformed bodies. After the last one the provider is "unreachable".
    max_attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    # One HTTP request, from connect to the last byte of the body.
    request_timeout_s: float = 60.0
    # How long one request may keep being throttled (429) before the call fails with "quota".
    max_throttle_wait_s: float = 900.0
    # The pause after a 429 that carries no Retry-After.
    default_throttle_s: float = 1.0


DEFAULT_POLICY = RetryPolicy()

# A provider test (`POST /v1/embedding-providers/{id}/test`) answers in seconds, not minutes.
TEST_POLICY = RetryPolicy(
    max_attempts=2, base_delay_s=0.2, max_delay_s=1.0, request_timeout_s=10.0, max_throttle_wait_s=5.0
)


def backoff_delay(attempt: int, policy: RetryPolicy) -> float:
    """Exponential backoff with full jitter for retry number `attempt` (1-based)."""
    ceiling = min(policy.max_delay_s, policy.base_delay_s * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `retry-after-ms` (OpenAI), `Retry-After` in seconds or as an HTTP
    date; None when absent or unreadable."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("Retry-After") or headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(value: str) -> float | None:
    """Seconds from a duration as OpenAI writes `x-ratelimit-reset-*` (Go's format): "6m0s",
    "1s", "20ms", "1h2m3.5s"; None when it is not one."""
    value = value.strip()
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)
