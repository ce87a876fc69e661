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
import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import jwt

from .errors import EkoError


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
        claims = jwt.decode(token, options={"verify_signature": False})
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
    """Bounded LRU of credential states, shared by every view of one client."""

    def __init__(self, max_size: int = 10_000) -> None:
        self.max_size = max_size
        self._states: OrderedDict[str, CredentialState] = OrderedDict()
        self._lock = threading.Lock()

    def state(self, credential: Credential) -> CredentialState:
        key = credential._secret
        with self._lock:
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = CredentialState()
                if len(self._states) > self.max_size:
                    self._states.popitem(last=False)
            else:
                self._states.move_to_end(key)
            return state

    def peek(self, credential: Credential) -> CredentialState | None:
        """The state if cached, without touching LRU order or creating one."""
        return self._states.get(credential._secret)

    def __len__(self) -> int:
        return len(self._states)


def monotonic() -> float:
    return time.monotonic()
