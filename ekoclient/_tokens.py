"""API keys, and the JWT each one is exchanged for.

A :class:`Credential` wraps an API key so it can be passed around without ever being
printed. The :class:`TokenCache` maps each credential to its :class:`CredentialState`
(token, when to refresh it, last rate-limit figures), bounded as an LRU so that a process
serving many tenants keeps memory flat; an evicted key simply exchanges again.

Single-flight refresh: the state carries one lock per flavour (threads, asyncio) and a
generation counter. A caller that waited on the lock while another refreshed takes the new
token (or the same failure) instead of exchanging again; so N concurrent calls on a stale
token make exactly one exchange.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import logging
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from .errors import EkoError, MalformedResponseError

logger = logging.getLogger("ekoclient")


class Credential:
    """An API key that never appears in ``repr``, ``str``, logs or exception messages."""

    __slots__ = ("_secret", "hint")

    def __init__(self, api_key: str) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            from .errors import ConfigurationError

            raise ConfigurationError("an API key must be a non-empty string")
        self._secret = api_key
        self.hint: str = hint_for(api_key)

    def reveal(self) -> str:
        """The key itself, for the token exchange only."""
        return self._secret

    def __repr__(self) -> str:
        return f"Credential({self.hint})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Credential) and other._secret == self._secret

    def __hash__(self) -> int:
        return hash(self._secret)

    def __reduce__(self) -> str:
        raise TypeError("Credential objects are not picklable: they hold a secret")


def hint_for(api_key: str) -> str:
    """``eko_test_…#3fa9c1``: the key's non-secret prefix and a short fingerprint.

    The fingerprint is the first 6 hex digits of the key's SHA-256: it tells keys apart in
    logs and messages, and no character of the secret part ever appears (the random part
    may itself contain ``_``, so splitting the key on ``_`` is not safe).
    """
    fingerprint = hashlib.sha256(api_key.encode()).hexdigest()[:6]
    parts = api_key.split("_", 2)
    if (len(parts) == 3 and parts[0] == "eko" and 2 <= len(parts[1]) <= 12
            and parts[1].isascii() and parts[1].isalpha() and parts[1].islower()
            and len(parts[2]) >= 16):
        return f"eko_{parts[1]}_…#{fingerprint}"
    return f"…#{fingerprint}"


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """The rate-limit figures of the last answer that carried them."""

    limit: int | None
    remaining: int | None
    reset: float | None
    observed_at: float


class CredentialState:
    """The token and bookkeeping of one credential. Mutated only under its lock."""

    __slots__ = (
        "_async_lock",
        "error",
        "expires_at",
        "generation",
        "pace_at",
        "rate_limit",
        "refresh_at",
        "thread_lock",
        "token",
    )

    def __init__(self) -> None:
        self.token: str | None = None
        self.refresh_at = 0.0
        self.expires_at = 0.0
        self.generation = 0
        self.error: EkoError | None = None
        self.rate_limit: RateLimitInfo | None = None
        #: Earliest time.time() the next paced call may leave (see ekoclient._pacing).
        self.pace_at = 0.0
        self.thread_lock = threading.Lock()
        self._async_lock: asyncio.Lock | None = None

    @property
    def async_lock(self) -> asyncio.Lock:
        lock = self._async_lock
        if lock is None:
            lock = self._async_lock = asyncio.Lock()
        return lock

    def fresh(self, now: float) -> str | None:
        """The token if it needs no refresh yet."""
        return self.token if now < self.refresh_at else None

    def usable(self, now: float) -> str | None:
        """The token if it has not expired, even when a refresh is due."""
        return self.token if now < self.expires_at else None

    def store(self, token: str, margin: float, now: float) -> None:
        """Keep a new token; its lifetime comes from its own claims (read, not verified)."""
        claims = _claims(token)
        lifetime = float(claims.get("exp", 0)) - float(claims.get("iat", claims.get("exp", 0)))
        if lifetime <= 0:
            lifetime = 60.0
        self.token = token
        self.expires_at = now + lifetime
        self.refresh_at = now + lifetime - min(margin, lifetime / 2)
        self.error = None
        self.generation += 1

    def fail(self, error: EkoError, *, drop_token: bool) -> None:
        """Record a failed exchange so that callers who waited share it.

        A token that still works is kept unless the key itself was refused; its refresh is
        put off a little so that a struggling token endpoint is not asked on every call.
        """
        if drop_token:
            self.token = None
            self.refresh_at = self.expires_at = 0.0
        elif self.token is not None:
            now = time.monotonic()
            self.refresh_at = min(self.expires_at, now + min(5.0, (self.expires_at - now) / 2))
        self.error = error
        self.generation += 1

    def invalidate(self, token: str | None) -> None:
        """Drop ``token`` after a 401, unless another caller already replaced it."""
        if token is not None and self.token == token:
            self.token = None
            self.refresh_at = self.expires_at = 0.0


class TokenCache:
    """Bounded LRU of credential states, shared by every view of one client.

    A fingerprint of each evicted key is remembered (never the key). An evicted key coming
    back means more keys are active than ``token_cache_size`` holds: its arrival then evicts
    a random entry instead of the least recently used (see :meth:`_victim`), and when such
    returns keep happening a WARNING says to raise ``token_cache_size``.
    """

    #: At most one thrash warning per this many seconds.
    WARN_INTERVAL = 60.0

    def __init__(self, max_size: int = 10_000) -> None:
        self.max_size = max_size
        self._states: OrderedDict[str, CredentialState] = OrderedDict()
        self._lock = threading.Lock()
        #: fingerprints of recently evicted keys, oldest first; twice the cache's size, so
        #: keys cycling through up to three times as many as it holds are recognised
        self._ghosts: dict[int, None] = {}
        #: keys that came back after eviction, in total and since the last warning
        self.returned = 0
        self._returned_since_warning = 0
        self._warned_at = -self.WARN_INTERVAL
        self._rng = random.Random()

    def state(self, credential: Credential) -> CredentialState:
        key = credential._secret
        with self._lock:
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = CredentialState()
                returning = bool(self._ghosts) and self._ghosts.pop(
                    _fingerprint(key), 0) is None
                if returning:
                    self._came_back()
                if len(self._states) > self.max_size:
                    evicted = self._victim(returning)
                    del self._states[evicted]
                    self._ghosts[_fingerprint(evicted)] = None
                    if len(self._ghosts) > 2 * self.max_size:
                        del self._ghosts[next(iter(self._ghosts))]
            else:
                self._states.move_to_end(key)
            return state

    def _victim(self, returning: bool) -> str:
        """Least recently used, unless the newcomer is a key evicted before: then a random
        one (not the newcomer, not one mid-exchange). Keys cycling through a cache too small
        for them make strict LRU evict exactly the next key needed, so every call exchanges;
        random eviction keeps part of the cycle cached (``bench.multiplex --keys``)."""
        oldest = next(iter(self._states))
        if not returning:
            return oldest
        index = self._rng.randrange(len(self._states) - 1)
        candidate = next(itertools.islice(iter(self._states), index, None))
        state = self._states[candidate]
        if state.thread_lock.locked() or (state._async_lock is not None
                                          and state._async_lock.locked()):
            return oldest
        return candidate

    def _came_back(self) -> None:
        self.returned += 1
        self._returned_since_warning += 1
        now = time.monotonic()
        if (self._returned_since_warning >= max(10, self.max_size // 10)
                and now - self._warned_at >= self.WARN_INTERVAL):
            logger.warning(
                "token cache is thrashing: %d API keys needed a new token exchange because "
                "they had been evicted (token_cache_size=%d holds fewer keys than are in "
                "use). Raise token_cache_size above the number of active keys.",
                self._returned_since_warning, self.max_size)
            self._warned_at = now
            self._returned_since_warning = 0

    def peek(self, credential: Credential) -> CredentialState | None:
        """The state if cached, without touching LRU order or creating one."""
        return self._states.get(credential._secret)

    def __len__(self) -> int:
        return len(self._states)


def _claims(token: str) -> dict[str, Any]:
    """A JWT's claims, read and not verified (the server verifies; the SDK only wants the
    lifetime). pyjwt's decode without verification costs 6x this, checking the base64
    alphabet character by character, once per exchange."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, TypeError) as exc:
        raise MalformedResponseError(
            f"the token endpoint answered with a token that is not a JWT ({exc})") from None
    if not isinstance(claims, dict):
        raise MalformedResponseError("the token endpoint answered with a JWT whose claims "
                                     "are not a JSON object")
    return claims


def _fingerprint(key: str) -> int:
    """64 bits of a hash: tells returning keys apart, reveals nothing usable about a key."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8,
                                          person=b"ekoclient-ghost").digest(), "big")


def monotonic() -> float:
    return time.monotonic()
