"""The only module that imports an HTTP library (``httpx``, ``aiohttp``, ``urllib3``).

Everything else talks to :class:`SyncTransport` / :class:`AsyncTransport` and sees
``Response`` (an ``httpx.Response``); transport failures become
:class:`ekoclient.errors.TransportError` here, so no other layer knows any exception tree.

Why three libraries: ``httpx`` stays the request/response layer users know (``Response``,
``event_hooks``, ``transport=`` injection), but its connection pool (httpcore) costs ~10x the
CPU of aiohttp's under many concurrent requests (its pool rescans every waiting request on each
event). So by default the connections underneath are aiohttp's (async) and urllib3's (sync,
thread-safe, blocking pool): measured in ``bench.transports``, see the README's performance
section. A user-supplied ``transport=`` or ``http_client=`` replaces them whole.
"""

from __future__ import annotations

import asyncio
import builtins
import ssl
import warnings
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import urllib3
import urllib3.exceptions as u3

from .errors import ConfigurationError, MalformedResponseError, TimeoutError, TransportError

Response = httpx.Response
Headers = httpx.Headers

#: kept for code written against the private name of 0.x
TimeoutFailure = TimeoutError

_CHUNK = 64 * 1024


def ssl_context(ca_bundle: str | None, verify: bool, client_cert: str | None = None,
                client_key: str | None = None) -> ssl.SSLContext | bool:
    """One SSL context per client: building it is slow, sharing it is free."""
    if not verify:
        if client_cert is None:
            return False
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=ca_bundle)
    if client_cert is not None:
        try:
            ctx.load_cert_chain(client_cert, client_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"could not load the client certificate {client_cert!r}"
                f"{f' with key {client_key!r}' if client_key else ''}: {exc}") from None
    return ctx


class _Body:
    """A streamed request body that remembers an error raised by the caller's own iterator,
    so that error reaches the caller as itself, not as the pool's "connection aborted"."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.stream
        except Exception as exc:
            self.error = exc
            raise

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.stream:
                yield chunk
        except Exception as exc:
            self.error = exc
            raise

    def reraise(self) -> None:
        if self.error is not None:
            raise self.error


class _LazyRequest(httpx.Request):
    """An ``httpx.Request`` whose URL and headers are parsed only if someone looks.

    Building a real ``httpx.Request`` costs more CPU than aiohttp spends on the whole request
    (URL parsing, header normalisation); the SDK's own pools take the plain strings instead.
    Only bodies already in memory (bytes or none) take this path.
    """

    def __init__(self, method: str, url: str, headers: dict[str, str], content: bytes,
                 extensions: dict[str, Any], buffered: bool) -> None:
        self.method = method
        #: the caller wants the whole answer at once: the pool reads it in one go
        self.buffered = buffered
        self.text_url = url
        self.header_map = headers
        self._content = content
        self.stream = httpx.ByteStream(content)
        self.extensions = extensions
        self._url: httpx.URL | None = None
        self._headers: httpx.Headers | None = None

    @property
    def url(self) -> httpx.URL:
        if self._url is None:
            self._url = httpx.URL(self.text_url)
        return self._url

    @url.setter
    def url(self, value: httpx.URL) -> None:
        self._url = value

    @property
    def headers(self) -> httpx.Headers:
        if self._headers is None:
            self._headers = httpx.Headers(self.header_map)
        return self._headers

    @headers.setter
    def headers(self, value: httpx.Headers) -> None:
        self._headers = value


def _buffered(status: int, headers: Any, content: bytes, request: httpx.Request
              ) -> httpx.Response:
    """A response whose body is already here. Unless it must be decompressed, hand httpx the
    bytes as its read content (``Response(content=...)`` would re-read them through its
    decoder chain, which costs more than aiohttp's whole read)."""
    response = httpx.Response(status, headers=headers, stream=httpx.ByteStream(content),
                              request=request, extensions={"http_version": b"HTTP/1.1"})
    if "content-encoding" in response.headers:
        response.read()
    else:
        response._content = content  # httpx 0.27/0.28 keep the read body here
    # read whole and the connection already back in the pool: nothing left to close
    response.is_stream_consumed = response.is_closed = True
    return response


def _wire(request: httpx.Request) -> tuple[str, Any]:
    """URL text and headers for a pool: straight from a lazy request, else from httpx's."""
    if isinstance(request, _LazyRequest):
        return request.text_url, request.header_map
    return str(request.url), request.headers.multi_items()


# ------------------------------------------------------------------------- aiohttp (async)


#: what :func:`_aiohttp_failure` maps (caught by a plain ``except`` on the hot path: a
#: ``@contextmanager`` there cost a generator per request)
_AIOHTTP_ERRORS = (aiohttp.ClientError, OSError, asyncio.TimeoutError)


def _aiohttp_failure(exc: BaseException) -> httpx.HTTPError:
    """aiohttp's exceptions as httpx's, so one mapping (``_failure``) serves every pool."""
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return httpx.ReadTimeout(str(exc) or "read timed out")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(str(exc) or "connect timed out")
    if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        return httpx.TimeoutException(str(exc) or "timed out")
    if isinstance(exc, (aiohttp.ClientProxyConnectionError, aiohttp.ClientHttpProxyError)):
        return httpx.ProxyError(str(exc))
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(exc))
    if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ClientResponseError)):
        return httpx.RemoteProtocolError(str(exc))
    return httpx.ReadError(f"{type(exc).__name__}: {exc}")


