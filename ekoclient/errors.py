"""Exceptions raised by ekoclient, and the one place where HTTP answers become them.

Every failure a caller can see is an :class:`EkoError`. Answers from the service are
:class:`APIError` subclasses chosen by status; failures to reach the service at all are
:class:`TransportError`. Messages never contain an API key or token: the server's envelope
carries none, and the SDK's own messages name a key only by its short hint.

Every exception pickles (so it can cross a ``ProcessPoolExecutor`` or ``multiprocessing``
boundary): :meth:`EkoError.__reduce__` rebuilds it from its message and attributes instead
of calling ``__init__`` again, which keyword-only constructors would not survive.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping
from typing import Any

__all__ = [
    "APIError",
    "AuthenticationError",
    "ClientClosedError",
    "ConfigurationError",
    "ConflictError",
    "EkoError",
    "EventLoopError",
    "IntegrityError",
    "InvalidArgumentError",
    "MalformedResponseError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RangeNotSatisfiableError",
    "RateLimitError",
    "ServerError",
    "TimeoutError",
    "TransportError",
    "ValidationError",
]


def _restore(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]
             ) -> BaseException:
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class EkoError(Exception):
    """Base class of every exception ekoclient raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        return _restore, (type(self), self.args, dict(self.__dict__))


class ClientClosedError(EkoError, RuntimeError):
    """The client was closed; make a new one (or keep it open while you use it)."""


class EventLoopError(EkoError, RuntimeError):
    """An :class:`~ekoclient.AsyncClient` was used from an event loop other than its own."""


class ConfigurationError(EkoError, ValueError):
    """The client was configured in a way that cannot work (bad URL, missing key, ...)."""


class InvalidArgumentError(EkoError, ValueError):
    """An argument was rejected before anything was sent."""


class TransportError(EkoError):
    """The service could not be reached, or the connection failed before an answer."""


class TimeoutError(TransportError, builtins.TimeoutError):  # the name SPEC §3.1 fixes
    """No answer within the client's timeout (connect, read, write or waiting for the pool).

    Also a built-in :class:`TimeoutError`, so ``except TimeoutError`` in user code catches it.
    """


class IntegrityError(EkoError):
    """Bytes received or sent do not match the checksum the service recorded for them."""


class MalformedResponseError(TransportError):
    """The service answered, but with a body the SDK could not read (e.g. a proxy's page)."""


class APIError(EkoError):
    """The service answered with an error status.

    ``status`` is the HTTP status, ``code`` the machine-readable error code, ``message``
    the server's explanation and ``request_id`` the id to quote when reporting a problem.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str = "unknown",
        request_id: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        super().__init__(message)

    def __str__(self) -> str:
        rid = f", request id {self.request_id}" if self.request_id else ""
        return f"{self.message} (HTTP {self.status}, {self.code}{rid})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status}, code={self.code!r}, "
            f"message={self.message!r}, request_id={self.request_id!r})"
        )


class ValidationError(APIError):
    """The request was malformed or its content was refused (400, 415, 422)."""


class AuthenticationError(APIError):
    """The API key or token was refused (401): unknown, revoked, rotated or expired."""


class PermissionDeniedError(APIError):
    """The key is valid but not allowed to do this (403)."""


class NotFoundError(APIError):
    """The resource does not exist, or this key may not see it (404)."""


class ConflictError(APIError):
    """The request conflicts with the current state (409)."""


class PayloadTooLargeError(APIError):
    """The body was larger than the service accepts (413)."""


class RangeNotSatisfiableError(APIError):
    """A byte range lies outside the blob (416)."""


class RateLimitError(APIError):
    """Too many requests (429). ``retry_after`` is in seconds; figures are from the headers."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 429,
        code: str = "rate_limited",
        request_id: str | None = None,
        retry_after: float | None = None,
        limit: int | None = None,
        remaining: int | None = None,
        reset: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, request_id=request_id)
        self.retry_after = retry_after
        self.limit = limit
        self.remaining = remaining
        self.reset = reset


class ServerError(APIError):
    """The service failed (5xx)."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: ValidationError,
    416: RangeNotSatisfiableError,
    422: ValidationError,
    429: RateLimitError,
}


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def error_from_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    retry_after: float | None = None,
) -> APIError:
    """Build the typed exception for an error answer.

    The body should be the SPEC §4.2 envelope; anything else (a proxy's HTML page, an empty
    body) still yields a useful exception, with a message saying what came back.
    """
    code, message, request_id = "unknown", "", headers.get("x-request-id")
    try:
        envelope: Any = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        envelope = None
    if isinstance(envelope, dict) and isinstance(envelope.get("error"), dict):
        err = envelope["error"]
        code = str(err.get("code") or code)
        message = str(err.get("message") or "")
        request_id = str(err.get("request_id") or request_id or "") or None
    if not message:
        message = f"the service answered HTTP {status} without an error description"
    elif code == "collection_not_found":
        message += (" — with ekoclient: client.datastore.create_collection(name), once, "
                    "with a key that has admin on it")
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    if cls is RateLimitError:
        reset = _int_header(headers, "x-ratelimit-reset")
        return RateLimitError(
            message,
            status=status,
            code=code,
            request_id=request_id,
            retry_after=retry_after,
            limit=_int_header(headers, "x-ratelimit-limit"),
            remaining=_int_header(headers, "x-ratelimit-remaining"),
            reset=float(reset) if reset is not None else None,
        )
    return cls(message, status=status, code=code, request_id=request_id)
