"""The server's HTTP/1.1 protocols: uvicorn's, bounded per connection, with SPEC §4.2
envelopes for requests that never reach the app.

Two parsers: httptools (llhttp, in C; the ``server-fast`` and dev extras) when it is
installed, else h11 (pure Python, always there); ``ServerConfig.http`` forces one. They
share the connection bounds below (:class:`Bounds`); httptools adds the checks h11 makes and
llhttp does not (see :mod:`mock_server.protocols_httptools`), so hostile input gets a 4xx
envelope and a closed connection on either.
"""

from __future__ import annotations

import asyncio
import importlib.util
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from mock_server.asgi import (
    REQUEST_ID_KEY,
    Receive,
    Scope,
    Send,
    error_body,
    request_id,
    send_error,
)
from mock_server.metrics import Metrics

if TYPE_CHECKING:
    from mock_server.config import ServerConfig

#: Largest request line + headers accepted (h11's default is 16 KiB; llhttp has no limit of
#: its own). The API describes query strings up to two 8192-character fields
#: (``select_fields``/``exclude_fields``): percent-encoded 4-byte characters make that
#: about 192 KiB, which must reach the app (and its validation) rather than be refused by
#: the HTTP parser.
MAX_REQUEST_HEAD = 256 * 1024

#: What answers a request the parser refuses (the envelope's message).
MALFORMED = "invalid HTTP request: malformed, or request line and headers too large"


def httptools_available() -> bool:
    return importlib.util.find_spec("httptools") is not None


def uvloop_available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def resolve_loop(kind: str) -> str:
    """The event loop a server runs: ``kind``, or for "auto" uvloop when installed."""
    if kind == "auto":
        return "uvloop" if uvloop_available() else "asyncio"
    return kind


def resolve_http(kind: str) -> str:
    """The parser a server runs: ``kind``, or for "auto" httptools when installed, else h11."""
    if kind == "auto":
        return "httptools" if httptools_available() else "h11"
    if kind == "httptools" and not httptools_available():
        raise RuntimeError("http='httptools' needs httptools: pip install "
                           "'ekoclient[server-fast]' (or use http='h11')")
    return kind


