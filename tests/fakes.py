"""Scripted httpx transports for fault paths a real server cannot produce on demand.

Only for resets mid-request, exact 503 sequences and the like; everything else is tested
against the reference server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import jwt


def make_token(lifetime: int = 3600, key_id: str = "key_fake") -> str:
    now = int(time.time())
    return jwt.encode({"sub": key_id, "ver": 1, "iat": now, "exp": now + lifetime,
                       "jti": "j"}, "not-the-server-secret-but-long-enough-32b", "HS256")


Step = Callable[[httpx.Request], httpx.Response]


@dataclass
class Script:
    """Answers the token route itself and plays ``steps`` for every other request, in order.

    Once the steps run out, ``fallback`` answers. Every non-token request is recorded.
    """

    steps: list[Step] = field(default_factory=list)
    fallback: Step = field(default=lambda r: httpx.Response(200, json={"ok": True}))
    requests: list[httpx.Request] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    exchanges: int = 0
    token_steps: list[Step] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/auth/token":
            self.exchanges += 1
            if self.token_steps:
                return self.token_steps.pop(0)(request)
            return httpx.Response(200, json={"token": make_token(), "expires_at": 0})
        self.requests.append(request)
        self.times.append(time.monotonic())
        step = self.steps.pop(0) if self.steps else self.fallback
        return step(request)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def status(code: int, headers: dict[str, str] | None = None) -> Step:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(code, headers=headers or {}, json={"error": {
            "code": f"status_{code}", "message": f"scripted {code}", "request_id": "req-1"}})
    return answer


def reset(request: httpx.Request) -> httpx.Response:
    raise httpx.RemoteProtocolError("peer closed connection without sending a response",
                                    request=request)


def ok(body: object) -> Step:
    return lambda request: httpx.Response(200, json=body)
