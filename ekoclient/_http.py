"""The only module that imports ``httpx``.

Everything else talks to :class:`SyncTransport` / :class:`AsyncTransport` and sees
``Response``; a later move to a maintained fork of httpx touches this file alone. Transport
failures are translated to :class:`ekoclient.errors.TransportError` here, so no other layer
needs to know httpx's exception tree.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, Iterable, Mapping
from typing import Any

import httpx

from .errors import MalformedResponseError, TransportError

Response = httpx.Response
Headers = httpx.Headers


class TimeoutFailure(TransportError):
    """The service did not answer within the configured timeout."""


def ssl_context(ca_bundle: str | None, verify: bool) -> ssl.SSLContext | bool:
    """One SSL context per client: building it is slow, sharing it is free."""
    if not verify:
        return False
    if ca_bundle:
        return ssl.create_default_context(cafile=ca_bundle)
    return ssl.create_default_context()


def _client_kwargs(
    *,
    verify: ssl.SSLContext | bool,
    max_connections: int,
    max_keepalive: int,
    keepalive_expiry: float,
    timeouts: tuple[float, float, float, float],
    user_agent: str,
    event_hooks: Mapping[str, list[Any]] | None,
) -> dict[str, Any]:
    connect, read, write, pool = timeouts
    return {
        "verify": verify,
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


def _capped(client: httpx.Client | httpx.AsyncClient, cap: float | None) -> dict[str, Any]:
    """Per-request timeouts no longer than ``cap`` seconds (the call's time left)."""
    if cap is None:
        return {}
    t = client.timeout
    return {"timeout": httpx.Timeout(
        connect=min(t.connect or cap, cap), read=min(t.read or cap, cap),
        write=min(t.write or cap, cap), pool=min(t.pool or cap, cap))}


def _failure(exc: httpx.HTTPError, method: str, url: str) -> TransportError:
    kind = type(exc).__name__
    if isinstance(exc, httpx.DecodingError):
        return MalformedResponseError(f"{method} {url}: the answer could not be decoded "
                                      f"({kind}: {exc})")
    if isinstance(exc, httpx.TimeoutException):
        return TimeoutFailure(f"{method} {url} timed out ({kind})")
    return TransportError(f"{method} {url} failed: {kind}: {exc}")


class SyncTransport:
    """A blocking httpx pool shared by every service and view of one client."""

    def __init__(self, transport: Any = None, **kwargs: Any) -> None:
        self._client = httpx.Client(transport=transport, **_client_kwargs(**kwargs))

    def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        params: Mapping[str, Any] | None,
        content: bytes | Iterable[bytes] | None,
        stream: bool = False,
        timeout: float | None = None,
    ) -> Response:
        try:
            request = self._client.build_request(
                method, url, headers=headers, params=params, content=content,
                **_capped(self._client, timeout),
            )
            return self._client.send(request, stream=stream)
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
        self._client.close()


class AsyncTransport:
    """An asyncio httpx pool shared by every service and view of one client."""

    def __init__(self, transport: Any = None, **kwargs: Any) -> None:
        self._client = httpx.AsyncClient(transport=transport, **_client_kwargs(**kwargs))

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        params: Mapping[str, Any] | None,
        content: bytes | AsyncIterable[bytes] | Iterable[bytes] | None,
        stream: bool = False,
        timeout: float | None = None,
    ) -> Response:
        try:
            request = self._client.build_request(
                method, url, headers=headers, params=params, content=content,
                **_capped(self._client, timeout),
            )
            return await self._client.send(request, stream=stream)
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
        await self._client.aclose()
