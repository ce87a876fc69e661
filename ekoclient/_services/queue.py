"""Queue and DedupQueue (SPEC §3, §4.4): one set of endpoints, two route prefixes.

Every endpoint is a module-level builder taking the route prefix first; :class:`prefixed`
attaches it to :class:`_QueueService`, whose two subclasses only name their prefix, so
``Queue`` and ``DedupQueue`` cannot drift apart. ``consume`` is the worker loop of
:mod:`ekoclient._consume` (sync: threads, async: tasks).

Ids: an id from ``poll`` names one claim of a message, and ack/renew with it act only while
that claim is current; a late ack after another consumer re-claimed the message comes back
in ``AckResult.stale`` and changes nothing. Ids from ``peek`` hold no claim: acking one
deletes the message whoever holds it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar, Concatenate, Generic, ParamSpec, Protocol, TypeVar, overload

from pydantic import TypeAdapter
from typing_extensions import Unpack

from .._call import Call, json_call, segment
from .._consume import ConsumerCore, run_async, run_sync
from .._executor import AsyncExecutor, SyncExecutor
from .._http import Response
from .._service import E, Service, WriteOptions, endpoint, public_signature
from ..errors import InvalidArgumentError
from ..models import AckResult, ConsumeStats, Message, RenewResult

P = ParamSpec("P")
T = TypeVar("T")

_MESSAGES = TypeAdapter(list[Message])
_JSON_HEADERS = {"Content-Type": "application/json"}


def _path(prefix: str, queue: str, suffix: str = "") -> str:
    return f"{prefix}/{segment(queue, 'queue')}{suffix}"


def _ids(ids: Iterable[str | Message]) -> list[str]:
    if isinstance(ids, (str, bytes, Message)):
        raise InvalidArgumentError("ids takes a list of message ids (or Messages), not one")
    out = [i.id if isinstance(i, Message) else i for i in ids]
    if not all(isinstance(i, str) for i in out):
        raise InvalidArgumentError("ids must be message ids (str) or Message objects")
    return out


def _messages(response: Response) -> list[Message]:
    return _MESSAGES.validate_json(response.content)


def _field(name: str) -> Callable[[Response], int]:
    return lambda response: int(response.json()[name])


def _send(prefix: str, queue: str, message: Any, **write: Unpack[WriteOptions]) -> Call[str]:
    """Send one message (any JSON value); returns its id. Committed before this returns."""
    path = _path(prefix, queue, "/send")
    parse: Callable[[Response], str] = lambda r: str(r.json()["id"])  # noqa: E731
    if message is None:  # json_call reads None as "no body"; null is a valid message
        return Call("POST", path, parse, content=b"null", headers=_JSON_HEADERS)
    return json_call("POST", path, parse, message)


def _send_batch(prefix: str, queue: str, messages: Iterable[Any],
                **write: Unpack[WriteOptions]) -> Call[list[str]]:
    """Send a list of messages atomically (all or none); returns their ids in order."""
    if isinstance(messages, (str, bytes, Mapping)):
        raise InvalidArgumentError("messages takes a list of messages")
    return json_call("POST", _path(prefix, queue, "/sendbatch"),
                     lambda r: [str(i) for i in r.json()["ids"]], list(messages))


def _poll(prefix: str, queue: str, *, claim_ttl: float = 30, limit: int = 10,
          wait: float | None = None,
          **write: Unpack[WriteOptions]) -> Call[list[Message]]:
    """Claim up to ``limit`` messages for ``claim_ttl`` seconds; ack them before the claim
    ends or they are delivered again. ``wait`` (at most 20 s): a long poll, held by the
    service until a message arrives or the wait ends, instead of answering ``[]`` at once."""
    params: dict[str, str | int | float | bool] = {"claim_ttl": claim_ttl, "limit": limit}
    if wait:
        params["wait"] = wait
    # a held poll carries no Idempotency-Key (read_only): see mock_server.middleware
    return json_call("POST", _path(prefix, queue, "/poll"), _messages, params=params,
                     read_only=bool(wait))


def _ack(prefix: str, queue: str, ids: Iterable[str | Message],
         **write: Unpack[WriteOptions]) -> Call[AckResult]:
    """Remove messages for good; ids whose claim was lost come back as ``stale``."""
    return json_call("POST", _path(prefix, queue, "/ack"),
                     lambda r: AckResult.model_validate_json(r.content), {"ids": _ids(ids)})


def _renew(prefix: str, queue: str, ids: Iterable[str | Message], *, claim_ttl: float = 30,
           **write: Unpack[WriteOptions]
           ) -> Call[RenewResult]:
    """Keep claimed messages hidden ``claim_ttl`` more seconds (never shortens a claim);
    ``claim_ttl=0`` gives them back at once."""
    return json_call("POST", _path(prefix, queue, "/renew"),
                     lambda r: RenewResult.model_validate_json(r.content),
                     {"ids": _ids(ids), "claim_ttl": claim_ttl})


def _peek(prefix: str, queue: str, *, limit: int = 10) -> Call[list[Message]]:
    """Up to ``limit`` messages, claimed or not, without claiming them."""
    return json_call("GET", _path(prefix, queue, "/peek"), _messages, params={"limit": limit})


def _size(prefix: str, queue: str) -> Call[int]:
    """Messages not yet acked (claimed ones included)."""
    return json_call("GET", _path(prefix, queue, "/size"), _field("size"))


def _claim_count(prefix: str, queue: str) -> Call[int]:
    """Messages under a live claim."""
    return json_call("GET", _path(prefix, queue, "/claimcount"), _field("count"))


def _unclaim_all(prefix: str, queue: str, **write: Unpack[WriteOptions]) -> Call[int]:
    """Release every claim (their ids go stale); returns how many were claimed."""
    return json_call("POST", _path(prefix, queue, "/unclaimall"), _field("unclaimed"))


def _purge(prefix: str, queue: str, **write: Unpack[WriteOptions]) -> Call[int]:
    """Delete every message (needs ``admin`` on the queue); returns how many."""
    return json_call("DELETE", _path(prefix, queue), _field("purged"))


def _move(prefix: str, source: str, dest: str, **write: Unpack[WriteOptions]) -> Call[int]:
    """Move every unclaimed message of ``source`` to ``dest`` atomically (read on source,
    write on dest); returns how many."""
    for value, what in ((source, "source"), (dest, "dest")):
        segment(value, what)  # same checks as a path part
    return json_call("POST", f"{prefix}/_move", _field("moved"),
                     params={"from": source, "to": dest})


class prefixed(endpoint[P, T]):
    """An endpoint whose builder takes the service's route prefix first (queue or dedupq)."""

    def __init__(self, build: Callable[Concatenate[str, P], Call[T]]) -> None:
        super().__init__(build)  # type: ignore[arg-type]

    def signature(self, build: Callable[..., Any]) -> inspect.Signature:
        return public_signature(build, drop_first=True)

    def bind(self, obj: Any) -> Callable[..., Call[T]]:
        return functools.partial(self._build, obj.prefix)


