"""Pacing and adaptive concurrency for one provider key and model.

A provider's rate limit (requests and tokens per minute) is the ceiling of a backfill. The aim
is to run at it, not above (429 storms waste requests and time) and not far below.

- **Pacing (GCRA).** When the limits are known (published tier defaults, or learned from
  OpenAI-style `x-ratelimit-limit-*` headers) every request reserves its place in a schedule
  that spends tokens and requests at `headroom` x the limit, with at most `burst_s` seconds of
  burst. Reservations are FIFO, so big and small requests share the budget fairly.
- **Token calibration.** Requests are charged estimated tokens times a ratio learned from the
  `usage` of each response (EWMA), so the schedule spends the provider's own token count.
- **AIMD concurrency.** At most `window` requests are in flight. A success while requests were
  waiting for the window grows it by 1/window (about +1 per round trip); a 429, a timeout or a
  5xx halves it, at most once per congestion event. This finds the concurrency the provider
  sustains when latency, not the budget, is the constraint, and backs off fast when it is not.
- **429.** Every request of this limiter pauses until `Retry-After` (not only the one that got
  it), the pacing rate is cut by 10% (or, with unknown limits, set to 90% of the rate measured
  over the last seconds) and then creeps back up on each success.

One limiter per provider record and model: one failing or throttled provider never slows
another.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_PROBE_REQUEST_TOKENS = 20_000.0


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Requests and tokens per minute; None = unknown (then only AIMD and learning apply)."""

    rpm: float | None = None
    tpm: float | None = None


