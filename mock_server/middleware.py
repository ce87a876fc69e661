"""Raw ASGI middlewares: request ids + metrics, body caps, fault injection, idempotency.

They are framework-free so they wrap every route a later issue adds without that route
doing anything. Order (outer to inner): context, body limit, faults, idempotency.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from mock_server.asgi import (
    REQUEST_ID_KEY,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    header,
    request_id,
    send_error,
)
from mock_server.config import ServerConfig
from mock_server.errors import ApiError, code_for_status, disk_full, payload_too_large
from mock_server.faults import FaultInjector
from mock_server.idempotency import (
    IdempotencyStore,
    Outcome,
    Replay,
    fingerprint,
    storable,
)
from mock_server.metrics import Metrics
from mock_server.ratelimit import rate_limit_headers
from mock_server.storage import Unit, start_fresh

log = logging.getLogger("mock_server")

_CLIENT_RID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_IDEM_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: RFC 9110 methods the router answers (405 + Allow where a path lacks one); any other
#: token gets 501 before any work, and metrics label it OTHER, so raw input never becomes
#: a label (each label value is a permanent series).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS",
                           "TRACE"})


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "OTHER"


def framing_conflict(scope: Scope) -> bool:
    """Content-Length together with Transfer-Encoding (RFC 9112 §6.1: a request smuggling
    vector; the server must not keep the connection)."""
    names = {bytes(k) for k, _ in scope.get("headers", ())}
    return b"content-length" in names and b"transfer-encoding" in names


def _new_request_id() -> str:
    """A fresh ``req_`` + 24 hex id. Unique, not secret (it is echoed to the client and in
    logs): the module PRNG (re-seeded in forked children) instead of a getrandom syscall."""
    return f"req_{random.getrandbits(96):024x}"


class ContextMiddleware:
    """Sets X-Request-Id on every response and counts requests by route template; starts
    each request from a clean storage context (see ``storage.start_fresh``)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        start_fresh()
        given = header(scope, b"x-request-id")
        rid = given if given and _CLIENT_RID.match(given) else _new_request_id()
        scope[REQUEST_ID_KEY] = rid
        status = 500
        counted = False
        responded = False

        def count() -> None:
            nonlocal counted
            if counted or scope["type"] != "http":
                return
            counted = True
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.inc(
                "ekodb_requests_total",
                method=method_label(str(scope.get("method", ""))),
                route=str(template),
                status=str(status),
            )
            if status == 429:
                self.metrics.inc("ekodb_rate_limited_total")

        async def wrapped(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                responded = True
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode()))
                headers = _with_rate_limit(scope, headers)
                message["headers"] = headers
                # counted before the client can see the answer, so a client that reads
                # the metrics right after a response finds it included
                count()
            await send(message)

        try:
            if scope["type"] == "http" and scope.get("method") not in KNOWN_METHODS:
                await send_error(scope, wrapped, 501, "not_implemented",
                                 "unsupported HTTP method; this server implements "
                                 + ", ".join(sorted(KNOWN_METHODS)))
            elif scope["type"] == "http" and framing_conflict(scope):
                await send_error(scope, wrapped, 400, "bad_request",
                                 "Content-Length together with Transfer-Encoding is refused "
                                 "(RFC 9112 section 6.1); send one of them",
                                 {"Connection": "close"})
            else:
                await self.app(scope, receive, wrapped)
        except Exception as exc:
            # A full disk is the server's fault but not a bug: answer 507 here, where every
            # route and middleware (idempotency cleanup included) has already unwound,
            # rather than let it become a 500 that also drops the connection.
            full = disk_full(exc)
            if full is None or responded or scope["type"] != "http":
                raise
            log.error("disk full (request %s): %s", rid, exc)
            await send_error(scope, wrapped, full.status, full.code, full.message,
                             full.headers)
        finally:
            count()  # no response started: counted as the 500 it becomes


def _with_rate_limit(scope: Scope, headers: list[tuple[bytes, bytes]]
                     ) -> list[tuple[bytes, bytes]]:
    """X-RateLimit-* of this request's key; a replayed answer's stored figures are stale."""
    fresh = rate_limit_headers(scope)
    if not fresh and (b"idempotent-replayed", b"true") not in headers:
        return headers
    kept = [(k, v) for k, v in headers if not k.lower().startswith(b"x-ratelimit-")]
    return kept + fresh