H = TypeVar("H")
H_co = TypeVar("H_co", covariant=True)


class SyncConsume(Protocol[H_co]):
    def __call__(self, queue: str, handler: Callable[[H_co], object], *,
                 claim_ttl: float = 30, limit: int = 10, concurrency: int = 1,
                 stop_event: threading.Event | None = None, poll_interval: float = 1.0,
                 max_messages: int | None = None, wait: float = 5.0) -> ConsumeStats: ...


class AsyncConsume(Protocol[H_co]):
    def __call__(self, queue: str, handler: Callable[[H_co], Any], *,
                 claim_ttl: float = 30, limit: int = 10, concurrency: int = 1,
                 stop_event: asyncio.Event | None = None, poll_interval: float = 1.0,
                 max_messages: int | None = None, wait: float = 5.0
                 ) -> Awaitable[ConsumeStats]: ...


class ConsumeCalls(Protocol):
    """How one service polls, acks and renews for :class:`consumer` (name bound)."""

    def __call__(self, obj: Any, name: str, claim_ttl: float
                 ) -> tuple[Callable[[int, float], Call[list[Any]]],
                            Callable[[list[str]], Call[AckResult]],
                            Callable[[list[str]], Call[RenewResult]]]: ...


class consumer(Generic[H]):
    """``consume(name, handler, ...)``: poll, run ``handler`` per item (``concurrency`` at a
    time) while renewing its claim every ``claim_ttl / 3`` s, ack on success, leave the claim
    to expire on failure (logged). Idle, it long-polls (``wait`` seconds, one request per
    wait) and backs off when polls fail. Ends when ``stop_event`` is set (after the running
    handlers finish) or after ``max_messages``; returns :class:`ConsumeStats`. Handlers on
    the async client may be coroutine functions; plain ones run in a thread."""

    def __init__(self, calls: ConsumeCalls, ident: Callable[[H], str], what: str) -> None:
        self._calls = calls
        self._ident = ident
        self._what = what

    @overload
    def __get__(self, obj: None, owner: Any) -> consumer[H]: ...
    @overload
    def __get__(self, obj: Service[SyncExecutor], owner: Any) -> SyncConsume[H]: ...
    @overload
    def __get__(self, obj: Service[AsyncExecutor], owner: Any) -> AsyncConsume[H]: ...

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        executor, credential = obj._executor, obj._credential
        calls, ident, what = self._calls, self._ident, self._what

        def core(name: str, claim_ttl: float, limit: int, concurrency: int,
                 poll_interval: float, max_messages: int | None, wait: float
                 ) -> ConsumerCore:
            segment(name, what)
            poll, ack, renew = calls(obj, name, claim_ttl)
            return ConsumerCore(
                poll=poll, ack=ack, renew=renew, queue=name, claim_ttl=claim_ttl, limit=limit,
                concurrency=concurrency, poll_interval=poll_interval,
                max_messages=max_messages, wait=wait, ident=ident, what=what)

        def run(call: Call[Any]) -> Any:
            return executor.execute(call, credential)

        if executor.is_async:
            async def aconsume(name: str, handler: Callable[[H], Any], *,
                               claim_ttl: float = 30, limit: int = 10, concurrency: int = 1,
                               stop_event: asyncio.Event | None = None,
                               poll_interval: float = 1.0,
                               max_messages: int | None = None,
                               wait: float = 5.0) -> ConsumeStats:
                made = core(name, claim_ttl, limit, concurrency, poll_interval, max_messages,
                            wait)
                return await run_async(made, run, handler, stop_event)

            aconsume.__doc__ = self.__doc__
            aconsume.__name__ = aconsume.__qualname__ = "consume"
            return aconsume

        def consume(name: str, handler: Callable[[H], object], *,
                    claim_ttl: float = 30, limit: int = 10, concurrency: int = 1,
                    stop_event: threading.Event | None = None, poll_interval: float = 1.0,
                    max_messages: int | None = None, wait: float = 5.0) -> ConsumeStats:
            made = core(name, claim_ttl, limit, concurrency, poll_interval, max_messages, wait)
            return run_sync(made, run, handler, stop_event)

        consume.__doc__ = self.__doc__
        return consume


