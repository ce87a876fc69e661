"""DataBus: subscriptions over DataStore changes, polled with claims or pushed (SPEC §3, §4.4)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import TypeAdapter
from typing_extensions import Unpack

from .._call import Call, json_call, segment
from .._filters import Filter, filter_wire
from .._http import Response
from .._service import E, Service, WriteOptions, endpoint
from .._stream import stream_settings, streaming
from ..errors import InvalidArgumentError
from ..models import Event, PollResult, Subscription

_EVENTS = TypeAdapter(list[Event])
_SUBS = TypeAdapter(list[Subscription])


def _path(name: str, suffix: str = "") -> str:
    return f"/api/bus/subscriptions/{segment(name, 'subscription')}{suffix}"


def _keys(event_keys: Iterable[str]) -> list[str]:
    if isinstance(event_keys, str):
        raise InvalidArgumentError("event_keys takes a list of event keys, not a single string")
    return [k.key if isinstance(k, Event) else k for k in event_keys]


def _subscription(response: Response) -> Subscription:
    return Subscription.model_validate_json(response.content)


def _subscribe(name: str, *, collections: Iterable[str],
               filter: Filter | Mapping[str, Any] | None = None,
               ttl: float = 86400, event_ttl: float = 86400,
               **write: Unpack[WriteOptions]) -> Call[Subscription]:
    """Create or renew a subscription to changes of ``collections`` (names or ``*`` patterns).

    Idempotent: subscribing again renews its ``ttl`` and replaces its selection. Events are
    kept ``event_ttl`` seconds unless acked.
    """
    if isinstance(collections, str):
        raise InvalidArgumentError("collections takes a list of names, not a single string")
    body = {"collections": list(collections), "filter": filter_wire(filter), "ttl": ttl,
            "event_ttl": event_ttl}
    return json_call("PUT", _path(name), _subscription, body)


def _unsubscribe(name: str, **write: Unpack[WriteOptions]) -> Call[None]:
    """Delete the subscription and every event it still holds."""
    return json_call("DELETE", _path(name), lambda r: None)


def _get_subscription(name: str) -> Call[Subscription]:
    """One of this key's subscriptions: its collections, filter and TTLs."""
    return json_call("GET", _path(name), _subscription)


def _list_subscriptions() -> Call[list[Subscription]]:
    """The caller's own subscriptions."""
    return json_call("GET", "/api/bus/subscriptions",
                     lambda r: _SUBS.validate_json(r.content))


def _poll(name: str, *, claim_ttl: float = 30, limit: int = 10,
          **write: Unpack[WriteOptions]) -> Call[PollResult]:
    """Claim up to ``limit`` events for ``claim_ttl`` seconds; ack them before it ends or they
    come back. ``has_more`` says to poll again at once."""
    return json_call("POST", _path(name, "/poll"),
                     lambda r: PollResult.model_validate_json(r.content),
                     params={"claim_ttl": claim_ttl, "limit": limit})


def _ack(name: str, event_keys: Iterable[str], **write: Unpack[WriteOptions]) -> Call[list[str]]:
    """Remove events for good; returns the keys that were pending (others are ignored)."""
    return json_call("POST", _path(name, "/ack"), lambda r: list(r.json()["acked"]),
                     {"keys": _keys(event_keys)})


def _renew(name: str, event_keys: Iterable[str], *, claim_ttl: float = 30,
           **write: Unpack[WriteOptions]) -> Call[list[str]]:
    """Extend the claims of events still being worked on; returns the keys renewed."""
    return json_call("POST", _path(name, "/renew"), lambda r: list(r.json()["renewed"]),
                     {"keys": _keys(event_keys), "claim_ttl": claim_ttl})


def _peek(name: str, *, limit: int = 10) -> Call[list[Event]]:
    """Pending events (claimed or not) without claiming them."""
    return json_call("GET", _path(name, "/peek"),
                     lambda r: _EVENTS.validate_python(r.json()["events"]),
                     params={"limit": limit})


def _size(name: str) -> Call[int]:
    """How many events are pending (not acked, not expired)."""
    return json_call("GET", _path(name, "/size"), lambda r: int(r.json()["size"]))


class DataBus(Service[E]):
    """Change subscriptions: ``poll``/``ack``/``renew`` with claims, or ``stream`` (WSS push)."""

    __slots__ = ()

    subscribe = endpoint(_subscribe)
    unsubscribe = endpoint(_unsubscribe)
    get_subscription = endpoint(_get_subscription)
    list_subscriptions = endpoint(_list_subscriptions)
    poll = endpoint(_poll)
    ack = endpoint(_ack)
    renew = endpoint(_renew)
    peek = endpoint(_peek)
    size = endpoint(_size)
    stream = streaming(stream_settings)
