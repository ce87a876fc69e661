"""Raw ASGI middlewares: request ids + metrics, body caps, fault injection, idempotency.

They are framework-free so they wrap every route a later issue adds without that route
doing anything. Order (outer to inner): context, body limit, faults, idempotency.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import Callable

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
from mock_server.errors import ApiError, code_for_status, payload_too_large
from mock_server.faults import FaultInjector
from mock_server.idempotency import (
    MAX_STORED_BODY,
    IdempotencyStore,
    Replay,
    fingerprint,
    storable,
)
from mock_server.metrics import Metrics
from mock_server.ratelimit import rate_limit_headers

_CLIENT_RID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_IDEM_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ContextMiddleware:
    """Sets X-Request-Id on every response and counts requests by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = header(scope, b"x-request-id")
        rid = given if given and _CLIENT_RID.match(given) else "req_" + secrets.token_hex(12)
        scope[REQUEST_ID_KEY] = rid
        status = 500
        counted = False

        def count() -> None:
            nonlocal counted
            if counted or scope["type"] != "http":
                return
            counted = True
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.inc(
                "ekodb_requests_total",
                method=str(scope.get("method", "")),
                route=str(template),
                status=str(status),
            )
            if status == 429:
                self.metrics.inc("ekodb_rate_limited_total")

        async def wrapped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
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
            await self.app(scope, receive, wrapped)
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
        if rule.when == "after":

            async def swallow(message: Message) -> None:
                return None

            await self.app(scope, receive, swallow)
        headers = {"Retry-After": "1"} if rule.status in (429, 503) else {}
        await send_error(
            scope, send, rule.status, code_for_status(rule.status), "injected fault", headers
        )


OwnerResolver = Callable[[Scope], str | None]


class IdempotencyMiddleware:
    """Replays the first answer to a repeated (key id, Idempotency-Key) write.

    Never reads the request body (blob uploads stream through untouched); the fingerprint
    is method + path + query. Only the (small) response is captured.
    """

    def __init__(
        self,
        app: ASGIApp,
        store: IdempotencyStore,
        owner_of: OwnerResolver,
        wait_seconds: float,
        excluded: frozenset[str] = frozenset({"/api/auth/token"}),
    ) -> None:
        self.app = app
        self.store = store
        self.owner_of = owner_of
        self.wait_seconds = wait_seconds
        self.excluded = excluded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WRITE_METHODS:
            await self.app(scope, receive, send)
            return
        key = header(scope, b"idempotency-key")
        path = str(scope.get("path", ""))
        if key is None or path in self.excluded:
            await self.app(scope, receive, send)
            return
        if not _IDEM_KEY.match(key):
            await send_error(scope, send, 400, "bad_request",
                             "Idempotency-Key must be 1-255 visible ASCII characters")
            return
        owner = await asyncio.to_thread(self.owner_of, scope)
        if owner is None:  # not authenticated: the route itself will refuse
            await self.app(scope, receive, send)
            return
        fp = fingerprint(str(scope["method"]), path, bytes(scope.get("query_string", b"")))
        deadline = time.monotonic() + self.wait_seconds
        delay = 0.01
        while True:
            outcome = await asyncio.to_thread(self.store.begin, owner, key, fp)
            if isinstance(outcome, Replay):
                await self._replay(scope, send, outcome)
                return
            if outcome == "conflict":
                await send_error(scope, send, 409, "idempotency_key_reused",
                                 "Idempotency-Key was already used for a different request")
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
        status = 0
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        size = 0
        complete = False

        async def capture(message: Message) -> None:
            nonlocal status, headers, size, complete
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
            elif message["type"] == "http.response.body":
                body = bytes(message.get("body", b""))
                size += len(body)
                if size <= MAX_STORED_BODY:
                    chunks.append(body)
                if not message.get("more_body", False):
                    complete = True
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(self.store.abandon, owner, key))
            raise
        if complete and storable(status) and size <= MAX_STORED_BODY:
            await asyncio.to_thread(self.store.complete, owner, key, status, headers,
                                    b"".join(chunks))
        else:
            await asyncio.to_thread(self.store.abandon, owner, key)
