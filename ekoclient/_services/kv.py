"""The KV store (SPEC §3.1 KV; ekoDB's ``/api/kv/...`` routes).

``get`` and ``exists`` ask ``POST /api/kv/batch/get`` for one key rather than
``GET /api/kv/get/{key}``: a miss is then an ordinary answer (an empty list) instead of a
404 the SDK would have to turn back into ``None``, and the route is ekoDB's own, so the same
code works against a real ekoDB.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from typing_extensions import Unpack

from .._call import Call, json_call, parse_none, segment
from .._http import Response
from .._service import E, Service, WriteOptions, endpoint
from ..errors import InvalidArgumentError

TTL = float | int | dt.timedelta | None


def _ttl(ttl: TTL) -> float | int | None:
    """Seconds as a number (a timedelta is converted); refused unless positive."""
    if ttl is None:
        return None
    if isinstance(ttl, dt.timedelta):
        ttl = ttl.total_seconds()
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
        raise InvalidArgumentError(f"ttl must be a positive number of seconds, got {ttl!r}")
    return ttl


def _key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidArgumentError(f"a KV key is a non-empty string, got {key!r}")
    return key


def _keys(keys: Iterable[str]) -> list[str]:
    if isinstance(keys, str):
        raise InvalidArgumentError("keys must be a list of keys, not a single string")
    return [_key(k) for k in keys]


def _entries(response: Response) -> dict[str, Any]:
    data = response.json()
    if not isinstance(data, list):
        raise ValueError("expected a list of {key, value} entries")
    return {str(e["key"]): e["value"] for e in data}


def _set(key: str, value: Any, *, ttl: TTL = None,
         **write: Unpack[WriteOptions]) -> Call[None]:
    """Store ``value`` (any JSON value) under ``key``; with ``ttl`` it expires after that
    many seconds. A set replaces the previous value and expiry."""
    body: dict[str, Any] = {"value": value}
    if (seconds := _ttl(ttl)) is not None:
        body["ttl"] = seconds
    return json_call("POST", f"/api/kv/set/{segment(_key(key), 'key')}", parse_none, body)


def _get(key: str) -> Call[Any]:
    """The value under ``key``, or None when it is absent or expired."""
    name = _key(key)
    return json_call("POST", "/api/kv/batch/get", lambda r: _entries(r).get(name),
                     {"keys": [name]}, read_only=True)


def _exists(key: str) -> Call[bool]:
    """Whether ``key`` holds a value that has not expired."""
    name = _key(key)
    return json_call("POST", "/api/kv/batch/get", lambda r: name in _entries(r),
                     {"keys": [name]}, read_only=True)


def _delete(key: str, **write: Unpack[WriteOptions]) -> Call[None]:
    """Remove ``key``; removing an absent key is not an error."""
    return json_call("DELETE", f"/api/kv/delete/{segment(_key(key), 'key')}", parse_none)


def _get_many(keys: Iterable[str]) -> Call[dict[str, Any]]:
    """``{key: value}`` for the keys that exist (absent and expired keys are left out)."""
    return json_call("POST", "/api/kv/batch/get", _entries, {"keys": _keys(keys)},
                     read_only=True)


def _set_many(mapping: Mapping[str, Any], *, ttl: TTL = None,
              **write: Unpack[WriteOptions]) -> Call[None]:
    """Store every ``key: value`` of ``mapping`` in one request, all or nothing."""
    if not isinstance(mapping, Mapping):
        raise InvalidArgumentError("set_many takes a mapping of keys to values")
    keys = _keys(mapping)
    body: dict[str, Any] = {"keys": keys, "values": [mapping[k] for k in keys]}
    if (seconds := _ttl(ttl)) is not None:
        body["ttl"] = seconds
    return json_call("POST", "/api/kv/batch/set", parse_none, body)


def _deleted(response: Response) -> list[str]:
    return [str(key) for key, existed in response.json() if existed]


def _delete_many(keys: Iterable[str], **write: Unpack[WriteOptions]) -> Call[list[str]]:
    """Remove the keys; returns those that held a value."""
    return json_call("DELETE", "/api/kv/batch/delete", _deleted, {"keys": _keys(keys)})


def _find(pattern: str | None = None, *, include_expired: bool = False
          ) -> Call[list[dict[str, Any]]]:
    """Entries ``{"key", "value", "expires_at"}`` whose key matches the glob ``pattern``
    (``*``, ``?``; None for all), limited to the keys this API key may read."""
    if pattern is not None and (not isinstance(pattern, str) or not pattern):
        raise InvalidArgumentError(f"pattern must be a non-empty glob or None, got {pattern!r}")
    body = {"pattern": pattern, "include_expired": bool(include_expired)}
    return json_call("POST", "/api/kv/find", lambda r: list(r.json()),
                     {k: v for k, v in body.items() if v is not None}, read_only=True)


class KV(Service[E]):
    """Key → JSON value entries with optional expiry, scoped by ``kv:<prefix>*`` grants."""

    __slots__ = ()

    set = endpoint(_set)
    get = endpoint(_get)
    exists = endpoint(_exists)
    delete = endpoint(_delete)
    get_many = endpoint(_get_many)
    set_many = endpoint(_set_many)
    delete_many = endpoint(_delete_many)
    find = endpoint(_find)
