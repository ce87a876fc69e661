"""Fixtures for the reference-server suite: an httpx client over TLS and key helpers."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mock_server.pytest_plugin import ServerInfo


def tls_context(info: ServerInfo) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(info.ca_bundle))


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