def raw_answer(status: int, reason: bytes, code: str, message: str,
               extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A complete HTTP/1.1 answer with the SPEC §4.2 envelope that closes the connection,
    for answers written straight to the transport (no request reached the app)."""
    rid = "req_" + secrets.token_hex(12)
    body = error_body(code, message, rid)
    head = [b"HTTP/1.1 %d %s" % (status, reason), b"content-type: application/json",
            b"content-length: %d" % len(body), b"x-request-id: " + rid.encode(),
            b"connection: close", *(k + b": " + v for k, v in extra)]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


@dataclass
class Shared:
    """What the connections of one server share (they all run on its loop thread)."""

    metrics: Metrics
    header_timeout: float
    cap: int | None
    open_now: int = 0

    async def over_capacity(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app of a connection opened past ``cap``: 503 + Retry-After, then close."""
        scope[REQUEST_ID_KEY] = "req_" + secrets.token_hex(12)
        await send_error(scope, send, 503, "service_unavailable",
                         f"server busy: at its limit of {self.cap} open connections; "
                         "retry shortly",
                         {"Retry-After": "1", "Connection": "close",
                          "X-Request-Id": request_id(scope)})


class Bounds:
    """Per-connection bounds, mixed into uvicorn's protocols (which call these hooks):

    * TCP connections are counted (``ekodb_connections_*`` metrics).
    * A request head (line + headers) must be complete within ``header_timeout`` of the
      connection or of the previous answer (slowloris): else 408 and close.
    * A new connection that sends nothing is closed after ``keep_alive_timeout``, as an idle
      keep-alive one is (uvicorn only times out idle connections after an answer).
    * Past ``max_connections`` open connections, a request gets 503 with Retry-After and its
      connection is closed (the envelope, not uvicorn's plain-text 503).
    * A WebSocket upgrade stops counting as an HTTP connection (WebSockets are capped per key).
    * At shutdown, idle connections are dropped at once (see :meth:`_shutdown_idle`).
    """

    shared: ClassVar[Shared]
    _counted = False
    _head_timer: asyncio.TimerHandle | None = None
    _armed_cycle: object = None
    _head_started = False

    if TYPE_CHECKING:  # provided by uvicorn's protocol classes
        loop: asyncio.AbstractEventLoop
        transport: asyncio.Transport
        cycle: Any
        app: Any
        timeout_keep_alive: int  # uvicorn types it int; a float works (call_later)
        timeout_keep_alive_task: asyncio.TimerHandle | None

        def timeout_keep_alive_handler(self) -> None: ...

    def _opened(self) -> None:
        shared = self.shared
        shared.metrics.inc("ekodb_connections_opened_total")
        shared.metrics.inc("ekodb_connections_open")
        if shared.cap is not None and shared.open_now >= shared.cap:
            self.app = shared.over_capacity
        shared.open_now += 1
        self._counted = True
        self._arm_head_timer()
        # idle before the first request: uvicorn's keep-alive timer (data cancels it)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.shared.open_now -= 1
            self.shared.metrics.inc("ekodb_connections_open", -1)

    def _closed(self) -> None:
        self._uncount()
        self._disarm_head_timer()

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._armed_cycle = self.cycle
        self._head_started = False
        self._head_timer = self.loop.call_later(self.shared.header_timeout, self._head_too_slow)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not self._armed_cycle:  # a request arrived meanwhile
            return
        if self._head_started:
            self.transport.write(raw_answer(
                408, b"Request Timeout", "request_timeout",
                f"request line and headers not received within {self.shared.header_timeout:g}s"))
        self.transport.close()

    def _data_in(self) -> None:
        if self._head_timer is not None:
            self._head_started = True

    def _head_complete(self) -> None:
        if self._head_timer is not None and self.cycle is not self._armed_cycle:
            self._disarm_head_timer()  # the head is complete: the request runs

    def _ws_upgrade(self) -> None:
        # from here the connection is a WebSocket (capped per key), not an HTTP one
        self._disarm_head_timer()
        self._uncount()

    def _response_done(self) -> None:
        if not self.transport.is_closing() and self.cycle is not None \
                and self.cycle.response_complete:
            self._arm_head_timer()  # the next head has header_timeout too

    def _shutdown_idle(self) -> bool:
        """Abort an idle connection (True); False: the caller lets the request finish.

        An idle keep-alive TLS connection closed politely waits for the peer's
        close_notify, which an idle client never sends: shutdown would stall for the
        whole grace period. Idle connections carry nothing, so drop them at once."""
        if self.cycle is None or self.cycle.response_complete:
            self.transport.abort()
            return True
        return False

    def _refuse(self, status: int, reason: bytes, code: str, message: str) -> None:
        """Answer a request the app never saw with the envelope, and close."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # a request in progress (its body was malformed): it ends here; an answer it
            # has started cannot be followed by another one
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.close()
                return
        self.transport.write(raw_answer(status, reason, code, message))
        self.transport.close()

    def _bad_request(self, message: str = MALFORMED) -> None:
        self._refuse(400, b"Bad Request", "bad_request", message)


class BoundedH11Protocol(Bounds, H11Protocol):
    """h11 (pure Python): the fallback when httptools is not installed."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._opened()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._data_in()
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        self._head_complete()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._ws_upgrade()
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._response_done()

    def shutdown(self) -> None:
        if not self._shutdown_idle():
            super().shutdown()

    def send_400_response(self, msg: str) -> None:
        # h11 could not parse the request (or its head is over MAX_REQUEST_HEAD)
        self._bad_request()


def counting_protocol(metrics: Metrics, config: ServerConfig | None = None
                      ) -> type[asyncio.Protocol]:
    """The protocol class for one server: its parser (``config.http``), bounds and counters."""
    base: type[asyncio.Protocol] = BoundedH11Protocol
    if resolve_http(config.http if config is not None else "auto") == "httptools":
        from mock_server.protocols_httptools import BoundedHttpToolsProtocol

        base = BoundedHttpToolsProtocol
    shared = Shared(metrics, config.header_timeout if config is not None else 10.0,
                    config.max_connections if config is not None else None)
    return type(base.__name__, (base,), {"shared": shared})