class BodyLimitMiddleware:
    """Caps request bodies: a Content-Length over the limit → 413 at once; a lying or absent
    Content-Length is caught while the body streams in (the receive wrapper raises)."""

    def __init__(self, app: ASGIApp, config: ServerConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.config.body_limit_for(str(scope.get("path", "")))
        declared = header(scope, b"content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                await send_error(scope, send, 400, "bad_request", "invalid Content-Length")
                return
            if int(declared) > limit:
                err = payload_too_large(limit)
                await send_error(scope, send, err.status, err.code, err.message, err.headers)
                return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise payload_too_large(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except ApiError as exc:
            if started:
                raise
            await send_error(scope, send, exc.status, exc.code, exc.message, exc.headers)


class FaultMiddleware:
    """Applies FaultInjector rules (tests only)."""

    def __init__(self, app: ASGIApp, injector: FaultInjector) -> None:
        self.app = app
        self.injector = injector

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or path.startswith("/api/_faults"):
            await self.app(scope, receive, send)
            return
        rule = self.injector.take(str(scope["method"]), path)
        if rule is None:
            await self.app(scope, receive, send)
            return
        if rule.when == "hold_commit":
            scope[HOLD_COMMIT_KEY] = lambda: self.injector.hold(rule.seconds)
            await self.app(scope, receive, send)
            return
        if rule.when == "hold_answer":

            async def late(message: Message) -> None:
                if message["type"] == "http.response.start":
                    await self.injector.hold(rule.seconds)
                await send(message)

            await self.app(scope, receive, late)
            return
        if rule.when == "after":

            async def swallow(message: Message) -> None:
                return None

            await self.app(scope, receive, swallow)
        headers = {"Retry-After": "1"} if rule.status in (429, 503) else {}
        await send_error(
            scope, send, rule.status, code_for_status(rule.status), "injected fault", headers
        )


#: Scope key: a coroutine function the idempotency layer awaits before committing (tests).
HOLD_COMMIT_KEY = "ekodb.hold_commit"

OwnerResolver = Callable[[Scope], str | None]


class ReplayGuard(Protocol):
    """What a repeat must pass before it gets a stored answer (``AppState`` is one)."""

    def authenticate(self, scope: Scope) -> Any:
        """The caller, counted against its rate limit; raises ApiError (401/403/429)."""

    def admit_replay(self, scope: Scope, principal: Any, replay: Replay) -> None:
        """Audit the replay; raise ApiError if this answer may no longer be handed out."""


_WAIT = re.compile(rb"(?:^|&)wait=([^&]*)")


def _long_poll(scope: Scope, path: str) -> bool:
    """A held poll (``.../poll?wait=N``, N > 0) is not made idempotent: its answer would be
    committed with the request's writes, and that transaction would hold the database's
    write lock for the whole wait. What a lost answer claimed comes back when its claim
    expires (at-least-once, as without a key)."""
    if not path.endswith("/poll"):
        return False
    match = _WAIT.search(bytes(scope.get("query_string", b"")))
    if match is None:
        return False
    try:
        return float(match.group(1)) > 0
    except ValueError:
        return False  # the route refuses it (422) before waiting


class IdempotencyMiddleware:
    """Replays the first answer to a repeated (key id, Idempotency-Key) write.

    A repeat is a request: before it gets a stored answer (or a 409 about one) its caller is
    authenticated again (token, key row, allowlist), counted against its rate limit and
    audited by ``guard``, exactly as the route would; the owner read from the token's
    signature only picks the row.

    The fingerprint a repeat must match is method + path + query + a hash of the body, so a
    key reused for another body is refused, not answered with the first body's result.
    Bodies under ``streamed`` prefixes (blob uploads, up to GiBs) are not read ahead and
    not part of it. The response is captured, up to ``max_stored`` bytes.
    """

    def __init__(
        self,
        app: ASGIApp,
        store: IdempotencyStore,
        owner_of: OwnerResolver,
        wait_seconds: float,
        max_stored: int,
        excluded: frozenset[str] = frozenset({"/api/auth/token"}),
        streamed: tuple[str, ...] = ("/api/blob/",),
        guard: ReplayGuard | None = None,
    ) -> None:
        self.app = app
        self.guard = guard
        self.store = store
        self.owner_of = owner_of
        self.wait_seconds = wait_seconds
        self.max_stored = max_stored
        self.excluded = excluded
        self.streamed = streamed
        #: Units of the first attempts running here; one that wrote holds the write lock.
        self._units: weakref.WeakSet[Unit] = weakref.WeakSet()
        #: Claims waiting for one of them to commit or roll back.
        self._waiting: list[asyncio.Future[None]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WRITE_METHODS:
            await self.app(scope, receive, send)
            return
        key = header(scope, b"idempotency-key")
        path = str(scope.get("path", ""))
        if key is None or path in self.excluded or _long_poll(scope, path):
            await self.app(scope, receive, send)
            return
        if not _IDEM_KEY.match(key):
            await send_error(scope, send, 400, "bad_request",
                             "Idempotency-Key must be 1-255 visible ASCII characters")
            return
        owner = self.owner_of(scope)  # a token check, no I/O: no thread hop
        if owner is None:  # not authenticated: the route itself will refuse
            await self.app(scope, receive, send)
            return
        body = b""
        if not path.startswith(self.streamed):
            # read now (the body cap applies as it comes in), hand the same bytes on below
            read = await _read_body(receive)
            if read is None:  # the client went away: nobody to answer
                return
            body = read
            receive = _replayed_body(body, receive)
        fp = fingerprint(str(scope["method"]), path, bytes(scope.get("query_string", b"")),
                         body)
        deadline = time.monotonic() + self.wait_seconds
        delay = 0.01
        principal: Any = None
        while True:
            outcome = await self._begin(owner, key, fp)
            if outcome != "proceed" and principal is None and self.guard is not None:
                try:  # once, however long it waits: one request, one count
                    principal = await asyncio.to_thread(self.guard.authenticate, scope)
                except ApiError as exc:
                    await send_error(scope, send, exc.status, exc.code, exc.message,
                                     exc.headers)
                    return
            if isinstance(outcome, Replay):
                if self.guard is not None:
                    try:
                        await asyncio.to_thread(self.guard.admit_replay, scope, principal,
                                                outcome)
                    except ApiError as exc:
                        await send_error(scope, send, exc.status, exc.code, exc.message,
                                         exc.headers)
                        return
                await self._replay(scope, send, outcome)
                return
            if outcome == "conflict":
                await send_error(scope, send, 409, "idempotency_key_reused",
                                 "Idempotency-Key was already used for a different request "
                                 "(method, path, query or body); use a new key")
                return
            if outcome == "proceed":
                break
            if time.monotonic() >= deadline:
                await send_error(scope, send, 409, "idempotency_in_progress",
                                 "a request with this Idempotency-Key is still running",
                                 {"Retry-After": "1"})
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
        await self._run_first(scope, receive, send, owner, key)

    async def _begin(self, owner: str, key: str, fp: bytes) -> Outcome:
        """Claim the key on the loop whenever that needs no wait (no thread hop).

        The claim needs the database's write lock. Held by a request of ours (a unit that
        wrote, until its answer commits on this loop), it is waited for here, on the loop;
        held by anyone else (another node, a write without a key), in a thread, where
        SQLite's busy timeout waits.
        """
        give_up = time.monotonic() + 0.5
        peeked = False
        while True:
            # while a write of ours holds the lock, a claim would only be refused: skip it
            if not self._ours_hold_lock():
                outcome = self.store.begin_nowait(owner, key, fp)
                if outcome is not None:
                    return outcome
                if self.store.housekeeping_due:  # rare: begin() does it, in a thread
                    return await asyncio.to_thread(self.store.begin, owner, key, fp)
            if not peeked:  # a repeat is answered without the lock (later: by the claim)
                seen = self.store.peek(owner, key, fp)
                if seen is not None:
                    return seen
                peeked = True
            left = give_up - time.monotonic()
            if left <= 0 or not self._ours_hold_lock():
                return await asyncio.to_thread(self.store.begin, owner, key, fp)
            await self._lock_freed(left)

    def _ours_hold_lock(self) -> bool:
        return any(unit.locking for unit in self._units)

    async def _lock_freed(self, timeout: float) -> None:
        """Until a unit of ours commits or rolls back, or ``timeout`` (a future and a
        timer: cheaper than ``asyncio.wait_for``, which starts a task)."""
        loop = asyncio.get_running_loop()
        freed: asyncio.Future[None] = loop.create_future()
        self._waiting.append(freed)
        timer = loop.call_later(timeout, _resolve, freed)
        try:
            await freed
        finally:
            timer.cancel()

    def _released(self, unit: Unit) -> None:
        """``unit`` committed or rolled back: claims waiting on the loop may try again."""
        self._units.discard(unit)
        waiting, self._waiting = self._waiting, []
        for freed in waiting:
            _resolve(freed)

    async def _replay(self, scope: Scope, send: Send, replay: Replay) -> None:
        headers = list(replay.headers)
        body = replay.body
        if replay.status >= 400 and body.startswith(b'{"error"'):
            # an error envelope names the request it answered: name this one
            try:
                doc = json.loads(body)
                doc["error"]["request_id"] = request_id(scope)
                body = json.dumps(doc).encode()
            except (ValueError, KeyError, TypeError):
                pass
        headers.append((b"content-length", str(len(body)).encode()))
        headers.append((b"idempotent-replayed", b"true"))
        await send({"type": "http.response.start", "status": replay.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _run_first(
        self, scope: Scope, receive: Receive, send: Send, owner: str, key: str
    ) -> None:
        """Run the handler with its writes held; commit them with the answer, then answer.

        The answer is held back until that COMMIT: a client never sees success for a write
        a crash could still undo. An answer too large to store is let through once it
        outgrows the cap, after committing the writes without keeping it.
        """
        status = 0
        held: list[Message] = []
        size = 0
        complete = False
        # "holding" the answer; "passing" it through (over the cap, writes committed);
        # "refused": a retry took the key over, this attempt's writes are rolled back
        mode = "holding"

        async def capture(message: Message) -> None:
            nonlocal status, size, complete, mode
            if mode == "passing":
                await send(message)
                return
            if mode == "refused":
                return
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
                if not message.get("more_body", False):
                    complete = True
            held.append(message)
            if size > self.max_stored and storable(status):
                try:
                    kept = await _finish(unit, self.store.forget, owner, key)
                finally:
                    self._released(unit)
                mode = "passing" if kept else "refused"
                if kept:
                    await _send_all(send, held)
                held.clear()

        failed: BaseException | None = None
        with self.store.unit() as unit:
            self._units.add(unit)
            try:
                await self.app(scope, receive, capture)
            except BaseException as exc:
                failed = exc
        # outside the unit's context from here: bookkeeping must not join its transaction
        if failed is not None:
            await asyncio.shield(self._discard(owner, key, unit))
            raise failed
        if mode == "passing":
            return
        if mode == "holding" and not (complete and storable(status)):
            await self._discard(owner, key, unit)
            await _send_all(send, held)
            return
        if mode == "holding":
            try:
                hold = scope.get(HOLD_COMMIT_KEY)
                if hold is not None and unit.begun:
                    await hold()
                if not await self._complete(unit, owner, key, status, held):
                    mode = "refused"
            except BaseException:  # cancelled while held, or the answer could not be stored
                await asyncio.shield(self._discard(owner, key, unit))
                raise
        if mode == "refused":  # a retry took the key over while this attempt ran
            await send_error(scope, send, 409, "idempotency_in_progress",
                             "a retry of this request with the same Idempotency-Key took "
                             "over; ask again for its answer", {"Retry-After": "1"})
            return
        await _send_all(send, held)

    async def _complete(self, unit: Unit, owner: str, key: str, status: int,
                        held: list[Message]) -> bool:
        start = next(m for m in held if m["type"] == "http.response.start")
        headers = [(bytes(k), bytes(v)) for k, v in start.get("headers", [])]
        body = b"".join(bytes(m.get("body", b"")) for m in held
                        if m["type"] == "http.response.body")
        try:
            return await _finish(unit, self.store.complete, owner, key, status, headers, body)
        finally:
            self._released(unit)

    async def _discard(self, owner: str, key: str, unit: Unit) -> None:
        """Undo the attempt's writes, then free its key for a retry."""
        unit.rollback()  # on the loop, as in _finish: never waits
        self._released(unit)
        if unit.due:
            await asyncio.to_thread(unit.settle)
        await asyncio.to_thread(self.store.abandon, owner, key)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if the client disconnected first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(bytes(message.get("body", b"")))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replayed_body(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the app the body read ahead, then waits on the real one (for
    a disconnect)."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _send_all(send: Send, messages: list[Message]) -> None:
    for message in messages:
        await send(message)


R = TypeVar("R")


async def _finish(unit: Unit, step: Callable[..., R], *args: Any) -> R:
    """Run ``step(*args, unit)``: an idempotency step that ends the request's unit.

    With a unit that wrote, on the loop itself: this process then holds the database's
    write lock, so COMMIT never waits, and every writer of every node waits for this one.
    A hop to a worker thread and back kept the lock about 15% longer under concurrent
    writes (and needed a thread that writers queued on the lock might all hold). Without
    writes the step opens its own transaction, which may wait: a thread then.
    """
    if unit.begun:
        result = step(*args, unit)
        # file unlinks and wake-ups the commit made due: off the loop, the lock is free
        # (wake-ups alone run here: a hop to a thread costs more than they do)
        if unit.due_quick:
            unit.settle()
        else:
            await asyncio.to_thread(unit.settle)
        return result
    unit.active = False  # holds nothing: the step's own transaction must not start it
    return await asyncio.to_thread(step, *args, unit)
