"""ReferenceServer: run the app on uvicorn in a background thread (tests, CLI, demos)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
import threading
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio.to_thread
import uvicorn

from mock_server.app import create_app
from mock_server.config import ServerConfig
from mock_server.metrics import Metrics
from mock_server.protocols import (
    MAX_REQUEST_HEAD,
    counting_protocol,
    resolve_http,
    resolve_loop,
)
from mock_server.routes.ws import MAX_FRAME
from mock_server.state import AppState
from mock_server.tls import ensure_local_ca, harden

__all__ = ["MAX_REQUEST_HEAD", "ReferenceServer", "counting_protocol", "tls_loop_factory"]


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
        #: The HTTP parser ("httptools" or "h11") and event loop ("uvloop" or "asyncio")
        #: serving requests, known once started (config "auto" resolved).
        self.http_protocol: str | None = None
        self.event_loop: str | None = None

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
        self.http_protocol = resolve_http(cfg.http)
        self.event_loop = resolve_loop(cfg.event_loop)
        self._sock = self._bind()
        self.port = int(self._sock.getsockname()[1])
        uv_config = uvicorn.Config(
            app,
            http=counting_protocol(self.state.metrics, cfg),  # cfg.http picks the parser
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
        loop_factory = tls_loop_factory(cfg.tls_handshake_timeout, self.event_loop)

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
