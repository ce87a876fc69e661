"""Fixtures for the reference-server suite: an httpx client over TLS and key helpers."""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from mock_server.permissions import Scope
from mock_server.pytest_plugin import ServerInfo


@dataclass(frozen=True)
class Who:
    """A caller of the domain modules (DataStore and friends) in tests without HTTP."""

    key_id: str
    label: str
    scope: Scope


ADMIN = Who("key_admin", "admin", Scope.from_raw({}, is_admin=True, read_only=False))


def tls_context(info: ServerInfo) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(info.ca_bundle))


def raw_exchange(info: ServerInfo, request: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes over TLS; read until the server closes (or `timeout` passes)."""
    host, port = info.url.removeprefix("https://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as raw, \
            tls_context(info).wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(request)
        data = b""
        while True:
            try:
                chunk = tls.recv(65536)
            except (ssl.SSLError, OSError):
                break
            if not chunk:
                break
            data += chunk
    return data


def recv_op(ws: Any, op: str, timeout: float = 10) -> dict[str, Any]:
    """The next WebSocket frame with this ``op``, skipping heartbeats and acks."""
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        if frame["op"] == op:
            return dict(frame)
        assert frame["op"] in ("heartbeat", "pong", "acked", "subscribed"), frame


class Api:
    """Thin helper over one httpx client (real sockets, TLS verified with the local CA)."""

    def __init__(self, info: ServerInfo) -> None:
        self.info = info
        self.http = httpx.Client(base_url=info.url, verify=tls_context(info), timeout=30)

    def token(self, api_key: str) -> str:
        r = self.http.post("/api/auth/token", json={"api_key": api_key})
        assert r.status_code == 200, r.text
        return str(r.json()["token"])

    def headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(api_key)}"}

    @property
    def admin(self) -> dict[str, str]:
        return self.headers(self.info.admin_key)

    def create_key(self, label: str = "k", **body: Any) -> dict[str, Any]:
        r = self.http.post("/api/auth/register", json={"label": label, **body},
                           headers=self.admin)
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data

    def metric(self, name: str, labels: str = "") -> float:
        text = self.http.get("/api/metrics", headers=self.admin).text
        prefix = f"{name}{{{labels}}} " if labels else f"{name} "
        for line in text.splitlines():
            if line.startswith(prefix):
                return float(line[len(prefix):])
        return 0.0

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def api(ekodb_server: ServerInfo) -> Iterator[Api]:
    a = Api(ekodb_server)
    try:
        yield a
    finally:
        a.close()


def assert_error(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The SPEC §4.2 envelope with the right status (and code, when given)."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"code", "message", "request_id"}
    assert err["request_id"] == resp.headers["x-request-id"]
    if code is not None:
        assert err["code"] == code, err
    return err