def _queue_calls(obj: Any, name: str, claim_ttl: float) -> Any:
    prefix = obj.prefix
    return (lambda n, wait: _poll(prefix, name, claim_ttl=claim_ttl, limit=n, wait=wait),
            lambda ids: _ack(prefix, name, ids),
            lambda ids: _renew(prefix, name, ids, claim_ttl=claim_ttl))


def _message_id(message: Message) -> str:
    return message.id


class _QueueService(Service[E]):
    """The Queue/DedupQueue surface; subclasses only choose the route prefix."""

    __slots__ = ()
    prefix: ClassVar[str]

    send = prefixed(_send)
    send_batch = prefixed(_send_batch)
    poll = prefixed(_poll)
    ack = prefixed(_ack)
    renew = prefixed(_renew)
    peek = prefixed(_peek)
    size = prefixed(_size)
    claim_count = prefixed(_claim_count)
    unclaim_all = prefixed(_unclaim_all)
    purge = prefixed(_purge)
    move = prefixed(_move)
    consume = consumer[Message](_queue_calls, _message_id, "queue")


class Queue(_QueueService[E]):
    """Messages with claims: at-least-once, no ordering promise (``/api/queue``)."""

    __slots__ = ()
    prefix = "/api/queue"


class DedupQueue(_QueueService[E]):
    """A Queue where identical messages (same canonical JSON) sent between two polls are
    delivered once (``/api/dedupq``); ``peek`` and ``size`` still count every copy."""

    __slots__ = ()
    prefix = "/api/dedupq"
