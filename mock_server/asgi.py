"""Tiny raw-ASGI helpers shared by the middlewares (no framework imports)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID_KEY = "ekodb.request_id"


def header(scope: Scope, name: bytes) -> str | None:
    """First value of a request header (name in lower case), decoded as latin-1."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def request_id(scope: Scope) -> str:
    return str(scope.get(REQUEST_ID_KEY, ""))


def error_body(code: str, message: str, rid: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "request_id": rid}}).encode()


async def send_json(
    send: Send,
    status: int,
    body: bytes,
    headers: Mapping[str, str] | None = None,
) -> None:
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def send_error(
    scope: Scope,
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> None:
    await send_json(send, status, error_body(code, message, request_id(scope)), headers)
