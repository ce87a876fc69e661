"""ReferenceServer: run the app on uvicorn in a background thread (tests, CLI, demos)."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
import sys
import threading
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio.to_thread
import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from mock_server.app import create_app
from mock_server.asgi import (
    REQUEST_ID_KEY,
    Receive,
    Scope,
    Send,
    error_body,
    request_id,
    send_error,
)
from mock_server.config import ServerConfig
from mock_server.metrics import Metrics
from mock_server.routes.ws import MAX_FRAME
from mock_server.state import AppState
from mock_server.tls import ensure_local_ca, harden

#: Largest request line + headers accepted (h11's default is 16 KiB). The API describes
#: query strings up to two 8192-character fields (``select_fields``/``exclude_fields``):
#: percent-encoded 4-byte characters make that about 192 KiB, which must reach the app (and
#: its validation) rather than be refused by the HTTP parser.
MAX_REQUEST_HEAD = 256 * 1024


def _raw_answer(status: int, reason: bytes, code: str, message: str,
                extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A complete HTTP/1.1 answer with the SPEC §4.2 envelope that closes the connection,
    for answers written straight to the transport (no request reached the app)."""
    rid = "req_" + secrets.token_hex(12)
    body = error_body(code, message, rid)
    head = [b"HTTP/1.1 %d %s" % (status, reason), b"content-type: application/json",
            b"content-length: %d" % len(body), b"x-request-id: " + rid.encode(),
            b"connection: close", *(k + b": " + v for k, v in extra)]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def counting_protocol(metrics: Metrics, config: ServerConfig | None = None
                      ) -> type[H11Protocol]:
    """An H11Protocol that counts TCP connections (ekodb_connections_* metrics) and bounds
    what a client may hold without sending requests.

    * A request head (line + headers) must be complete within ``header_timeout`` of the
      connection or of the previous answer (slowloris): else 408 and close.
    * A new connection that sends nothing is closed after ``keep_alive_timeout``, as an idle
      keep-alive one is (uvicorn only times out idle connections after an answer).
    * Past ``max_connections`` open connections, a request gets 503 with Retry-After and its
      connection is closed (the envelope, not uvicorn's plain-text 503).

    It also answers requests h11 cannot parse (a malformed request line or header, or a
    request head over MAX_REQUEST_HEAD) with the SPEC §4.2 JSON envelope instead of
    uvicorn's plain-text 400: they never reach the app.
    """
    cfg = config
    header_timeout = cfg.header_timeout if cfg is not None else 10.0
    cap = cfg.max_connections if cfg is not None else None
    open_now = [0]  # HTTP connections of this server (its protocols share the loop thread)

    async def over_capacity(scope: Scope, receive: Receive, send: Send) -> None:
        scope[REQUEST_ID_KEY] = "req_" + secrets.token_hex(12)
        await send_error(scope, send, 503, "service_unavailable",
                         f"server busy: at its limit of {cap} open connections; retry shortly",
                         {"Retry-After": "1", "Connection": "close",
                          "X-Request-Id": request_id(scope)})

    class CountingH11Protocol(H11Protocol):
        _counted = False
        _head_timer: asyncio.TimerHandle | None = None
        _armed_cycle: object = None
        _head_started = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            metrics.inc("ekodb_connections_opened_total")
            metrics.inc("ekodb_connections_open")
            super().connection_made(transport)
            if cap is not None and open_now[0] >= cap:
                self.app = over_capacity
            open_now[0] += 1
            self._counted = True
            self._arm_head_timer()
            # idle before the first request: uvicorn's keep-alive timer (data cancels it)
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler)

        def _uncount(self) -> None:
            if self._counted:
                self._counted = False
                open_now[0] -= 1
                metrics.inc("ekodb_connections_open", -1)

        def connection_lost(self, exc: Exception | None) -> None:
            self._uncount()
            self._disarm_head_timer()
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            self._disarm_head_timer()
            self._armed_cycle = self.cycle
            self._head_started = False
            self._head_timer = self.loop.call_later(header_timeout, self._head_too_slow)

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
                self.transport.write(_raw_answer(
                    408, b"Request Timeout", "request_timeout",
                    f"request line and headers not received within {header_timeout:g}s"))
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._head_timer is not None:
                self._head_started = True
            super().data_received(data)

        def handle_events(self) -> None:
            super().handle_events()
            if self._head_timer is not None and self.cycle is not self._armed_cycle:
                self._disarm_head_timer()  # the head is complete: the request runs

        def handle_websocket_upgrade(self, event: h11.Request) -> None:
            # from here the connection is a WebSocket (capped per key), not an HTTP one
            self._disarm_head_timer()
            self._uncount()
            super().handle_websocket_upgrade(event)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.cycle is not None \
                    and self.cycle.response_complete:
                self._arm_head_timer()  # the next head has header_timeout too

        def shutdown(self) -> None:
            # An idle keep-alive TLS connection closed politely waits for the peer's
            # close_notify, which an idle client never sends: shutdown would stall for the
            # whole grace period. Idle connections carry nothing, so drop them at once.
            if self.cycle is None or self.cycle.response_complete:
                self.transport.abort()
            else:
                super().shutdown()

        def send_400_response(self, msg: str) -> None:
            rid = "req_" + secrets.token_hex(12)
            body = error_body("bad_request", "invalid HTTP request: malformed, or request line "
                              "and headers too large", rid)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", rid.encode()),
                (b"connection", b"close"),
            ]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                          h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event) or b"")
            self.transport.close()

    return CountingH11Protocol