class _AiohttpStream(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(_CHUNK):
                yield chunk
        except _AIOHTTP_ERRORS as exc:
            raise _aiohttp_failure(exc) from exc

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()  # the connection goes back to the pool
        else:
            self._response.close()  # unread bytes: the connection cannot be reused


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one aiohttp connection pool (created on first use, in the
    loop that uses it). ``max_connections`` is a hard limit: callers wait for a free one."""

    def __init__(self, *, verify: ssl.SSLContext | bool, max_connections: int,
                 keepalive_expiry: float, proxy: str | None = None) -> None:
        self._ssl = verify
        self._limit = max_connections
        self._keepalive = keepalive_expiry
        self._proxy = proxy
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[Any, Any, Any], aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._limit, limit_per_host=0, ssl=self._ssl,
            keepalive_timeout=self._keepalive if self._keepalive > 0 else None,
            force_close=self._keepalive <= 0)
        self._session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        timeout = request.extensions.get("timeout", {})
        connect, read, pool = timeout.get("connect"), timeout.get("read"), timeout.get("pool")
        data: Any
        body = None
        try:
            data = request.content or None
        except httpx.RequestNotRead:  # a streamed body: aiohttp writes it as it comes
            data = body = _Body(request.stream)
            request.headers.pop("transfer-encoding", None)
        url, headers = _wire(request)
        key = (read, connect, pool)
        client_timeout = self._timeouts.get(key)
        if client_timeout is None:  # one per distinct timeout: built once, not per request
            client_timeout = aiohttp.ClientTimeout(
                total=None, sock_read=read, sock_connect=connect,
                connect=None if pool is None or connect is None else pool + connect)
            if len(self._timeouts) < 64:  # per-call deadlines make ever new ones
                self._timeouts[key] = client_timeout
        try:
            response = await session.request(
                request.method, url, headers=headers, data=data, allow_redirects=False,
                compress=None, proxy=self._proxy, timeout=client_timeout)
        except _AIOHTTP_ERRORS as exc:
            if body is not None:
                body.reraise()
            raise _aiohttp_failure(exc) from exc
        if getattr(request, "buffered", False):
            try:
                content = await response.read()  # one C-level read, then the pool has it back
            except _AIOHTTP_ERRORS as exc:
                raise _aiohttp_failure(exc) from exc
            return _buffered(response.status, response.raw_headers, content, request)
        return httpx.Response(
            status_code=response.status, headers=response.raw_headers,
            stream=_AiohttpStream(response), request=request,
            extensions={"http_version": b"HTTP/1.1",
                        "reason_phrase": (response.reason or "").encode()})

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# ------------------------------------------------------------------------- urllib3 (sync)


_URLLIB3_ERRORS = (u3.HTTPError, OSError)


def _urllib3_failure(exc: BaseException) -> httpx.HTTPError:
    """urllib3's exceptions as httpx's (a function, not a ``@contextmanager``: see aiohttp's)."""
    if isinstance(exc, u3.EmptyPoolError):
        return httpx.PoolTimeout(f"no free connection in the pool: {exc}")
    if isinstance(exc, u3.ProxyError):
        return httpx.ProxyError(str(exc))
    # before ConnectTimeoutError: urllib3 2 derives NewConnectionError (refused, unreachable,
    # unknown name) from it, and a refused connection is not a timeout
    if isinstance(exc, (u3.SSLError, u3.NewConnectionError, u3.NameResolutionError)):
        return httpx.ConnectError(str(exc))
    if isinstance(exc, u3.ConnectTimeoutError):
        return httpx.ConnectTimeout(str(exc))
    if isinstance(exc, u3.ReadTimeoutError):
        return httpx.ReadTimeout(str(exc))
    if isinstance(exc, (u3.ProtocolError, u3.DecodeError, u3.IncompleteRead)):
        return httpx.RemoteProtocolError(str(exc))
    if isinstance(exc, builtins.TimeoutError):  # socket.timeout mid-stream
        return httpx.TimeoutException(str(exc))
    return httpx.ReadError(f"{type(exc).__name__}: {exc}")


class _Urllib3Stream(httpx.SyncByteStream):
    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._response.stream(_CHUNK, decode_content=False)
        except _URLLIB3_ERRORS as exc:
            raise _urllib3_failure(exc) from exc

    def close(self) -> None:
        r = self._response
        if not r.closed:  # unread bytes: the connection cannot be reused
            r.close()
        r.release_conn()  # frees the pool slot either way


class Urllib3Transport(httpx.BaseTransport):
    """An httpx transport over one thread-safe urllib3 pool; ``max_connections`` per host
    is a hard limit (``block=True``): threads wait up to the pool timeout for a free one."""

    def __init__(self, *, verify: ssl.SSLContext | bool, max_connections: int,
                 proxy: str | None = None) -> None:
        kw: dict[str, Any] = {"maxsize": max_connections, "block": True, "retries": False}
        if isinstance(verify, ssl.SSLContext):
            kw["ssl_context"] = verify
        else:
            kw["cert_reqs"] = "CERT_NONE"
            # verify=False was asked for explicitly; urllib3 would warn on every request
            warnings.filterwarnings("ignore", category=u3.InsecureRequestWarning)
        self._pool: urllib3.PoolManager = (
            urllib3.ProxyManager(proxy, **kw) if proxy else urllib3.PoolManager(**kw))
        self._timeouts: dict[tuple[Any, Any], urllib3.Timeout] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        body: Any
        chunked = False
        streamed = None
        try:
            body = request.content or None
        except httpx.RequestNotRead:
            body = streamed = _Body(request.stream)
            # a stream of known length goes out with its Content-Length alone: sending
            # Transfer-Encoding too is refused by RFC 9112 section 6.1 (and by our server)
            chunked = "content-length" not in request.headers
        # A body write is bounded per socket operation by the larger of connect and write.
        connect = timeout.get("connect")
        write = timeout.get("write")
        if connect is not None and write is not None:
            connect = max(connect, write)
        read = timeout.get("read")
        u3_timeout = self._timeouts.get((connect, read))
        if u3_timeout is None:  # one per distinct timeout: built once, not per request
            u3_timeout = urllib3.Timeout(connect=connect, read=read)
            if len(self._timeouts) < 64:  # per-call deadlines make ever new ones
                self._timeouts[(connect, read)] = u3_timeout
        url, headers = _wire(request)
        try:
            response = self._pool.urlopen(
                request.method, url, body=body, headers=dict(headers), redirect=False,
                retries=False, preload_content=False, decode_content=False,
                chunked=chunked, assert_same_host=False, timeout=u3_timeout,
                pool_timeout=timeout.get("pool"))
        except _URLLIB3_ERRORS as exc:
            if streamed is not None:
                streamed.reraise()
            raise _urllib3_failure(exc) from exc
        if getattr(request, "buffered", False):
            try:
                content = response.read()
            except _URLLIB3_ERRORS as exc:
                raise _urllib3_failure(exc) from exc
            finally:
                _Urllib3Stream(response).close()
            return _buffered(response.status, list(response.headers.items()), content, request)
        return httpx.Response(
            status_code=response.status, headers=list(response.headers.items()),
            stream=_Urllib3Stream(response), request=request,
            extensions={"http_version": b"HTTP/1.1",
                        "reason_phrase": (response.reason or "").encode()})

    def close(self) -> None:
        self._pool.clear()


# ------------------------------------------------------------------------- the SDK's view


def _client_kwargs(
    *,
    max_connections: int,
    max_keepalive: int,
    keepalive_expiry: float,
    timeouts: tuple[float, float, float, float],
    user_agent: str,
    event_hooks: Mapping[str, list[Any]] | None,
) -> dict[str, Any]:
    connect, read, write, pool = timeouts
    return {
        "limits": httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive,
            keepalive_expiry=keepalive_expiry,
        ),
        "timeout": httpx.Timeout(connect=connect, read=read, write=write, pool=pool),
        "headers": {"User-Agent": user_agent},
        "event_hooks": dict(event_hooks or {}),
        "trust_env": False,
        "follow_redirects": False,
    }


_PHASES = ("connect", "read", "write", "pool")


PerRequestTimeout = tuple[float, float, float, float] | Mapping[str, float] | None


def _phases(timeout: PerRequestTimeout) -> dict[str, float] | None:
    """A per-request timeout as the phase overrides the pools take: all four phases
    (``with_options``, or the time ``max_elapsed`` leaves) or some of them by name."""
    if timeout is None:
        return None
    if isinstance(timeout, Mapping):
        return dict(timeout)
    return dict(zip(_PHASES, timeout, strict=True))


def tls_untrusted(exc: BaseException) -> bool:
    """Whether a failure (or one of its causes) is a certificate the client does not trust."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        if "CERTIFICATE_VERIFY_FAILED" in str(seen) or "certificate verify failed" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def tls_hint(url: str) -> str:
    """What to do when a server's certificate is not trusted (shared with the WebSocket)."""
    return (f"TLS verification of {urlsplit(url).netloc} failed: its certificate is not "
            "signed by a CA this client trusts. Pass ca_bundle='/path/to/ca.pem' (or set "
            "EKODB_CA_BUNDLE) with the CA that signed it")


def _failure(exc: httpx.HTTPError, method: str, url: str) -> TransportError:
    kind = type(exc).__name__
    if isinstance(exc, httpx.DecodingError):
        return MalformedResponseError(f"{method} {url}: the answer could not be decoded "
                                      f"({kind}: {exc})")
    if isinstance(exc, httpx.TimeoutException):
        phase = {"ConnectTimeout": "connecting", "ReadTimeout": "waiting for the answer",
                 "WriteTimeout": "sending the request",
                 "PoolTimeout": "waiting for a free connection in the pool"}.get(kind)
        return TimeoutError(f"{method} {url} timed out{f' while {phase}' if phase else ''} "
                            f"({kind}); raise the client's timeout= if the service is slow")
    if isinstance(exc, httpx.ConnectError) and tls_untrusted(exc):
        return TransportError(f"{method} {url}: {tls_hint(url)} ({exc})")
    if isinstance(exc, httpx.ProxyError):
        return TransportError(f"{method} {url} failed at the proxy: {exc}")
    return TransportError(f"{method} {url} failed: {kind}: {exc}")


def _fast_path_defaults(client: httpx.Client | httpx.AsyncClient
                        ) -> tuple[dict[str, str], dict[str, Any]]:
    """What ``httpx.Client.send`` would add to every request, computed once.

    With the SDK's own pool and no event hooks, requests go straight to the transport: httpx's
    client layer (URL merging, cookie jar, auth and redirect machinery, which the SDK never
    uses) costs about as much CPU per request as the whole pool beneath it.
    """
    return dict(client.headers), {"timeout": client.timeout.as_dict()}


def _merged_timeout(client: httpx.Client | httpx.AsyncClient,
                    timeout: Mapping[str, float] | None) -> httpx.Timeout:
    if not timeout:
        return client.timeout
    return httpx.Timeout(**{**client.timeout.as_dict(), **timeout})


def _with_timeout(extensions: dict[str, Any], timeout: Mapping[str, float] | None
                  ) -> dict[str, Any]:
    if not timeout:
        return extensions
    return {**extensions, "timeout": {**extensions["timeout"], **timeout}}


def _fast_request(method: str, url: str, params: Mapping[str, Any] | None, content: Any,
                  defaults: dict[str, str], headers: Mapping[str, str],
                  extensions: dict[str, Any], buffered: bool) -> httpx.Request:
    if params:
        url = str(httpx.URL(url, params=params))
    merged = {**defaults, **headers}
    if content is None or isinstance(content, bytes):
        return _LazyRequest(method, url, merged, content or b"", extensions, buffered)
    return httpx.Request(method, url, content=content, headers=merged, extensions=extensions)


def _check_injection(transport: Any, http_client: Any, sync: bool) -> None:
    want_t = httpx.BaseTransport if sync else httpx.AsyncBaseTransport
    want_c = httpx.Client if sync else httpx.AsyncClient
    flavour = "Client" if sync else "AsyncClient"
    if transport is not None and not isinstance(transport, want_t):
        raise ConfigurationError(
            f"transport= must be an httpx.{want_t.__name__} for ekoclient.{flavour}, "
            f"not {type(transport).__name__}")
    if http_client is not None and not isinstance(http_client, want_c):
        raise ConfigurationError(
            f"http_client= must be an httpx.{want_c.__name__} for ekoclient.{flavour}, "
            f"not {type(http_client).__name__}")


class SyncTransport:
    """A blocking pool shared by every service and view of one client."""

    def __init__(self, transport: Any = None, *, http_client: Any = None,
                 verify: ssl.SSLContext | bool = True, proxy: str | None = None,
                 **kwargs: Any) -> None:
        _check_injection(transport, http_client, sync=True)
        self._owned = http_client is None
        self._fast: Urllib3Transport | None = None
        if http_client is not None:
            self._client: httpx.Client = http_client
            return
        if transport is None:
            transport = Urllib3Transport(verify=verify, max_connections=kwargs["max_connections"],
                                         proxy=proxy)
            if not kwargs.get("event_hooks"):
                self._fast = transport
        self._client = httpx.Client(transport=transport, **_client_kwargs(**kwargs))
        self._defaults, self._extensions = _fast_path_defaults(self._client)

    def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        params: Mapping[str, Any] | None,
        content: bytes | Iterable[bytes] | None,
        stream: bool = False,
        *,
        timeout: PerRequestTimeout = None,
    ) -> Response:
        """Send one request; ``timeout`` overrides some phases (connect, read, write, pool)
        for this request only."""
        try:
            phases = _phases(timeout)
            if self._fast is None:
                request = self._client.build_request(
                    method, url, headers=headers, params=params, content=content,
                    timeout=_merged_timeout(self._client, phases))
                return self._client.send(request, stream=stream)
            request = _fast_request(method, url, params, content, self._defaults, headers,
                                    _with_timeout(self._extensions, phases), not stream)
            response = self._fast.handle_request(request)
            if not stream and not response.is_closed:
                try:
                    response.read()
                finally:
                    response.close()
            return response
        except httpx.HTTPError as exc:
            raise _failure(exc, method, url) from exc

    @staticmethod
    def read(response: Response) -> bytes:
        try:
            return response.read()
        except httpx.HTTPError as exc:
            raise _failure(exc, response.request.method, str(response.request.url)) from exc

    @staticmethod
    def iter_bytes(response: Response, chunk_size: int | None = None) -> Iterable[bytes]:
        try:
            yield from response.iter_bytes(chunk_size)
        except httpx.HTTPError as exc:
            raise _failure(exc, response.request.method, str(response.request.url)) from exc

    def close(self) -> None:
        if self._owned:
            self._client.close()


