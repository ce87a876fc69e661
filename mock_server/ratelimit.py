"""GCRA rate limiting: the pure step, where its state lives, and per-key limits by tier.

GCRA keeps one number per key (the theoretical arrival time, TAT), allows bursts up to the
limit and refills smoothly, so `limit` requests per `period` seconds are never exceeded.
The step is a pure function; a *store* makes read-step-write atomic: `MemoryTatStore` (one
lock, per process), `SharedTatStore` (a fixed-size table in a memory-mapped file,
``<data_dir>/ratelimit.shm``, under ``flock``: used for per-key limits and the failed-auth
limiter, so several server processes on one data dir share one exact budget per key and per
client address) or `SqliteTatStore` (one ``BEGIN IMMEDIATE`` transaction per step; kept
for callers that want SQLite). These files hold key ids, addresses and timestamps only.

Why not SQLite for the server: a durable write per request made every rate-limited request
depend on free disk space (reads failed on a full disk) and cost a transaction each. The
shared table's file is allocated in full when created and then only rewritten in place
through the page cache, never fsynced: a full disk cannot fail it, and a request costs a
hash, an ``flock`` and a 24-byte store (see bench/ratelimit_store.py). A crash or power cut
may lose the last updates, which only forgives a few requests.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import math
import mmap
import os
import sqlite3
import struct
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
RATELIMIT_SHM = "ratelimit.shm"


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
                conn.execute("COMMIT")
            except BaseException:
                with suppress(sqlite3.Error):  # a failed COMMIT leaves it open: close it
                    conn.execute("ROLLBACK")
                raise
            return decision

    def close(self) -> None:
        with self._lock, suppress(sqlite3.Error):
            self._conn.close()


class SharedTatStore:
    """TATs in an open-addressed hash table in a memory-mapped file, shared by processes.

    Layout: a 64-byte header (magic, slot count) then ``slots`` entries of (16-byte BLAKE2b
    of the key, TAT as a double). A lookup probes at most MAX_PROBE slots from the key's
    hash. A slot whose TAT is in the past is a full bucket, the same as no entry, so it may
    be reused by another key. Only when every probed slot holds a live bucket (more live
    keys than the table is built for) is the one closest to full replaced: that key starts
    over, which forgives it at most one window. Wall-clock time: processes share no
    monotonic clock.

    One ``threading.Lock`` for the threads of a process (``flock`` locks belong to the open
    file, which those threads share) plus an exclusive ``flock`` for other processes, held
    for one read-step-write only.
    """

    MAGIC = b"EKORLTAT"
    HEADER = 64
    _SLOT = struct.Struct("<16sd")
    _HEAD = struct.Struct("<8sQ")
    MAX_PROBE = 32
    _EMPTY = bytes(16)

    def __init__(self, path: Path, *, slots: int = 1 << 16,
                 clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            self._slots = self._prepare(slots)
            size = self.HEADER + self._slots * self._SLOT.size
            self._mm = mmap.mmap(self._fd, size)
        except BaseException:
            os.close(self._fd)
            raise
        self._closed = False

    def _prepare(self, slots: int) -> int:
        """Create the table once (every block allocated now), or adopt the existing one."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            head = os.pread(self._fd, self._HEAD.size, 0)
            if len(head) == self._HEAD.size:
                magic, existing = self._HEAD.unpack(head)
                size = self.HEADER + existing * self._SLOT.size
                if magic == self.MAGIC and existing > 0 \
                        and os.fstat(self._fd).st_size >= size:
                    return int(existing)
            size = self.HEADER + slots * self._SLOT.size
            os.ftruncate(self._fd, 0)
            try:
                os.posix_fallocate(self._fd, 0, size)
            except OSError as exc:  # a file system without fallocate: write the zeros
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                os.pwrite(self._fd, bytes(size), 0)
            os.pwrite(self._fd, self._HEAD.pack(self.MAGIC, slots), 0)
            return slots
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _digest(self, key: str) -> bytes:
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        return digest if digest != self._EMPTY else b"\x01" + digest[1:]

    def apply(self, key: str, step: Step) -> Decision:
        digest = self._digest(key)
        start = int.from_bytes(digest[:8], "little") % self._slots
        with self._lock:
            if self._closed:
                raise RuntimeError("rate-limit store is closed")
            mm = self._mm
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                now = self._clock()
                found: int | None = None
                free: int | None = None
                victim, victim_tat = -1, math.inf
                for i in range(self.MAX_PROBE):
                    off = self.HEADER + ((start + i) % self._slots) * self._SLOT.size
                    slot_key, tat = self._SLOT.unpack_from(mm, off)
                    if slot_key == digest:
                        found = off
                        break
                    if slot_key == self._EMPTY:
                        if free is None:
                            free = off
                        break  # the chain ends: the key is not further on
                    if tat < now and free is None:
                        free = off
                    if tat < victim_tat:
                        victim, victim_tat = off, tat
                stored = None
                if found is not None:
                    stored = self._SLOT.unpack_from(mm, found)[1]
                decision, new = step(stored, now)
                if new is not None:
                    where = found if found is not None else free if free is not None \
                        else victim
                    self._SLOT.pack_into(mm, where, digest, new)
                return decision
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._mm.close()
            os.close(self._fd)


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


class PerKeyCap:
    """At most `cap` concurrent holders per key (WebSockets open per API key), per process."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> bool:
        with self._lock:
            held = self._held.get(key, 0)
            if held >= self.cap:
                return False
            self._held[key] = held + 1
            return True

    def release(self, key: str) -> None:
        with self._lock:
            held = self._held.get(key, 0) - 1
            if held > 0:
                self._held[key] = held
            else:
                self._held.pop(key, None)
