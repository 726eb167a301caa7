"""Per-key request rates, counted by `limits` in memory (one process serves, see README)."""

from __future__ import annotations

import math
import time
from functools import lru_cache

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from engine.errors import RateLimitedError


@lru_cache(maxsize=256)
def _item(rate: str) -> RateLimitItem:
    return parse(rate)


class KeyRateLimiter:
    def __init__(self) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, key_id: str, rate: str) -> None:
        """Count one request for the key, or refuse it with the seconds until a slot frees."""
        item = _item(rate)
        if self._limiter.hit(item, key_id):
            return
        stats = self._limiter.get_window_stats(item, key_id)
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimitedError(
            f"key '{key_id}' is over its rate of {rate}; retry in {wait} s, or ask for a key "
            "with a higher --rate",
            retry_after=wait,
        )
