"""DataBus push over WebSocket: one sans-I/O protocol core, a blocking and an asyncio driver.

:class:`StreamCore` makes every decision without doing I/O: the frames to send after
connecting (subscribe, then acks the server has not confirmed), which received events to
hand to the user (never one already acked or already held), when to ping, when a silent
connection is dead, and what a close means (reconnect after a jittered exponential backoff,
refresh the token once, or raise). The drivers only move frames: :class:`EventStream` over
``websockets.sync.client`` and :class:`AsyncEventStream` over ``websockets.asyncio.client``.
This is the only SDK module that imports ``websockets``.

Delivery is at-least-once on the wire and de-duplicated here: the server claims each pushed
event until it is acked (and re-offers it after the claim expires or on reconnect); the core
drops re-offers of events the user still holds and re-acks those the user already acked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, ParamSpec, overload
from urllib.parse import urlsplit

from pydantic import PrivateAttr
from typing_extensions import Self
from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection as SyncConnection
from websockets.sync.client import connect as sync_connect
from websockets.version import version as ws_version

from ._compat import ASYNC_TIMEOUTS
from ._config import ClientOptions, _is_loopback
from ._executor import AsyncExecutor, SyncExecutor
from ._http import tls_hint, tls_untrusted
from ._service import MethodFace, Service, public_signature
from ._tokens import Credential
from .errors import (
    APIError,
    AuthenticationError,
    ConfigurationError,
    EkoError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TransportError,
    ValidationError,
)
from .models import Event

logger = logging.getLogger("ekoclient")

WS_PATH = "/api/ws"
CLOSE_AUTH = 4401
CLOSE_FORBIDDEN = 4403
ACK_CHUNK = 500
MAX_MESSAGE = 64 * 1024 * 1024

# websockets logs every handshake header (Authorization included) at DEBUG: give it a
# logger that is outside the logging tree and never emits.
_silent = logging.Logger("ekoclient.websockets", logging.CRITICAL + 1)
_silent.propagate = False
_silent.addHandler(logging.NullHandler())

# like the HTTP pool (trust_env=False), ignore proxy variables unless the client was given a
# proxy; websockets' ``proxy`` parameter exists from 15 on
_WS_PROXY = int(ws_version.split(".")[0]) >= 15


def _proxy_kw(options: ClientOptions) -> dict[str, Any]:
    if _WS_PROXY:
        return {"proxy": options.proxy}
    if options.proxy is not None:
        raise ConfigurationError("the DataBus stream through a proxy needs websockets >= 15")
    return {}


# ------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class StreamSettings:
    """How a stream behaves; built from ``databus.stream(...)`` keywords."""

    subscription: str
    auto_ack: bool = False
    claim_ttl: float = 30.0
    ping_interval: float = 10.0
    idle_timeout: float = 15.0
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    max_reconnects: int | None = None
    stable_after: float = 5.0
    flush_timeout: float = 2.0


def stream_settings(
    name: str,
    *,
    auto_ack: bool = False,
    claim_ttl: float = 30.0,
    ping_interval: float = 10.0,
    idle_timeout: float = 15.0,
    backoff_initial: float = 0.1,
    backoff_max: float = 5.0,
    max_reconnects: int | None = None,
) -> StreamSettings:
    """Validate ``stream()`` arguments (``auto_ack`` acks an event when you take the next)."""
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError("subscription name must be a non-empty string")
    for what, value in (("claim_ttl", claim_ttl), ("ping_interval", ping_interval),
                        ("idle_timeout", idle_timeout), ("backoff_initial", backoff_initial),
                        ("backoff_max", backoff_max)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigurationError(f"{what} must be a positive number, got {value!r}")
    if claim_ttl > 3600:
        raise ConfigurationError("claim_ttl must be at most 3600 seconds")
    if idle_timeout <= ping_interval:
        raise ConfigurationError("idle_timeout must be longer than ping_interval")
    return StreamSettings(name, auto_ack, float(claim_ttl), float(ping_interval),
                          float(idle_timeout), float(backoff_initial), float(backoff_max),
                          max_reconnects)


def ws_url(host: str, allow_insecure: bool) -> str:
    """``https://h:p`` → ``wss://h:p/api/ws``; ``ws://`` only to loopback or when allowed."""
    parts = urlsplit(host)
    if parts.scheme == "https":
        scheme = "wss"
    elif parts.scheme == "http":
        if not allow_insecure and not _is_loopback(parts.hostname or ""):
            raise ConfigurationError(
                f"refusing ws:// to {parts.hostname}: use https, or pass allow_insecure=True")
        scheme = "ws"
    else:
        raise ConfigurationError(f"cannot derive a WebSocket URL from {host!r}")
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}{WS_PATH}"


