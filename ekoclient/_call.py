"""The sans-I/O description of one API call.

Every endpoint of every service is a function that returns a :class:`Call`: method, path,
query, body, whether it may be replayed, and how to turn the answer into a result. The sync
and async executors run the same descriptions, so each endpoint is defined exactly once.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import uuid
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from pydantic import BaseModel

from ._http import Response
from .errors import APIError, EkoError, InvalidArgumentError

T = TypeVar("T")

Body = bytes | Iterable[bytes] | AsyncIterable[bytes] | None

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request to make and how to read its answer.

    ``replayable`` is False only for bodies that are consumed as they are sent (an iterator
    of bytes): such a call cannot be retried once it started sending. ``read_only`` marks a
    query sent as POST (``find``): it changes nothing, so it needs no Idempotency-Key, and
    sending one would make the server store every answer. ``explain`` may rewrite an error
    answer with what the SDK knows and the server could not say (a HEAD 404 has no body).
    """

    method: str
    path: str
    parse: Callable[[Response], T]
    params: Mapping[str, str | int | float | bool] | None = None
    content: Body = None
    headers: Mapping[str, str] = field(default_factory=dict)
    auth: bool = True
    stream: bool = False
    replayable: bool = True
    read_only: bool = False
    explain: Callable[[APIError], EkoError] | None = None

    @property
    def is_write(self) -> bool:
        """Writes carry an Idempotency-Key so that retrying them applies them once."""
        return not self.read_only and self.method not in _SAFE_METHODS


_JSON_HEADERS = {"Content-Type": "application/json"}


def json_default(value: Any) -> Any:
    """JSON for the values pydantic would also write: models, dates and times (ISO 8601),
    UUIDs and Decimals (as strings, so no digit is lost), enums (their value)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, Decimal)):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def json_call(
    method: str,
    path: str,
    parse: Callable[[Response], T],
    body: Any = None,
    *,
    params: Mapping[str, str | int | float | bool] | None = None,
    auth: bool = True,
    read_only: bool = False,
) -> Call[T]:
    """A call whose body (if any) is JSON; NaN and infinities are refused before sending."""
    if body is None:
        return Call(method, path, parse, params=params, auth=auth, read_only=read_only)
    try:
        content = json.dumps(body, separators=(",", ":"), allow_nan=False,
                             default=json_default).encode()
    except ValueError as exc:
        raise InvalidArgumentError(f"the request body cannot be sent as JSON: {exc}") from exc
    except TypeError as exc:
        raise InvalidArgumentError(f"the request body is not JSON-serialisable: {exc}") from exc
    return Call(method, path, parse, params=params, content=content, headers=_JSON_HEADERS,
                auth=auth, read_only=read_only)


def segment(value: str, what: str) -> str:
    """Quote one user-given path segment, refusing values that would change the route."""
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(f"{what} must be a non-empty string, got {value!r}")
    if value in (".", ".."):
        raise InvalidArgumentError(f"{what} may not be {value!r}")
    return quote(value, safe="")


def parse_json(response: Response) -> Any:
    """The decoded JSON body."""
    return response.json()


def parse_none(response: Response) -> None:
    """Ignore the body: the status alone says the call succeeded."""
    return None