def tls_loop_factory(handshake_timeout: float, kind: str = "asyncio"
                     ) -> Callable[[], asyncio.AbstractEventLoop]:
    """An event loop whose TLS servers give a client `handshake_timeout` s to finish the
    handshake (asyncio's default is 60 s; uvicorn offers no setting for it).

    ``kind="uvloop"``: the same on uvloop (libuv; its own TLS and thread wake-ups cost
    less CPU per request); RuntimeError when uvloop is not installed.
    """
    base: type[asyncio.AbstractEventLoop] = asyncio.SelectorEventLoop
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise RuntimeError("event_loop='uvloop' needs uvloop: pip install "
                               "'ekoclient[server-fast]' (or use the asyncio loop)") from None
        base = uvloop.Loop

    class Loop(base):  # type: ignore[valid-type,misc]
        async def create_server(self, *args: Any, **kwargs: Any
                                ) -> asyncio.Server:
            if kwargs.get("ssl") is not None:
                kwargs.setdefault("ssl_handshake_timeout", handshake_timeout)
            return await super().create_server(*args, **kwargs)  # type: ignore[no-any-return]

    return Loop


#: TLS 1.2 suites offered (TLS 1.3 suites are not set by cipher strings): forward secret AEAD.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _run_on_new_loop(loop_factory: Callable[[], asyncio.AbstractEventLoop] | None,
                     main: Coroutine[Any, Any, None]) -> None:
    """What ``asyncio.Runner(loop_factory).run(main)`` does, for Python 3.10."""
    loop = loop_factory() if loop_factory is not None else asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ReferenceServer:
    """Start with `start()` (or as a context manager); `url`, `ca_bundle`, `admin_key`."""

    def __init__(self, config: ServerConfig, *, environ: Mapping[str, str] | None = None) -> None:
        if config.insecure_http and not is_loopback(config.host):
            raise ValueError("insecure_http is only allowed on a loopback host")
        self.config = config
        self._environ = environ
        self.state: AppState | None = None
        self.port: int = 0
        self.ca_bundle: Path | None = None
        self.admin_key: str | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        scheme = "http" if self.config.insecure_http else "https"
        host = self.config.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"

    @property
    def metrics(self) -> Metrics:
        assert self.state is not None, "server not started"
        return self.state.metrics

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Inherited by accepted sockets: without it, Nagle + delayed ACK add ~40 ms per
        # response (headers and body go out in separate writes).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((self.config.host, self.config.port))
        sock.listen(2048)
        sock.set_inheritable(True)
        return sock

    def start(self, timeout: float = 30.0) -> ReferenceServer:
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> ReferenceServer:
        cfg = self.config
        self.state = AppState.open(cfg, self._environ)
        self.admin_key = self.state.admin_key
        app = create_app(cfg, state=self.state)
        ssl: dict[str, Any] = {}
        if not cfg.insecure_http:
            if cfg.tls_cert is not None and cfg.tls_key is not None:
                ssl = {"ssl_certfile": str(cfg.tls_cert), "ssl_keyfile": str(cfg.tls_key)}
                self.ca_bundle = None
            else:
                files = ensure_local_ca(cfg.data_dir)
                ssl = {"ssl_certfile": str(files.cert), "ssl_keyfile": str(files.key)}
                self.ca_bundle = files.ca
            # older uvicorn (0.36) defaults to the cipher string "TLSv1", which leaves TLS 1.2
            # clients (the blocking stream pins 1.2) no suite to agree on; say it outright
            ssl["ssl_ciphers"] = TLS12_CIPHERS
        self._sock = self._bind()
        self.port = int(self._sock.getsockname()[1])
        uv_config = uvicorn.Config(
            app,
            http=counting_protocol(self.state.metrics, cfg),
            # typed int, used as a call_later delay: a float works
            timeout_keep_alive=cfg.keep_alive_timeout,  # type: ignore[arg-type]
            lifespan="off",
            log_level="warning",
            access_log=False,
            proxy_headers=False,  # X-Forwarded-For is handled by us, trusted proxies only
            server_header=False,
            timeout_graceful_shutdown=5,
            # the protocol refuses bigger frames itself (close 1009) before buffering them;
            # the route's own 64 KiB check stays the one that answers with a reason
            ws_max_size=MAX_FRAME + 1024,
            h11_max_incomplete_event_size=MAX_REQUEST_HEAD,
            **ssl,
        )
        if ssl:
            # Mozilla "intermediate" TLS (mock_server.tls.harden), also for a user's cert:
            # load() builds uvicorn's context now (serve() then skips it) so it is hardened
            # in place; uvicorn's ssl_context_factory would do it but needs a newer uvicorn
            uv_config.load()
            assert uv_config.ssl is not None
            harden(uv_config.ssl)
        self._server = uvicorn.Server(uv_config)
        sock = self._sock
        server = self._server
        threads = cfg.worker_threads
        loop_factory = tls_loop_factory(cfg.tls_handshake_timeout, cfg.event_loop)

        async def serve() -> None:
            # blocking work (SQLite, crypto) runs on this many threads (anyio's limiter)
            anyio.to_thread.current_default_thread_limiter().total_tokens = threads
            await server.serve(sockets=[sock])

        def run() -> None:
            if sys.version_info >= (3, 11):
                with asyncio.Runner(loop_factory=loop_factory) as runner:
                    runner.run(serve())
            else:  # Python 3.10 has no asyncio.Runner: the same steps by hand
                _run_on_new_loop(loop_factory, serve())

        self._thread = threading.Thread(target=run, name="ekodb-reference-server", daemon=True)
        self._thread.start()
        deadline = threading.Event()
        waited = 0.0
        while not server.started:
            if not self._thread.is_alive():
                raise RuntimeError("reference server failed to start")
            deadline.wait(0.01)
            waited += 0.01
            if waited > timeout:
                raise RuntimeError("reference server did not start in time")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown: stop accepting, finish in-flight requests, close storage."""
        if self.state is not None:
            self.state.poll_wakeups.close()  # held polls answer now, not after their wait
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
        if self.state is not None:
            self.state.close()
        self._server = None
        self._thread = None
        self._sock = None

    def __enter__(self) -> ReferenceServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
