"""When to try an outbound request again and how fast to send: the retry policy,
``Retry-After`` parsing, and the rate limiter kept per API credential.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from .http import OutboundResponse


# -- retry policy -----------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before trying a request again; one per call site.

    Which failures are retried, and why:

    * 429 and 503: always, whatever the method. The server refused the request
      without processing it, so even a non-idempotent POST is safe to repeat.
    * 408, 500, 502, 504: only idempotent requests. The request may have been
      (partly) processed, or a gateway may have passed it on before failing.
    * A timeout or a connection reset after the request went out: only idempotent
      requests, for the same reason: the server may have acted on it.
    * A failure to connect at all (DNS, refused): always, since nothing was sent.
      Certificate errors are never retried: they do not heal in seconds.

    A request is idempotent when its method is (GET, HEAD, OPTIONS, PUT, DELETE) or
    when the caller says so (``pipeline.request(..., idempotent=True)``): e.g.
    PagerDuty's ``POST /incidents`` with an ``incident_key`` (a repeat is rejected as a
    duplicate, which the client detects), but not ServiceNow's ``POST`` insert (a
    repeat creates a second record) nor a PATCH that appends a journal entry.

    Waits: the server's ``Retry-After`` (seconds or an HTTP date), else PagerDuty's
    ``ratelimit-reset`` (seconds) or ServiceNow's ``X-RateLimit-Reset`` (Unix time),
    else exponential backoff with full jitter: ``uniform(0, min(max_delay,
    base_delay * 2**(retry - 1)))``. A server that asks for a wait longer than
    ``max_wait`` gets no retry: the response is returned as it is, so the worker's
    own (much longer) event backoff takes over instead of holding a worker slot.
    """

    max_retries: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_wait: float = 60.0
    always_retry_statuses: frozenset[int] = frozenset({429, 503})
    idempotent_retry_statuses: frozenset[int] = frozenset({408, 500, 502, 504})

    def retries_status(self, status: int, idempotent: bool) -> bool:
        if status in self.always_retry_statuses:
            return True
        return idempotent and status in self.idempotent_retry_statuses

    def backoff(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """Full-jitter delay before retry number ``retry`` (1 for the first retry)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** max(retry - 1, 0)))
        return rng() * ceiling


def retry_after_seconds(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """Seconds the server asks us to wait, from the headers of a 429/503; None if unsaid."""
    value = headers.get("Retry-After")
    if value:
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None and when.tzinfo is not None:
            return max(0.0, when.timestamp() - now())
    value = headers.get("ratelimit-reset")  # PagerDuty: seconds until the window resets
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
    value = headers.get("X-RateLimit-Reset")  # ServiceNow: Unix time of the reset
    if value:
        try:
            number = float(value)
        except ValueError:
            return None
        # Small numbers are seconds (some gateways); large ones an epoch time.
        return max(0.0, number - now()) if number > 1_000_000_000 else max(0.0, number)
    return None


# -- proactive rate limiting --------------------------------------------------------


class Limiter(Protocol):
    async def acquire(self) -> float: ...

    def observe(self, response: OutboundResponse) -> None: ...


class RateLimiter:
    """A token bucket per API credential, tightened by the server's rate-limit headers.

    The bucket holds ``burst`` tokens (a twentieth of the minute's budget unless given)
    and refills at ``(per_minute - burst) / 60`` per second, so that no 60-second
    window ever holds more than ``per_minute`` requests, whatever the burst pattern.
    A sustained run gets ``1 - burst/per_minute`` of the budget: 0.95 by default (a
    sixth, as before, left a bulk provisioning run at 0.87 of the budget).
    ``observe`` reads ``ratelimit-remaining`` / ``ratelimit-reset`` (PagerDuty's, also
    the IETF draft's names): while the server's window lasts, no more than the
    server says remain are sent, which covers other clients sharing the key and
    operation-specific limits. ``acquire`` serves waiters in arrival order.
    ``clock`` and ``sleep`` are injectable so tests need not wait.
    """

    def __init__(
        self,
        per_minute: int,
        *,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ):
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self.capacity = max(1, min(per_minute, burst if burst is not None else per_minute // 20))
        refill = per_minute - self.capacity if per_minute > self.capacity else per_minute
        self.rate = refill / 60.0
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(self.capacity)
        self._updated = clock()
        self._server_remaining: int | None = None
        self._server_reset_at = 0.0
        self._lock = asyncio.Lock()

    @property
    def tokens(self) -> float:
        self._refill(self._clock())
        return self._tokens

    def _refill(self, now: float) -> None:
        if now > self._updated:
            self._tokens = min(float(self.capacity), self._tokens + (now - self._updated) * self.rate)
            self._updated = now

    def _wait_needed(self, now: float) -> float:
        if self._server_remaining is not None:
            if now >= self._server_reset_at:
                self._server_remaining = None
            elif self._server_remaining <= 0:
                return self._server_reset_at - now
        # A small tolerance: float refill after an exact wait can land at 0.9999999.
        if self._tokens < 1.0 - 1e-6:
            return (1.0 - self._tokens) / self.rate
        return 0.0

    async def acquire(self) -> float:
        """Take one token, waiting as long as needed; returns the seconds waited."""
        waited = 0.0
        async with self._lock:
            while True:
                now = self._clock()
                self._refill(now)
                wait = self._wait_needed(now)
                if wait <= 0:
                    self._tokens -= 1.0
                    if self._server_remaining is not None:
                        self._server_remaining -= 1
                    return waited
                await self._sleep(wait)
                waited += wait

    def observe(self, response: OutboundResponse) -> None:
        """Learn from a response's ``ratelimit-remaining`` / ``ratelimit-reset``."""
        remaining = _number(response.headers.get("ratelimit-remaining"), int)
        reset = _number(response.headers.get("ratelimit-reset"), float)
        if remaining is None or reset is None:
            return
        now = self._clock()
        reset_at = now + max(0.0, reset)
        new_window = (
            self._server_remaining is None or now >= self._server_reset_at or reset_at > self._server_reset_at + 1.0
        )
        if new_window:
            self._server_remaining = max(0, remaining)
            self._server_reset_at = reset_at
        else:
            # Responses of one window arrive out of order; the lowest count is the truest.
            self._server_remaining = min(self._server_remaining, max(0, remaining))


def _number(value: str | None, kind: type) -> Any:
    if value is None:
        return None
    try:
        return kind(value.strip())
    except ValueError:
        return None
