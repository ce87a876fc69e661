"""GCRA rate limiter, exact under concurrency (one lock around read-modify-write).

GCRA keeps one number per key (the theoretical arrival time), allows bursts up to the limit
and refills smoothly, so `limit` requests per `period` seconds are never exceeded.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    #: Seconds until one more request would be allowed (0 when allowed).
    retry_after: float
    #: Seconds until the bucket is full again.
    reset: float

    def headers(self) -> dict[str, str]:
        out = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset)),
        }
        if not self.allowed:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return out


class RateLimiter:
    """Per-key GCRA limiter; `limit` requests per `period` seconds, bounded memory."""

    def __init__(
        self,
        period: float = 60.0,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._period = period
        self._tat: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._max_keys = max_keys
        self._clock = clock

    def hit(self, key: str, limit: int, cost: int = 1) -> Decision:
        """Consume `cost` units if allowed; never partially."""
        if limit <= 0:
            return Decision(False, 0, 0, self._period, self._period)
        interval = self._period / limit
        burst = self._period  # tolerance: a full period's worth of requests
        with self._lock:
            now = self._clock()
            tat = max(self._tat.get(key, now), now)
            new_tat = tat + interval * cost
            allow_at = new_tat - burst
            if allow_at > now + 1e-9:
                remaining = max(0, int((burst - (tat - now)) / interval + 1e-9))
                return Decision(False, limit, remaining, allow_at - now, tat - now)
            self._tat[key] = new_tat
            self._tat.move_to_end(key)
            while len(self._tat) > self._max_keys:
                self._tat.popitem(last=False)
            remaining = max(0, int((burst - (new_tat - now)) / interval + 1e-9))
            return Decision(True, limit, remaining, 0.0, new_tat - now)

    def refund(self, key: str, limit: int, cost: int = 1) -> None:
        """Give back units consumed by `hit` (e.g. a successful login is not a failure)."""
        if limit <= 0:
            return
        interval = self._period / limit
        with self._lock:
            now = self._clock()
            tat = self._tat.get(key)
            if tat is not None:
                self._tat[key] = max(now, tat - interval * cost)