class AsyncTransport:
    """An asyncio pool shared by every service and view of one client."""

    def __init__(self, transport: Any = None, *, http_client: Any = None,
                 verify: ssl.SSLContext | bool = True, proxy: str | None = None,
                 **kwargs: Any) -> None:
        _check_injection(transport, http_client, sync=False)
        self._owned = http_client is None
        self._fast: AiohttpTransport | None = None
        if http_client is not None:
            self._client: httpx.AsyncClient = http_client
            return
        if transport is None:
            transport = AiohttpTransport(verify=verify, max_connections=kwargs["max_connections"],
                                         keepalive_expiry=kwargs["keepalive_expiry"], proxy=proxy)
            if not kwargs.get("event_hooks"):
                self._fast = transport
        self._client = httpx.AsyncClient(transport=transport, **_client_kwargs(**kwargs))
        self._defaults, self._extensions = _fast_path_defaults(self._client)

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        params: Mapping[str, Any] | None,
        content: bytes | AsyncIterable[bytes] | Iterable[bytes] | None,
        stream: bool = False,
        *,
        timeout: PerRequestTimeout = None,
    ) -> Response:
        """Send one request; ``timeout`` overrides some phases (connect, read, write, pool)
        for this request only."""
        try:
            phases = _phases(timeout)
            if self._fast is None:
                request = self._client.build_request(
                    method, url, headers=headers, params=params, content=content,
                    timeout=_merged_timeout(self._client, phases))
                return await self._client.send(request, stream=stream)
            request = _fast_request(method, url, params, content, self._defaults, headers,
                                    _with_timeout(self._extensions, phases), not stream)
            response = await self._fast.handle_async_request(request)
            if not stream and not response.is_closed:
                try:
                    await response.aread()
                finally:
                    await response.aclose()
            return response
        except httpx.HTTPError as exc:
            raise _failure(exc, method, url) from exc

    @staticmethod
    async def read(response: Response) -> bytes:
        try:
            return await response.aread()
        except httpx.HTTPError as exc:
            raise _failure(exc, response.request.method, str(response.request.url)) from exc

    @staticmethod
    async def iter_bytes(response: Response, chunk_size: int | None = None) -> Any:
        try:
            async for chunk in response.aiter_bytes(chunk_size):
                yield chunk
        except httpx.HTTPError as exc:
            raise _failure(exc, response.request.method, str(response.request.url)) from exc

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()