def ws_ssl(options: ClientOptions, url: str) -> ssl.SSLContext | None:
    """The TLS context for ``wss://`` from the client's CA bundle / verify options."""
    if not url.startswith("wss://"):
        return None
    if not options.verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if options.client_cert:
            ctx.load_cert_chain(options.client_cert, options.client_key)
        return ctx
    ctx = ssl.create_default_context(cafile=options.ca_bundle)
    if options.client_cert:  # mutual TLS, like the HTTP pool
        ctx.load_cert_chain(options.client_cert, options.client_key)
    return ctx


def _untrusted(exc: BaseException, url: str) -> TransportError | None:
    """A certificate the client does not trust will not become trusted by retrying."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TransportError(f"DataBus stream {url}: {tls_hint(url)} ({exc})")
    return None


# ------------------------------------------------------------------------------ core


@dataclass(frozen=True)
class Reconnect:
    """Wait ``delay`` seconds, then connect again (with a new token if ``refresh``)."""

    delay: float
    refresh: bool = False


_ERRORS: dict[str, type[APIError]] = {
    "not_found": NotFoundError,
    "forbidden": PermissionDeniedError,
    "unauthorized": AuthenticationError,
}


def _op_error(frame: dict[str, Any]) -> APIError:
    code = str(frame.get("code") or "unknown")
    message = str(frame.get("message") or "the service refused the request")
    cls = _ERRORS.get(code, ValidationError)
    status = {NotFoundError: 404, PermissionDeniedError: 403, AuthenticationError: 401}.get(
        cls, 400)
    return cls(message, status=status, code=code)


class StreamCore:
    """The protocol and its decisions, without I/O (so both drivers share them)."""

    def __init__(self, settings: StreamSettings, hint: str,
                 rng: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self.hint = hint
        self.rng = rng
        self.holding: OrderedDict[str, None] = OrderedDict()  # yielded, not acked yet
        self.unconfirmed: OrderedDict[str, None] = OrderedDict()  # acked, not confirmed
        self.confirmed: OrderedDict[str, None] = OrderedDict()  # bounded memory of acks
        self.attempt = 0
        self.auth_retried = False
        self.connected = False
        self.subscribed_at: float | None = None
        self.last_recv = 0.0
        self.last_ping = 0.0
        self.outbox: list[str] = []
        self.last_yielded: str | None = None

    # --- connection lifecycle

    def opened(self, now: float) -> list[str]:
        """Frames to send right after the upgrade: subscribe, then unconfirmed acks."""
        self.connected = True
        self.subscribed_at = None
        self.last_recv = self.last_ping = now
        frames = [json.dumps({"op": "subscribe", "subscription": self.settings.subscription,
                              "claim_ttl": self.settings.claim_ttl})]
        frames += self._ack_frames(list(self.unconfirmed))
        return frames

    def _backoff(self, now: float) -> float:
        since = self.subscribed_at
        if since is not None and now - since >= self.settings.stable_after:
            self.attempt = 0
        self.attempt += 1
        limit = self.settings.max_reconnects
        if limit is not None and self.attempt > limit:
            raise TransportError(
                f"DataBus stream {self.settings.subscription!r}: gave up after {limit} "
                "reconnection attempts")
        ceiling = min(self.settings.backoff_max,
                      self.settings.backoff_initial * 2.0 ** (self.attempt - 1))
        return ceiling * (0.5 + 0.5 * self.rng())  # "equal jitter": never a thundering herd

    def closed(self, code: int | None, reason: str, now: float) -> Reconnect:
        """The socket closed (or died): reconnect how, or raise."""
        self.connected = False
        if code == CLOSE_AUTH:
            return self._auth_failed(reason or "token refused", now)
        if code == CLOSE_FORBIDDEN:
            raise PermissionDeniedError(reason or "not permitted", status=403, code="forbidden")
        delay = self._backoff(now)
        self.subscribed_at = None
        logger.info("DataBus stream %r closed (code %s); reconnecting in %.2fs",
                    self.settings.subscription, code, delay)
        return Reconnect(delay)

    def refused(self, status: int, now: float) -> Reconnect:
        """The upgrade was answered with an HTTP status instead of 101."""
        self.connected = False
        if status == 401:
            return self._auth_failed("invalid or expired token", now)
        if status == 403:
            raise PermissionDeniedError("the service refused the WebSocket upgrade",
                                        status=403, code="forbidden")
        if status == 404:
            raise NotFoundError("this service has no WebSocket endpoint", status=404,
                                code="not_found")
        return Reconnect(self._backoff(now))

    def failed(self, now: float) -> Reconnect:
        """Connecting failed (refused, reset, timeout, TLS)."""
        self.connected = False
        return Reconnect(self._backoff(now))

    def _auth_failed(self, reason: str, now: float) -> Reconnect:
        if self.auth_retried:
            raise AuthenticationError(
                f"API key {self.hint} was refused on the DataBus stream ({reason}); a new "
                "token did not help: it may have been revoked or rotated",
                status=401, code="unauthorized")
        self.auth_retried = True
        self.subscribed_at = None
        return Reconnect(min(self.settings.backoff_initial, 0.5), refresh=True)

    # --- frames in

    def receive(self, text: str | bytes, now: float) -> list[dict[str, Any]]:
        """Events to hand to the user; may queue frames in ``outbox`` or raise."""
        self.last_recv = now
        try:
            frame = json.loads(text)
        except ValueError:
            logger.warning("DataBus stream: ignoring a frame that is not JSON")
            return []
        if not isinstance(frame, dict):
            return []
        op = frame.get("op")
        if op == "event":
            return self._event(frame.get("event"))
        if op == "subscribed":
            self.subscribed_at = now
            self.auth_retried = False
        elif op == "acked":
            for key in frame.get("keys") or ():
                if isinstance(key, str):
                    self.unconfirmed.pop(key, None)
                    self._remember(key)
        elif op == "error":
            if frame.get("request") == "subscribe" or frame.get("subscription"):
                raise _op_error(frame)
            logger.warning("DataBus stream: the service reported %s: %s", frame.get("code"),
                           frame.get("message"))
        return []

    def _event(self, event: object) -> list[dict[str, Any]]:
        if not isinstance(event, dict) or not isinstance(event.get("key"), str):
            return []
        key = event["key"]
        if key in self.holding:
            return []  # re-offered after a claim expiry or reconnect: the user has it
        if key in self.unconfirmed or key in self.confirmed:
            self.outbox += self._ack_frames([key])  # our ack was lost on the way: resend
            return []
        self.holding[key] = None
        return [event]

    def _remember(self, key: str) -> None:
        self.confirmed[key] = None
        if len(self.confirmed) > 100_000:
            self.confirmed.popitem(last=False)

    # --- frames out

    @staticmethod
    def _ack_frames(keys: list[str]) -> list[str]:
        return [json.dumps({"op": "ack", "keys": keys[i:i + ACK_CHUNK]})
                for i in range(0, len(keys), ACK_CHUNK)]

    def ack(self, keys: list[str]) -> list[str]:
        """The user acked: frames to send now (also remembered to resend on reconnect)."""
        fresh = [k for k in keys if k not in self.unconfirmed and k not in self.confirmed]
        for key in fresh:
            self.holding.pop(key, None)
            self.unconfirmed[key] = None
        if self.last_yielded in fresh:
            self.last_yielded = None
        return self._ack_frames(fresh) if self.connected else []

    def nack(self, keys: list[str]) -> list[str]:
        """The user gives events back unprocessed: the service offers them again (in this
        stream, or to another consumer) instead of after their claim expires."""
        back = [k for k in keys if k in self.holding]
        for key in back:
            self.holding.pop(key, None)
            if key == self.last_yielded:
                self.last_yielded = None  # auto_ack must not ack it on the next step
        if not back or not self.connected:
            return []  # a closed socket released its claims already
        return [json.dumps({"op": "nack", "keys": back[i:i + ACK_CHUNK]})
                for i in range(0, len(back), ACK_CHUNK)]

    def yielded(self, key: str) -> list[str]:
        """About to give ``key`` to the user: with auto_ack, ack the previous one now."""
        previous, self.last_yielded = self.last_yielded, key
        if self.settings.auto_ack and previous is not None:
            return self.ack([previous])
        return []

    def finish(self, processed: bool = True) -> list[str]:
        """Stream closing: with auto_ack, the last event handed out counts as processed
        unless the loop ended with an exception (then its claim lapses and it comes back)."""
        if processed and self.settings.auto_ack and self.last_yielded is not None:
            key, self.last_yielded = self.last_yielded, None
            return self.ack([key])
        return []

    def timer(self, now: float) -> tuple[list[str], bool]:
        """(frames due now, connection dead?) — call when :meth:`wait_time` elapses."""
        if now - self.last_recv >= self.settings.idle_timeout:
            return [], True
        if now - self.last_ping >= self.settings.ping_interval:
            self.last_ping = now
            return [json.dumps({"op": "ping"})], False
        return [], False

    def wait_time(self, now: float) -> float:
        due = min(self.last_ping + self.settings.ping_interval,
                  self.last_recv + self.settings.idle_timeout)
        return max(0.0, due - now)

    def take_outbox(self) -> list[str]:
        frames, self.outbox = self.outbox, []
        return frames


# ------------------------------------------------------------------------------ events


class StreamEvent(Event):
    """An event from :meth:`DataBus.stream` on a blocking client; call :meth:`ack` when done,
    or :meth:`nack` to give it back."""

    subscription: str
    _acker: Callable[[str], None] | None = PrivateAttr(default=None)
    _nacker: Callable[[str], None] | None = PrivateAttr(default=None)

    def ack(self) -> None:
        """Acknowledge: the event is never delivered again (safe to call twice)."""
        if self._acker is not None:
            self._acker(self.key)

    def nack(self) -> None:
        """Give the event back unprocessed: it is offered again at once (possibly in this
        same stream), not only after its claim expires."""
        if self._nacker is not None:
            self._nacker(self.key)


class AsyncStreamEvent(Event):
    """An event from :meth:`DataBus.stream` on an AsyncClient; ``await event.ack()``, or
    ``await event.nack()`` to give it back."""

    subscription: str
    _acker: Callable[[str], Any] | None = PrivateAttr(default=None)
    _nacker: Callable[[str], Any] | None = PrivateAttr(default=None)

    async def ack(self) -> None:
        """Acknowledge: the event is never delivered again (safe to call twice)."""
        if self._acker is not None:
            await self._acker(self.key)

    async def nack(self) -> None:
        """Give the event back unprocessed: it is offered again at once (possibly in this
        same stream), not only after its claim expires."""
        if self._nacker is not None:
            await self._nacker(self.key)


def _connect_kwargs(options: ClientOptions, url: str, token: str, *,
                    blocking: bool = False) -> dict[str, Any]:
    """Options shared by both drivers; pings are ours (JSON), so the library's are off.

    ``blocking``: websockets' threaded sync client reads and writes one SSL object from two
    threads; under TLS 1.3 (post-handshake session tickets) about one handshake in a few
    hundred then times out and hangs in ``connect()``. TLS 1.2 does not race, so the blocking
    driver caps the version there; the asyncio driver keeps TLS 1.3.
    """
    ctx = ws_ssl(options, url)
    if ctx is not None and blocking:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return {"ssl": ctx,
            "additional_headers": {"Authorization": "Bearer " + token},
            "user_agent_header": options.user_agent, "open_timeout": options.timeout.connect,
            "ping_interval": None, "max_size": MAX_MESSAGE, "logger": _silent,
            **_proxy_kw(options)}


def _close_info(exc: ConnectionClosed) -> tuple[int | None, str]:
    frame = exc.rcvd
    return (frame.code, frame.reason) if frame is not None else (None, "")


# ------------------------------------------------------------------------------ sync driver


class EventStream:
    """Blocking iterator over pushed events; reconnects by itself. Use as a context manager."""

    def __init__(self, executor: SyncExecutor, credential: Credential | None,
                 settings: StreamSettings) -> None:
        if credential is None:
            raise executor.no_credential()
        self._executor = executor
        self._credential = credential
        self._core = StreamCore(settings, credential.hint)
        self._ws: SyncConnection | None = None
        self._token: str | None = None
        self._buffer: deque[StreamEvent] = deque()
        self._lock = threading.RLock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<EventStream {self._core.settings.subscription!r} {self._credential.hint}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(_processed=exc_type is None)

    def __iter__(self) -> Self:
        return self

    def _send(self, frames: list[str]) -> None:
        ws = self._ws
        if ws is None:
            return
        for frame in frames:
            try:
                ws.send(frame)
            except (ConnectionClosed, OSError):
                return  # kept as unconfirmed; resent after the reconnect

    def _ack(self, key: str) -> None:
        with self._lock:
            self._send(self._core.ack([key]))

    def _nack(self, key: str) -> None:
        with self._lock:
            self._send(self._core.nack([key]))

    def _connect(self) -> None:
        ex, core = self._executor, self._core
        while True:
            host = ex.hosts.pick()
            url = ws_url(host, ex.options.allow_insecure)
            try:  # the token endpoint may be down too while the server restarts
                self._token = ex.token(self._credential)
            except (TransportError, ServerError, RateLimitError) as exc:
                if tls_untrusted(exc):
                    raise
                self._apply(core.failed(time.monotonic()))
                continue
            try:
                ws = sync_connect(url, **_connect_kwargs(ex.options, url, self._token,
                                                         blocking=True))
                ws.__enter__()  # we own its lifetime (websockets >= 17.1 warns otherwise)
            except InvalidStatus as exc:
                decision = core.refused(exc.response.status_code, time.monotonic())
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                if (untrusted := _untrusted(exc, url)) is not None:
                    raise untrusted from exc
                ex.hosts.failed(host)
                decision = core.failed(time.monotonic())
            else:
                ex.hosts.succeeded(host)
                with self._lock:
                    self._ws = ws
                    self._send(core.opened(time.monotonic()))
                return
            self._apply(decision)

    def _apply(self, decision: Reconnect) -> None:
        if decision.refresh:
            self._executor.tokens.state(self._credential).invalidate(self._token)
        time.sleep(decision.delay)

    def _drop(self, code: int | None, reason: str) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.close()
        self._apply(self._core.closed(code, reason, time.monotonic()))

    def __next__(self) -> StreamEvent:
        with self._lock:
            self._send(self._core.take_outbox())
        while True:
            if self._buffer:
                event = self._buffer.popleft()
                with self._lock:
                    self._send(self._core.yielded(event.key))
                return event
            if self._closed:
                raise StopIteration
            if self._ws is None:
                self._connect()
            assert self._ws is not None
            try:
                text = self._ws.recv(timeout=self._core.wait_time(time.monotonic()))
            except TimeoutError:
                with self._lock:
                    frames, dead = self._core.timer(time.monotonic())
                    self._send(frames)
                if dead:
                    self._drop(None, "no heartbeat")
                continue
            except ConnectionClosed as exc:
                self._drop(*_close_info(exc))
                continue
            try:
                with self._lock:
                    raw = self._core.receive(text, time.monotonic())
                    self._send(self._core.take_outbox())
            except EkoError:
                self.close(_processed=False)
                raise
            for item in raw:
                event = StreamEvent.model_validate(
                    {**item, "subscription": self._core.settings.subscription})
                event._acker = self._ack
                event._nacker = self._nack
                self._buffer.append(event)

    def close(self, *, _processed: bool = True) -> None:
        """Flush acks (briefly waiting for the server to confirm them), then disconnect."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            self._send(self._core.finish(_processed))
        ws = self._ws
        deadline = time.monotonic() + self._core.settings.flush_timeout
        try:
            while ws is not None and self._core.unconfirmed and time.monotonic() < deadline:
                text = ws.recv(timeout=max(0.0, deadline - time.monotonic()))
                with self._lock:
                    self._core.receive(text, time.monotonic())
        except (TimeoutError, ConnectionClosed, OSError, EkoError):
            pass
        self._ws = None
        if ws is not None:
            ws.close()