class AdaptiveLimiter:
    def __init__(
        self,
        limits: RateLimits = RateLimits(),
        *,
        initial_window: float | None = None,
        max_window: float = 32.0,
        headroom: float = 0.98,
        burst_s: float = 1.0,
        learn_from_headers: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rpm = limits.rpm
        self._tpm = limits.tpm
        self._headroom = headroom
        self._burst_s = burst_s
        self._learn = learn_from_headers
        self._clock = clock
        self._rate_factor = 1.0  # multiplicative cut after 429s, recovering on success
        self._tat_tokens = 0.0  # GCRA theoretical arrival times
        self._tat_requests = 0.0
        self._pause_until = 0.0
        self._last_cut = -1e9
        # Unknown limits: probe with one request first (its response may teach the limits).
        start = initial_window or (4.0 if limits.tpm or limits.rpm else 1.0)
        self._window = max(1.0, start)
        self._max_window = max_window
        self._in_flight = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._window_limited = False
        self._ratio = 1.0  # provider tokens / estimated tokens
        self._recent: collections.deque[tuple[float, int]] = collections.deque()  # (time, tokens)
        # Counters for progress, tests and benchmarks.
        self.throttled = 0
        self.requests = 0

    # -- what the embedder reads -------------------------------------------------------------

    @property
    def window(self) -> float:
        return self._window

    @property
    def limits(self) -> RateLimits:
        return RateLimits(self._rpm, self._tpm)

    def charge(self, estimated_tokens: int) -> float:
        """The tokens a request of this estimate will cost, as the provider counts them."""
        return estimated_tokens * self._ratio

    def request_token_cap(self) -> float:
        """Keep single requests to a few seconds of budget so pacing stays smooth."""
        if self._tpm is None:
            return _PROBE_REQUEST_TOKENS  # unknown budget: modest requests until it is known
        return self._tpm / 60 * self._burst_s

    # -- the protocol around one HTTP request --------------------------------------------------

    async def acquire(self, estimated_tokens: int) -> float:
        """Wait for a slot in the window, then for this request's place in the schedule.
        Returns the tokens charged. Pair every successful call with `release()`."""
        while self._in_flight >= int(self._window):
            self._window_limited = True
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self._in_flight += 1
        try:
            cost = self.charge(estimated_tokens)
            delay = self._reserve(cost)
            while delay > 0:
                await asyncio.sleep(delay)
                # A 429 since the reservation paused everyone: take a new place after the pause.
                delay = self._reserve(cost) if self._pause_until > self._clock() else 0.0
        except BaseException:
            self.release()
            raise
        self.requests += 1
        return cost

    def release(self) -> None:
        """Synchronous, so that it runs in `finally` even while the request is cancelled."""
        self._in_flight -= 1
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def on_success(
        self, estimated_tokens: int, provider_tokens: int | None, headers: Mapping[str, str]
    ) -> None:
        now = self._clock()
        if provider_tokens and estimated_tokens > 0:
            sample = min(4.0, max(0.25, provider_tokens / estimated_tokens))
            self._ratio += 0.2 * (sample - self._ratio)
        self._recent.append((now, provider_tokens or round(self.charge(estimated_tokens))))
        while self._recent and self._recent[0][0] < now - 20:
            self._recent.popleft()
        if self._learn:
            self._learn_headers(headers)
        if self._window_limited:
            self._window = min(self._max_window, self._window + 1 / self._window)
            self._window_limited = False
        self._rate_factor = min(1.0, self._rate_factor + 0.002)
        if self._tpm is not None and self._learned_tpm:
            self._tpm *= 1.002  # probe upwards after a cut made with unknown limits
        if self._rpm is not None and self._learned_rpm:
            self._rpm *= 1.002

    _learned_tpm = False
    _learned_rpm = False

    def on_throttle(self, retry_after: float | None, default_pause: float) -> float:
        """A 429: pause every request, cut the rate and the window once per event. Returns the
        pause in seconds."""
        self.throttled += 1
        now = self._clock()
        pause = retry_after if retry_after is not None else default_pause
        self._pause_until = max(self._pause_until, now + pause)
        # The provider's bucket is empty, so is ours: no burst credit after the pause, the
        # schedule restarts at the paced rate.
        self._tat_tokens = max(self._tat_tokens, self._pause_until + self._burst_s)
        self._tat_requests = max(self._tat_requests, self._pause_until + self._burst_s)
        if now - self._last_cut > max(pause, 1.0):
            self._last_cut = now
            self._window = max(1.0, self._window / 2)
            if self._tpm is None or self._learned_tpm:
                measured = self._measured_tpm(now)
                if measured:
                    self._tpm, self._learned_tpm = 0.9 * measured, True
            else:
                self._rate_factor = max(0.5, self._rate_factor * 0.9)
        return pause

    def on_failure(self) -> None:
        """A timeout or a 5xx: the provider is struggling; halve the window once per event."""
        now = self._clock()
        if now - self._last_cut > 1.0:
            self._last_cut = now
            self._window = max(1.0, self._window / 2)

    # -- internals ---------------------------------------------------------------------------

    def _rate(self, per_minute: float) -> float:
        return per_minute / 60 * self._headroom * self._rate_factor

    def _reserve(self, cost: float) -> float:
        """GCRA with variable cost: a request goes when it fits in the burst credit."""
        now = self._clock()
        send_at = max(now, self._pause_until)
        if self._tpm:
            need = cost / self._rate(self._tpm)
            send_at = max(send_at, self._tat_tokens + min(need, self._burst_s) - self._burst_s)
            self._tat_tokens = max(self._tat_tokens, send_at) + need
        if self._rpm:
            need = 1 / self._rate(self._rpm)
            send_at = max(send_at, self._tat_requests + need - self._burst_s)
            self._tat_requests = max(self._tat_requests, send_at) + need
        return send_at - now

    def _measured_tpm(self, now: float) -> float | None:
        if len(self._recent) < 3:
            return None
        span = max(1.0, now - self._recent[0][0])
        return sum(t for _, t in self._recent) / span * 60

    def _learn_headers(self, headers: Mapping[str, str]) -> None:
        for name, attr in (("x-ratelimit-limit-tokens", "_tpm"), ("x-ratelimit-limit-requests", "_rpm")):
            value = headers.get(name)
            if not value:
                continue
            try:
                limit = float(value)
            except ValueError:
                continue
            if limit > 0 and limit != getattr(self, attr):
                setattr(self, attr, limit)
                setattr(self, "_learned" + attr, False)
        # Sync the schedule with the provider's own bucket: never assume more burst credit than
        # the budget it says remains (also charges requests sent before the limits were known).
        remaining = headers.get("x-ratelimit-remaining-tokens")
        if remaining and self._tpm:
            try:
                left = float(remaining)
            except ValueError:
                return
            rate = self._rate(self._tpm)
            self._tat_tokens = max(self._tat_tokens, self._clock() + self._burst_s - left / rate)
