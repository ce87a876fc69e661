"""DataBus: subscriptions over DataStore changes, polled with claims or pushed (SPEC §3, §4.4)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from pydantic import TypeAdapter
from typing_extensions import Unpack

from .._call import Call, json_call, segment
from .._filters import Filter, filter_wire
from .._http import Response
from .._service import E, Service, WriteOptions, endpoint
from .._stream import stream_settings, streaming
from ..errors import InvalidArgumentError
from ..models import AckResult, Event, PollResult, RenewResult, Subscription
from .queue import consumer

T = TypeVar("T")

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
          wait: float | None = None,
          **write: Unpack[WriteOptions]) -> Call[PollResult]:
    """Claim up to ``limit`` events for ``claim_ttl`` seconds; ack them before it ends or they
    come back. ``has_more`` says to poll again at once. ``wait`` (at most 20 s): a long poll,
    held by the service until an event arrives or the wait ends."""
    params: dict[str, str | int | float | bool] = {"claim_ttl": claim_ttl, "limit": limit}
    if wait:
        params["wait"] = wait
    # a held poll carries no Idempotency-Key (read_only): see mock_server.middleware
    return json_call("POST", _path(name, "/poll"),
                     lambda r: PollResult.model_validate_json(r.content), params=params,
                     read_only=bool(wait))


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


def _reparse(call: Call[Any], parse: Callable[[Response], T]) -> Call[T]:
    """The same request, read another way."""
    return Call(call.method, call.path, parse, params=call.params, content=call.content,
                headers=call.headers, read_only=call.read_only)


def _bus_calls(obj: Any, name: str, claim_ttl: float) -> Any:
    """poll/ack/renew shaped for the consume loop (AckResult/RenewResult, like a queue)."""

    def poll(limit: int, wait: float) -> Call[list[Event]]:
        call = _poll(name, claim_ttl=claim_ttl, limit=limit, wait=wait)
        return _reparse(call, lambda r: call.parse(r).events)

    def ack(keys: list[str]) -> Call[AckResult]:
        call = _ack(name, keys)

        def parse(r: Response) -> AckResult:
            done = call.parse(r)
            return AckResult(acked=done, stale=[k for k in keys if k not in set(done)])
        return _reparse(call, parse)

    def renew(keys: list[str]) -> Call[RenewResult]:
        call = _renew(name, keys, claim_ttl=claim_ttl)

        def parse(r: Response) -> RenewResult:
            done = call.parse(r)
            return RenewResult(renewed=done, stale=[k for k in keys if k not in set(done)])
        return _reparse(call, parse)

    return poll, ack, renew


def _event_key(event: Event) -> str:
    return event.key


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
    consume = consumer[Event](_bus_calls, _event_key, "subscription")
