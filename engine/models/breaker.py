"""A circuit breaker per remote model: stop calling an endpoint that keeps failing.

Closed: calls go through; `threshold` consecutive failures open it. Open: calls fail at once
(no request, no waiting) until `cooldown_s` has passed. Half-open: exactly one probe call goes
through; its success closes the breaker, its failure opens it for another cooldown.

Hand-written rather than taken from pybreaker/aiobreaker: those count calls, not attempts, and
their half-open state lets every concurrent caller through, which is the stampede the breaker is
there to prevent. Everything runs on one event loop, so plain attributes need no lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class BreakerOpen(Exception):
    """Raised instead of calling an endpoint the breaker has given up on for now."""

    def __init__(self, retry_in_s: float) -> None:
        super().__init__(f"circuit breaker open, next probe in {retry_in_s:.0f}s")
        self.retry_in_s = retry_in_s


class CircuitBreaker:
    def __init__(
        self, threshold: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if threshold < 1 or cooldown_s < 0:
            raise ValueError("breaker threshold must be >= 1 and cooldown >= 0")
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.state = CLOSED
        self.consecutive_failures = 0
        self.failures = 0
        self.successes = 0
        self.opened = 0
        self.rejected = 0
        self._opened_at = 0.0
        self._probing = False

    def retry_in_s(self) -> float:
        if self.state != OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.cooldown_s - self._clock())

    def acquire(self) -> None:
        """Call before each attempt: returns if it may go ahead, raises BreakerOpen if not."""
        if self.state == OPEN and self.retry_in_s() <= 0:
            self.state = HALF_OPEN
            self._probing = False
        if self.state == OPEN or (self.state == HALF_OPEN and self._probing):
            self.rejected += 1
            raise BreakerOpen(self.retry_in_s() if self.state == OPEN else self.cooldown_s)
        if self.state == HALF_OPEN:
            self._probing = True

    def success(self) -> None:
        self.successes += 1
        self.consecutive_failures = 0
        self.state = CLOSED
        self._probing = False

    def failure(self) -> None:
        self.failures += 1
        self.consecutive_failures += 1
        if self.state == HALF_OPEN or self.consecutive_failures >= self.threshold:
            if self.state != OPEN:
                self.opened += 1
            self.state = OPEN
            self._opened_at = self._clock()
            self._probing = False

    def release(self) -> None:
        """An attempt that proved nothing about the endpoint's health (a 4xx answer, a
        cancelled call): a half-open probe slot is handed back, counters stay."""
        if self.state == HALF_OPEN:
            self._probing = False

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "consecutive_failures": self.consecutive_failures,
            "failures": self.failures,
            "successes": self.successes,
            "opened": self.opened,
            "rejected": self.rejected,
            "threshold": self.threshold,
            "cooldown_s": self.cooldown_s,
            "retry_in_s": round(self.retry_in_s(), 1),
        }
