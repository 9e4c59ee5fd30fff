"""Pacing and adaptive concurrency for one provider key and model.

A provider's rate limit (requests and tokens per minute) is the ceiling of a backfill. The aim
is to spend the whole budget, not more (429 storms waste requests and time) and not less.
docs/providers.md states the model and the lower bound it reaches.

- **The provider's buckets, mirrored.** OpenAI's limiter is a token bucket per limit: capacity
  = the per-minute limit, refilled continuously at limit/60 per second, debited by each request
  when it is admitted. Every response says what is left (`x-ratelimit-remaining-*`) and how long
  until the bucket is full again (`x-ratelimit-reset-*`, "6m0s", "1s", "20ms"). From these the
  limiter keeps its own copy of each bucket, re-synchronised from every response: the remaining
  allowance is spent at once, then requests go at the refill rate. A provider that enforces a
  shorter window than a minute shows it: capacity = remaining + reset x rate.
- **Synchronising.** A response tells the bucket's state after its request was admitted. The
  level now is taken as: remaining - what this limiter sent after that request (the provider
  may not have counted those yet) - what it reserved for requests about to go - what it sent
  just before and is still unanswered (concurrent requests may reach the provider in another
  order), with no refill credited for the time since. That does not overestimate, whether the
  provider writes the headers at admission or when it answers; it underestimates by about one
  round trip of refill and the requests in flight, an offset that costs no throughput while the
  bucket is not full (at the refill rate few requests are in flight). Other clients of the same
  key show up in `remaining`. Responses are applied in send order; an older one arriving after a
  newer one is ignored.
- **Blind pacing.** Without such headers (Voyage, Gemini) the published limits are all there is:
  requests go at `headroom` x the rate with one second of burst (`burst_s`).
- **Token calibration.** Requests are charged estimated tokens times a ratio learned from the
  `usage` of each response (EWMA), so the buckets spend the provider's own token count. A
  request waits until the bucket holds its charge plus three times the mean error of that
  calibration, so that a request the provider counts higher is not refused; waiting while the
  bucket fills costs no throughput (only the very last request finishes that much later).
- **AIMD concurrency.** At most `window` requests are in flight (once the budget lets them go).
  A success while requests waited for the window grows it by 1/window (about +1 per round
  trip): modest, and the budget's allowance is not lost meanwhile (refill goes on while the
  bucket is not full). A congestion
  event (a 429 without rate-limit headers, a timeout, a 5xx) halves it, at most once per event,
  and `learned_window` keeps what the server last accepted (the window before, minus one) for
  the provider record. This finds the concurrency a server sustains when latency, not the
  budget, is the constraint, and backs off fast when it is not.
- **429.** Every request of this limiter pauses until `Retry-After` (not only the one that got
  it). With rate-limit headers, the 429's own headers correct the buckets: the budget, not the
  server's concurrency, so the window stays. Without, it is congestion (the window halves) and
  the pacing rate is cut by 10% (or, with unknown limits, set to 90% of the rate measured over
  the last seconds), then creeps back up on each success.

One limiter per provider record and model: one failing or throttled provider never slows
another.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from embedd_server.providers.http import parse_duration

_PROBE_REQUEST_TOKENS = 20_000.0


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Requests and tokens per minute; None = unknown (then only AIMD and learning apply)."""

    rpm: float | None = None
    tpm: float | None = None


