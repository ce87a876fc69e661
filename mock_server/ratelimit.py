"""GCRA rate limiting: the pure step, where its state lives, and per-key limits by tier.

GCRA keeps one number per key (the theoretical arrival time, TAT), allows bursts up to the
limit and refills smoothly, so `limit` requests per `period` seconds are never exceeded.
The step is a pure function; a *store* makes read-step-write atomic: `MemoryTatStore` (one
lock, per process; used by the failed-auth limiter) or `SqliteTatStore` (one
``BEGIN IMMEDIATE`` transaction in ``<data_dir>/ratelimit.sqlite3``, used for per-key limits,
so several server processes on one data dir share one budget per key and the windows survive
a restart). That file holds key ids and timestamps only, no secret and no payload.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mock_server.asgi import Scope
from mock_server.config import TIER_LIMITS
from mock_server.errors import ApiError

#: Where a request's rate-limit decision is left for the response headers (see middleware).
DECISION_KEY = "ekodb.ratelimit"
RATELIMIT_DB = "ratelimit.sqlite3"


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


#: One GCRA step: (stored TAT or None, now) -> (decision, TAT to store or None to keep).
Step = Callable[[float | None, float], tuple[Decision, float | None]]


def gcra(tat: float | None, now: float, limit: int, period: float, cost: int = 1
         ) -> tuple[Decision, float | None]:
    """Pure GCRA: consume `cost` units if the burst allows it, never partially."""
    if limit <= 0:
        return Decision(False, 0, 0, period, period), None
    interval = period / limit
    burst = period  # tolerance: a full period's worth of requests
    # max(): an idle key is full; min(): a clock that went back cannot block for longer
    # than one period
    base = min(max(tat if tat is not None else now, now), now + burst)
    new_tat = base + interval * cost
    allow_at = new_tat - burst
    if allow_at > now + 1e-9:
        remaining = max(0, int((burst - (base - now)) / interval + 1e-9))
        return Decision(False, limit, remaining, allow_at - now, base - now), None
    remaining = max(0, int((burst - (new_tat - now)) / interval + 1e-9))
    return Decision(True, limit, remaining, 0.0, new_tat - now), new_tat


class TatStore(Protocol):
    """Atomic read-step-write of one key's TAT."""

    def apply(self, key: str, step: Step) -> Decision: ...

    def close(self) -> None: ...


class MemoryTatStore:
    """In-process TATs under one lock, bounded as an LRU."""

    def __init__(self, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._tat: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._max_keys = max_keys
        self._clock = clock

    def apply(self, key: str, step: Step) -> Decision:
        with self._lock:
            decision, new = step(self._tat.get(key), self._clock())
            if new is not None:
                self._tat[key] = new
                self._tat.move_to_end(key)
                while len(self._tat) > self._max_keys:
                    self._tat.popitem(last=False)
            return decision

    def close(self) -> None:
        return None


class SqliteTatStore:
    """TATs in their own SQLite file, shared by every process on the data dir.

    Wall-clock time (processes share no monotonic clock). One connection behind one lock:
    threads of a process queue on the lock rather than in SQLite's sleeping busy handler;
    processes queue on ``BEGIN IMMEDIATE``. ``synchronous=NORMAL``: a lost last update after
    a power cut only forgives a few requests, and it spares an fsync per request.
    """

    PRUNE_EVERY = 10_000

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, timeout=30.0, isolation_level=None,
                                     check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS gcra (key TEXT PRIMARY KEY, tat REAL NOT NULL)"
            " WITHOUT ROWID")
        self._writes = 0

    def apply(self, key: str, step: Step) -> Decision:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT tat FROM gcra WHERE key = ?", (key,)).fetchone()
                now = self._clock()
                decision, new = step(None if row is None else float(row[0]), now)
                if new is not None:
                    conn.execute("INSERT INTO gcra(key, tat) VALUES (?, ?) ON CONFLICT(key)"
                                 " DO UPDATE SET tat = excluded.tat", (key, new))
                    self._writes += 1
                    if self._writes % self.PRUNE_EVERY == 0:  # a past TAT means "full"
                        conn.execute("DELETE FROM gcra WHERE tat < ?", (now,))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return decision

    def close(self) -> None:
        with self._lock, suppress(sqlite3.Error):
            self._conn.close()


class RateLimiter:
    """Per-key GCRA limiter; `limit` requests per `period` seconds."""

    def __init__(
        self,
        period: float = 60.0,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        store: TatStore | None = None,
    ) -> None:
        self.period = period
        self._store: TatStore = store or MemoryTatStore(max_keys=max_keys, clock=clock)

    def hit(self, key: str, limit: int, cost: int = 1) -> Decision:
        """Consume `cost` units if allowed; never partially."""
        period = self.period
        return self._store.apply(key, lambda tat, now: gcra(tat, now, limit, period, cost))

    def check(self, key: str, limit: int, cost: int = 1) -> Decision:
        """Whether `hit` would be allowed now, consuming nothing.

        For limits that count only failures (logins): check before, `hit` after a failure.
        Consuming first and refunding on success would let concurrent successes in flight
        exhaust the budget and refuse good callers.
        """
        period = self.period

        def step(tat: float | None, now: float) -> tuple[Decision, float | None]:
            return gcra(tat, now, limit, period, cost)[0], None

        return self._store.apply(key, step)

    def close(self) -> None:
        self._store.close()


def effective_limit(
    *,
    tier: str,
    is_admin: bool,
    override: int | None,
    tier_limits: Mapping[str, int],
    enabled: bool = True,
    limit_admin_keys: bool = False,
) -> int | None:
    """Requests per window for a key, or None for no limit.

    A per-key override wins over the tier; admin keys have no tier limit unless
    `limit_admin_keys` (the operator's key must not lock the operator out), but an explicit
    per-key override applies to them too.
    """
    if not enabled:
        return None
    if override is not None:
        return override
    if is_admin and not limit_admin_keys:
        return None
    return tier_limits.get(tier, TIER_LIMITS.get(tier))


class KeyRateLimits:
    """Per-key request limits, enforced once per authenticated request."""

    def __init__(
        self,
        limiter: RateLimiter,
        tier_limits: Mapping[str, int],
        *,
        enabled: bool = True,
        limit_admin_keys: bool = False,
    ) -> None:
        self.limiter = limiter
        self.tier_limits = dict(tier_limits)
        self.enabled = enabled
        self.limit_admin_keys = limit_admin_keys

    def limit_for(self, *, tier: str, is_admin: bool, override: int | None) -> int | None:
        return effective_limit(tier=tier, is_admin=is_admin, override=override,
                               tier_limits=self.tier_limits, enabled=self.enabled,
                               limit_admin_keys=self.limit_admin_keys)

    def enforce(self, key_id: str, limit: int | None, scope: Scope | None = None
                ) -> Decision | None:
        """Count one request; leave the decision in `scope` for the headers; 429 if over."""
        if limit is None:
            return None
        decision = self.limiter.hit(key_id, limit)
        if scope is not None:
            scope[DECISION_KEY] = decision
        if not decision.allowed:
            raise ApiError(429, "rate_limited",
                           f"rate limit of {limit} requests per {self.limiter.period:g}s "
                           "exceeded for this key", decision.headers())
        return decision

    def close(self) -> None:
        self.limiter.close()


def rate_limit_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The X-RateLimit-* response headers for the decision left in `scope`, if any."""
    decision = scope.get(DECISION_KEY)
    if not isinstance(decision, Decision):
        return []
    return [(k.lower().encode(), v.encode()) for k, v in decision.headers().items()
            if k != "Retry-After"]
