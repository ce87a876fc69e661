"""What a client may hold without sending requests (issue 13, item 2): slow request heads,
idle connections, unfinished TLS handshakes and too many connections are all bounded.

Each test starts a server with short limits, so the bounds show in about a second; each
waits on the socket with a deadline (never a fixed sleep that races the server).
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from mock_server.config import ServerConfig
from mock_server.pytest_plugin import ServerInfo
from tests.server.conftest import assert_error, tls_context

SHORT = 1.0


def address(info: ServerInfo) -> tuple[str, int]:
    host, port = info.url.removeprefix("https://").rsplit(":", 1)
    return host, int(port)


def tls_socket(info: ServerInfo) -> ssl.SSLSocket:
    host, port = address(info)
    raw = socket.create_connection((host, port), timeout=10)
    return tls_context(info).wrap_socket(raw, server_hostname=host)


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes; how long that took."""
    started = time.monotonic()
    sock.settimeout(limit)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            break
        except TimeoutError:
            pytest.fail(f"connection still open after {limit}s")
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - started


#: (event loop, HTTP parser) pairs: each loop, and each parser (test_http_protocols.py)
SETUPS = [("asyncio", "h11"), ("asyncio", "httptools"), ("uvloop", "httptools")]


def require(loop: str, http: str) -> None:
    """Skip a set-up whose optional parts (the server-fast extra) are not installed."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    if http == "httptools":
        pytest.importorskip("httptools")


@pytest.fixture(params=SETUPS, ids=["-".join(s) for s in SETUPS])
def strict(ekodb_server_factory: object, request: pytest.FixtureRequest) -> ServerInfo:
    """Bounds on every event loop and HTTP parser the server offers."""
    loop, http = request.param
    require(loop, http)
    info: ServerInfo = ekodb_server_factory(  # type: ignore[operator]
        header_timeout=SHORT, keep_alive_timeout=SHORT / 2, tls_handshake_timeout=SHORT,
        event_loop=loop, http=http)
    return info


def test_connection_that_never_sends_a_request_is_closed(strict: ServerInfo) -> None:
    with tls_socket(strict) as tls:
        data, took = read_until_closed(tls, 10)
    assert data == b"" and took < SHORT + 2


def trickle(tls: ssl.SSLSocket, piece: bytes) -> tuple[bytes, float]:
    """Send `piece` every 0.2 s (well inside the idle timeout) until the server answers or
    closes; what it sent and how long that took."""
    started = time.monotonic()
    tls.settimeout(0.2)
    data = b""
    while time.monotonic() - started < SHORT + 5:
        try:
            tls.sendall(piece)
            chunk = tls.recv(65536)
        except TimeoutError:
            continue
        except (OSError, ssl.SSLError):
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - started


def assert_408(data: bytes) -> None:
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert json.loads(data.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"


def test_slow_request_head_gets_408_and_is_closed(strict: ServerInfo) -> None:
    """A slowloris keeps a connection by trickling header bytes, each before the idle
    timeout: the head as a whole must arrive in header_timeout."""
    with tls_socket(strict) as tls:
        tls.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
        data, took = trickle(tls, b"X-a: b\r\n")
    assert_408(data)
    assert took < SHORT + 2


def test_each_request_on_a_keep_alive_connection_gets_the_head_timeout(strict: ServerInfo
                                                                       ) -> None:
    with tls_socket(strict) as tls:
        tls.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b"}"):  # the whole first answer (head, then body)
            first += tls.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        data, took = trickle(tls, b"G")
    assert_408(data)
    assert took < SHORT + 2


def test_unfinished_tls_handshake_is_dropped(strict: ServerInfo) -> None:
    with socket.create_connection(address(strict), timeout=10) as raw:
        raw.sendall(b"\x16\x03\x01")  # the start of a ClientHello, never finished
        _, took = read_until_closed(raw, 10)
    assert took < SHORT + 2


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_connections_past_the_cap_get_503_and_are_closed(ekodb_server_factory: object,
                                                         http: str) -> None:
    require("asyncio", http)
    info: ServerInfo = ekodb_server_factory(  # type: ignore[operator]
        max_connections=2, http=http)
    with ExitStack() as stack:
        held = []
        for _ in range(2):
            tls = stack.enter_context(tls_socket(info))
            tls.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert tls.recv(65536).startswith(b"HTTP/1.1 200")
            held.append(tls)
        with httpx.Client(base_url=info.url, verify=tls_context(info)) as http:
            r = http.get("/api/health")
            err = assert_error(r, 503, "service_unavailable")
            assert "limit of 2 open connections" in err["message"]
            assert r.headers["retry-after"] == "1" and r.headers["connection"] == "close"
        held[0].close()
        deadline = time.monotonic() + 10
        while True:  # the slot is free once the server has seen the close
            with httpx.Client(base_url=info.url, verify=tls_context(info)) as http:
                if http.get("/api/health").status_code == 200:
                    break
            assert time.monotonic() < deadline, "slot never freed"
            time.sleep(0.05)



def test_authenticated_idempotent_writes_work_on_every_event_loop(strict: ServerInfo) -> None:
    with httpx.Client(base_url=strict.url, verify=tls_context(strict)) as http:
        tok = http.post("/api/auth/token", json={"api_key": strict.admin_key}).json()["token"]
        h = {"Authorization": f"Bearer {tok}", "Idempotency-Key": "loop-1"}
        assert http.post("/api/collections/loops", headers=h).status_code == 200
        first = http.post("/api/insert/loops", json={"n": 1},
                          headers={**h, "Idempotency-Key": "loop-2"})
        again = http.post("/api/insert/loops", json={"n": 1},
                          headers={**h, "Idempotency-Key": "loop-2"})
        assert first.status_code == again.status_code == 200
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json()["id"] == first.json()["id"]
        found = http.post("/api/find/loops", json={}, headers={"Authorization": h[
            "Authorization"]})
        assert [r["id"] for r in found.json()] == [first.json()["id"]]


def test_an_unknown_event_loop_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="event_loop must be one of auto, asyncio, uvloop"):
        ServerConfig(data_dir=tmp_path, event_loop="tokio")