class Bucket:
    """This limiter's copy of one of the provider's buckets (tokens or requests)."""

    def __init__(self, per_minute: float, *, headroom: float, burst_s: float, now: float) -> None:
        self.limit = per_minute
        self.rate = per_minute / 60 * headroom
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self.at = now
        self.synced = False  # capacity and level come from the provider's headers
        self.reserved = 0.0  # debited by requests that wait for the window, not sent yet
        self.sent = 0.0  # the cost of every request sent so far (the ledger marks point into)
        self._unanswered: dict[float, float] = {}  # mark -> cost of requests in flight
        self._synced_mark = -1.0

    def available(self, now: float) -> float:
        return min(self.capacity, self.level + (now - self.at) * self.rate)

    def wait_for(self, cost: float, now: float) -> float:
        """Seconds until `cost` fits (a cost above capacity waits for a full bucket)."""
        short = min(cost, self.capacity) - self.available(now)
        return max(0.0, short / self.rate)

    def reserve(self, cost: float, now: float) -> None:
        self.level, self.at = self.available(now) - cost, now
        self.reserved += cost

    def unreserve(self, cost: float) -> None:
        """A reservation given back unsent (its request was cancelled)."""
        self.reserved -= cost
        self.level += cost

    def send(self, cost: float) -> float:
        """A reserved request goes: its mark in the ledger of sends."""
        self.reserved -= cost
        self.sent += cost
        self._unanswered[self.sent] = cost
        return self.sent

    def answered(self, mark: float) -> None:
        self._unanswered.pop(mark, None)

    def empty_at(self, when: float) -> None:
        """No allowance left until `when` (after a 429 without headers)."""
        self.level, self.at = min(0.0, self.available(when)), when

    def sync(self, limit: float, remaining: float, reset_s: float | None, mark: float, now: float) -> None:
        """The provider's word: `remaining` once the request with ledger `mark` was admitted,
        full again in `reset_s`."""
        if mark <= self._synced_mark:
            return  # older news than what the bucket already knows
        self._synced_mark = mark
        self.limit, self.rate = limit, limit / 60
        full = limit if reset_s is None else remaining + reset_s * self.rate
        self.capacity = max(1.0, remaining, min(limit, full))
        # Against the remaining: what was sent since, what is reserved, and what was sent just
        # before but is still unanswered (concurrent requests may arrive in another order than
        # they were sent). The refill since is not credited. See the module doc.
        before = sum(cost for m, cost in self._unanswered.items() if m < mark)
        self.level = min(self.capacity, remaining) - (self.sent - mark) - self.reserved - before
        self.at = now
        self.synced = True