# ------------------------------------------------------------------------------ async driver


class AsyncEventStream:
    """Async iterator over pushed events; reconnects by itself. ``async with`` it."""

    def __init__(self, executor: AsyncExecutor, credential: Credential | None,
                 settings: StreamSettings) -> None:
        if credential is None:
            raise executor.no_credential()
        self._executor = executor
        self._credential = credential
        self._core = StreamCore(settings, credential.hint)
        self._ws: AsyncConnection | None = None
        self._token: str | None = None
        self._buffer: deque[AsyncStreamEvent] = deque()
        self._closed = False

    def __repr__(self) -> str:
        return f"<AsyncEventStream {self._core.settings.subscription!r} {self._credential.hint}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose(_processed=exc_type is None)

    def __aiter__(self) -> Self:
        return self

    async def _send(self, frames: list[str]) -> None:
        ws = self._ws
        if ws is None:
            return
        for frame in frames:
            try:
                await ws.send(frame)
            except (ConnectionClosed, OSError):
                return

    async def _ack(self, key: str) -> None:
        await self._send(self._core.ack([key]))

    async def _nack(self, key: str) -> None:
        await self._send(self._core.nack([key]))

    async def _connect(self) -> None:
        ex, core = self._executor, self._core
        while True:
            host = ex.hosts.pick()
            url = ws_url(host, ex.options.allow_insecure)
            try:  # the token endpoint may be down too while the server restarts
                self._token = await ex.token(self._credential)
            except (TransportError, ServerError, RateLimitError) as exc:
                if tls_untrusted(exc):
                    raise
                await self._apply(core.failed(time.monotonic()))
                continue
            try:
                ws = await async_connect(url, **_connect_kwargs(ex.options, url, self._token))
            except InvalidStatus as exc:
                decision = core.refused(exc.response.status_code, time.monotonic())
            except (OSError, TimeoutError, asyncio.TimeoutError, InvalidHandshake,
                    ConnectionClosed) as exc:  # two timeout types on Python 3.10
                if (untrusted := _untrusted(exc, url)) is not None:
                    raise untrusted from exc
                ex.hosts.failed(host)
                decision = core.failed(time.monotonic())
            else:
                ex.hosts.succeeded(host)
                self._ws = ws
                await self._send(core.opened(time.monotonic()))
                return
            await self._apply(decision)

    async def _apply(self, decision: Reconnect) -> None:
        if decision.refresh:
            self._executor.tokens.state(self._credential).invalidate(self._token)
        await asyncio.sleep(decision.delay)

    async def _drop(self, code: int | None, reason: str) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        await self._apply(self._core.closed(code, reason, time.monotonic()))

    async def __anext__(self) -> AsyncStreamEvent:
        await self._send(self._core.take_outbox())
        while True:
            if self._buffer:
                event = self._buffer.popleft()
                await self._send(self._core.yielded(event.key))
                return event
            if self._closed:
                raise StopAsyncIteration
            if self._ws is None:
                await self._connect()
            assert self._ws is not None
            try:
                text = await asyncio.wait_for(self._ws.recv(),
                                              self._core.wait_time(time.monotonic()))
            except ASYNC_TIMEOUTS:
                frames, dead = self._core.timer(time.monotonic())
                await self._send(frames)
                if dead:
                    await self._drop(None, "no heartbeat")
                continue
            except ConnectionClosed as exc:
                await self._drop(*_close_info(exc))
                continue
            try:
                raw = self._core.receive(text, time.monotonic())
            except EkoError:
                await self.aclose(_processed=False)
                raise
            await self._send(self._core.take_outbox())
            for item in raw:
                event = AsyncStreamEvent.model_validate(
                    {**item, "subscription": self._core.settings.subscription})
                event._acker = self._ack
                event._nacker = self._nack
                self._buffer.append(event)

    async def aclose(self, *, _processed: bool = True) -> None:
        """Flush acks (briefly waiting for the server to confirm them), then disconnect."""
        if self._closed:
            return
        self._closed = True
        await self._send(self._core.finish(_processed))
        ws = self._ws
        deadline = time.monotonic() + self._core.settings.flush_timeout
        try:
            while ws is not None and self._core.unconfirmed and time.monotonic() < deadline:
                text = await asyncio.wait_for(ws.recv(), max(0.0, deadline - time.monotonic()))
                self._core.receive(text, time.monotonic())
        except (TimeoutError, asyncio.TimeoutError, ConnectionClosed, OSError, EkoError):
            pass
        self._ws = None
        if ws is not None:
            await ws.close()


# ------------------------------------------------------------------------------ descriptor

P = ParamSpec("P")


class streaming(MethodFace, Generic[P]):
    """Attach a settings-building function as ``stream(...)``: an :class:`EventStream` on a
    blocking service, an :class:`AsyncEventStream` on an async one."""

    returns_sync = "EventStream"
    returns_async = "AsyncEventStream"

    def __init__(self, build: Callable[P, StreamSettings]) -> None:
        self._build = build
        self.init_face(build, public_signature(build))

    @overload
    def __get__(self, obj: None, owner: Any) -> streaming[P]: ...
    @overload
    def __get__(self, obj: Service[SyncExecutor], owner: Any) -> Callable[P, EventStream]: ...
    @overload
    def __get__(self, obj: Service[AsyncExecutor], owner: Any
                ) -> Callable[P, AsyncEventStream]: ...

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        build = self._build
        executor = obj._executor
        kind = AsyncEventStream if executor.is_async else EventStream

        def method(*args: Any, **kwargs: Any) -> Any:
            return kind(executor, obj._credential, build(*args, **kwargs))

        return self.dress(method, executor.is_async)
