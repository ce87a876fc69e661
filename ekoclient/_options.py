"""Per-call options (``with_options``) and raw responses (``with_raw_response``).

Both work by deriving the executor: a shallow copy that shares the pool, the token cache,
the host pool and the retry budget, but carries its own :class:`CallOptions`. So a derived
client or view costs one small object, every endpoint honours the options without knowing
about them, and services added later get them for free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import ConfigurationError, InvalidArgumentError

T = TypeVar("T")

_FORBIDDEN_HEADERS = frozenset({"authorization", "idempotency-key", "host", "content-length"})


@dataclass(frozen=True, slots=True)
class CallOptions:
    """What ``with_options`` changes for every call made through the derived object."""

    #: (connect, read, write, pool) seconds, or None for the client's own.
    timeouts: tuple[float, float, float, float] | None = None
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    raw: bool = False


def check_extra_headers(headers: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ConfigurationError("extra_headers maps header names to string values")
        if name.lower() in _FORBIDDEN_HEADERS:
            raise ConfigurationError(
                f"extra_headers may not set {name!r}: the SDK sets it (use api_key=... for "
                "Authorization, idempotency_key=... on a write for Idempotency-Key)")
        out[name] = value
    return out


def check_idempotency_key(key: object) -> str:
    """The server's rule (1-255 visible ASCII characters), checked before sending."""
    if (not isinstance(key, str) or not 1 <= len(key) <= 255
            or not all("\x21" <= c <= "\x7e" for c in key)):
        raise InvalidArgumentError(
            "idempotency_key must be 1-255 visible ASCII characters (no spaces), e.g. a "
            "UUID or 'order-1234-charge'")
    return key


class _Headers(dict[str, str]):
    """Response headers with lower-case names; lookups ignore case."""

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name.lower() if isinstance(name, str) else name)


@dataclass(frozen=True, slots=True)
class RawResponse(Generic[T]):
    """An answer with its HTTP details: what ``client.with_raw_response.<service>.<method>()``
    returns. ``parsed`` is what the plain call would have returned."""

    status_code: int
    headers: Mapping[str, str]
    request_id: str | None
    parsed: T
    #: Attempts made (1 when the first try succeeded).
    attempts: int
    #: Seconds the last attempt took, from sending to the answer's headers.
    elapsed: float

    def parse(self) -> T:
        """The parsed result (same as ``.parsed``; the name openai's SDK users know)."""
        return self.parsed


def raw_headers(raw: Mapping[str, str]) -> Mapping[str, str]:
    """A copy of the response headers for RawResponse, looked up without regard to case."""
    return _Headers((k.lower(), v) for k, v in raw.items())