@dataclass(slots=True)
class Ticket:
    """One request's passage through the limiter, handed back with its outcome."""

    estimate: int  # tokens, as the client estimates them
    cost: float = 0.0  # tokens charged: the estimate times the ratio when it took its turn
    # The buckets it reserved in (None: unknown when it went) and its marks in their ledgers.
    tokens: Bucket | None = None
    requests: Bucket | None = None
    token_mark: float = 0.0
    request_mark: float = 0.0


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
        self._headroom = headroom
        self._burst_s = burst_s
        self._learn = learn_from_headers
        self._clock = clock
        now = clock()
        self._tokens = self._bucket(limits.tpm, now)
        self._requests = self._bucket(limits.rpm, now)
        self._pause_until = 0.0
        self._last_cut = -1e9
        # Unknown limits: probe with one request first (its response may teach the limits).
        start = initial_window or (4.0 if limits.tpm or limits.rpm else 1.0)
        self._max_window = max(1.0, max_window)
        self._window = min(self._max_window, max(1.0, start))
        self.learned_window: int | None = None  # what the server took before it last pushed back
        self._in_flight = 0
        self._turn = asyncio.Lock()  # FIFO: requests take the budget in arrival order
        self._changed = asyncio.Event()  # a response moved the buckets: the head re-checks
        self._waiters: list[asyncio.Future[None]] = []
        self._window_limited = False
        self._ratio = 1.0  # provider tokens / estimated tokens
        self._spread = 0.05  # mean relative error of the calibrated estimate (EWMA)
        self._recent: collections.deque[tuple[float, int]] = collections.deque()  # (time, tokens)
        self._measured = False  # limits set from the measured rate after a 429 (no headers)
        # Counters for progress, tests and benchmarks.
        self.throttled = 0
        self.requests = 0

    def _bucket(self, per_minute: float | None, now: float) -> Bucket | None:
        if not per_minute:
            return None
        return Bucket(per_minute, headroom=self._headroom, burst_s=self._burst_s, now=now)

    # -- what the embedder reads -------------------------------------------------------------

    @property
    def window(self) -> float:
        return self._window

    def charge(self, estimated_tokens: int) -> float:
        """The tokens a request of this estimate will cost, as the provider counts them."""
        return estimated_tokens * self._ratio

    def request_token_cap(self) -> float:
        """Keep single requests to about a second of budget so that concurrent callers share it
        finely, and within what the provider's bucket can ever hold."""
        if self._tokens is None:
            return _PROBE_REQUEST_TOKENS  # unknown budget: modest requests until it is known
        return min(self._tokens.limit / 60 * self._burst_s, self._tokens.capacity)

    # -- the protocol around one HTTP request --------------------------------------------------

    async def acquire(self, estimated_tokens: int) -> Ticket:
        """Wait for this request's turn in the budget, then for a slot in the window. Pair every
        successful call with `release(ticket)`."""
        ticket = Ticket(estimated_tokens)
        try:
            while True:
                await self._take_budget(ticket)
                await self._take_slot()
                if self._reserved_in_all(ticket) and self._pause_until <= self._clock():
                    break
                # While it waited for the window, a 429 paused everyone or the limits became
                # known: it goes through them too.
                self.release()
        except BaseException:
            for bucket, cost in ((ticket.tokens, ticket.cost), (ticket.requests, 1.0)):
                if bucket is not None:
                    bucket.unreserve(cost)
            raise
        if ticket.tokens is not None:
            ticket.token_mark = ticket.tokens.send(ticket.cost)
        if ticket.requests is not None:
            ticket.request_mark = ticket.requests.send(1)
        self.requests += 1
        return ticket

    async def _take_budget(self, ticket: Ticket) -> None:
        async with self._turn:
            while True:
                if ticket.tokens is None:
                    ticket.cost = self.charge(ticket.estimate)  # with the ratio learned meanwhile
                if (delay := self._delay(ticket)) <= 0:
                    break
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), delay)
            now = self._clock()
            if self._tokens is not None and ticket.tokens is not self._tokens:
                self._tokens.reserve(ticket.cost, now)
                ticket.tokens = self._tokens
            if self._requests is not None and ticket.requests is not self._requests:
                self._requests.reserve(1, now)
                ticket.requests = self._requests

    async def _take_slot(self) -> None:
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

    def _reserved_in_all(self, ticket: Ticket) -> bool:
        return ticket.tokens is self._tokens and ticket.requests is self._requests

    def fits(self, ticket: Ticket) -> bool:
        """False when the provider's token bucket can never hold this request (split it)."""
        return self._tokens is None or not self._tokens.synced or ticket.cost <= self._tokens.capacity

    def release(self, ticket: Ticket | None = None) -> None:
        """After the request of `ticket` was answered or abandoned (None: before it was sent).
        Synchronous, so that it runs in `finally` even while the request is cancelled."""
        if ticket is not None:
            if ticket.tokens is not None:
                ticket.tokens.answered(ticket.token_mark)
            if ticket.requests is not None:
                ticket.requests.answered(ticket.request_mark)
        self._in_flight -= 1
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def on_success(self, ticket: Ticket, provider_tokens: int | None, headers: Mapping[str, str]) -> None:
        now = self._clock()
        if provider_tokens and ticket.estimate > 0:
            sample = min(4.0, max(0.25, provider_tokens / ticket.estimate))
            self._spread += 0.2 * (abs(sample / self._ratio - 1) - self._spread)
            self._ratio += 0.2 * (sample - self._ratio)
        self._recent.append((now, provider_tokens or round(ticket.cost)))
        while self._recent and self._recent[0][0] < now - 20:
            self._recent.popleft()
        self._sync(ticket, headers, now)
        if self._window_limited:
            self._window = min(self._max_window, self._window + 1 / self._window)
            self._window_limited = False
        for bucket in (self._tokens, self._requests):
            if bucket is not None and not bucket.synced:
                # Blind: recover from a 429's cut; probe upwards after the limit was measured.
                if bucket is self._tokens and self._measured:
                    bucket.limit *= 1.002
                bucket.rate = min(bucket.limit / 60 * self._headroom, bucket.rate * 1.002)

    def on_throttle(
        self,
        ticket: Ticket,
        retry_after: float | None,
        default_pause: float,
        headers: Mapping[str, str] | None = None,
    ) -> float:
        """A 429: pause every request, correct the buckets, halve the window once per event.
        Returns the pause in seconds."""
        self.throttled += 1
        now = self._clock()
        pause = retry_after if retry_after is not None else default_pause
        self._pause_until = max(self._pause_until, now + pause)
        if self._sync(ticket, headers or {}, now):
            return pause  # the budget, as its headers show: not the server's concurrency
        for bucket in (self._tokens, self._requests):
            if bucket is not None and not bucket.synced:
                bucket.empty_at(self._pause_until)  # its bucket is empty, so is ours
        if now - self._last_cut > max(pause, 1.0):
            self._congestion(now)
            if self._tokens is None or (self._measured and not self._tokens.synced):
                measured = self._measured_tpm(now)
                if measured:
                    self._tokens = Bucket(
                        0.9 * measured, headroom=self._headroom, burst_s=self._burst_s, now=now
                    )
                    self._tokens.empty_at(self._pause_until)
                    self._measured = True
            elif not self._tokens.synced:
                self._tokens.rate = max(self._tokens.limit / 120, self._tokens.rate * 0.9)
        return pause

    def on_failure(self) -> None:
        """A timeout or a 5xx: the provider is struggling; halve the window once per event."""
        now = self._clock()
        if now - self._last_cut > 1.0:
            self._congestion(now)

    # -- internals ---------------------------------------------------------------------------

    def _congestion(self, now: float) -> None:
        self._last_cut = now
        # What the server last accepted: where a limiter of the next process starts.
        self.learned_window = max(1, int(self._window) - 1)
        self._window = max(1.0, self._window / 2)

    def _delay(self, ticket: Ticket) -> float:
        """Until the pause is over and the buckets it has no reservation in hold its cost."""
        now = self._clock()
        delay = self._pause_until - now
        if self._tokens is not None and ticket.tokens is not self._tokens:
            need = ticket.cost
            if self._tokens.synced:
                # The provider's count of this request may exceed the estimate: wait for that
                # much more (3 x the mean error). Waiting while the bucket fills costs nothing.
                need *= 1 + min(0.2, 3 * self._spread)
            delay = max(delay, self._tokens.wait_for(need, now))
        if self._requests is not None and ticket.requests is not self._requests:
            delay = max(delay, self._requests.wait_for(1, now))
        return delay

    def _measured_tpm(self, now: float) -> float | None:
        if len(self._recent) < 3:
            return None
        span = max(1.0, now - self._recent[0][0])
        return sum(t for _, t in self._recent) / span * 60

    def _sync(self, ticket: Ticket, headers: Mapping[str, str], now: float) -> bool:
        """Brings the buckets in line with the response's rate-limit headers; True if it had any."""
        if not self._learn:
            return False
        synced = False
        for name in ("tokens", "requests"):
            state = _bucket_headers(headers, name)
            if state is None:
                continue
            limit, remaining, reset_s = state
            bucket = self._tokens if name == "tokens" else self._requests
            if bucket is None or (name == "tokens" and self._measured):
                # Limits learned from a response: requests sent before were not debited (only
                # one probe is in flight while limits are unknown), later ones will be.
                bucket = Bucket(limit, headroom=1.0, burst_s=self._burst_s, now=now)
                if name == "tokens":
                    self._tokens, self._measured = bucket, False
                else:
                    self._requests = bucket
            went, mark = (
                (ticket.tokens, ticket.token_mark)
                if name == "tokens"
                else (ticket.requests, ticket.request_mark)
            )
            # A request that went before this bucket existed: news older than its whole ledger.
            bucket.sync(limit, remaining, reset_s, mark if went is bucket else 0.0, now)
            self._changed.set()
            synced = True
        return synced


def _bucket_headers(headers: Mapping[str, str], name: str) -> tuple[float, float, float | None] | None:
    """(limit, remaining, seconds to full) from `x-ratelimit-*-{name}`, None when absent."""
    try:
        limit = float(headers.get(f"x-ratelimit-limit-{name}") or "nan")
        remaining = float(headers.get(f"x-ratelimit-remaining-{name}") or "nan")
    except ValueError:
        return None
    if not (limit > 0 and remaining >= 0):  # also rejects NaN (absent) and Azure's -1
        return None
    reset = headers.get(f"x-ratelimit-reset-{name}")
    return limit, remaining, parse_duration(reset) if reset else None
