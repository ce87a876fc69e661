"""The server's two HTTP/1.1 parsers (issue 17): httptools (llhttp) when installed, h11 as
the fallback. Every test runs against both, over TLS on real sockets.

Hostile request heads get a 4xx JSON envelope (or the app's own answer) and leave the
connection safe: either it is closed and nothing sent after the bad request is ever
answered (no smuggling), or it keeps serving. Where llhttp and h11 disagree the table
gives each its answer; mock_server/protocols_httptools.py says why.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from mock_server.config import ServerConfig
from mock_server.protocols import (
    MAX_REQUEST_HEAD,
    httptools_available,
    resolve_http,
    resolve_loop,
    uvloop_available,
)
from mock_server.pytest_plugin import ServerInfo, start_server
from mock_server.testing import ServerProcess
from tests.server.conftest import Api, tls_context

PROTOCOLS = ["httptools", "h11"]
#: Sent on the same connection after each hostile request: answered only if the server
#: kept the connection (and then must be answered correctly).
FOLLOW = b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def require(proto: str) -> None:
    if proto == "httptools" and not httptools_available():
        pytest.skip("httptools is not installed (the server-fast extra)")


@pytest.fixture(scope="module", params=PROTOCOLS)
def proto_server(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    require(request.param)
    info = start_server(tmp_path_factory.mktemp(f"ekodb-{request.param}"),
                        http=request.param, failed_auth_limit=10_000)
    try:
        yield info
    finally:
        info.server.stop()


Server = ServerInfo | ServerProcess  # anything with .url and .ca_bundle


def tls_socket(info: Server) -> ssl.SSLSocket:
    host, port = info.url.removeprefix("https://").rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=10)
    return tls_context(info).wrap_socket(raw, server_hostname=host)


def read_answer(tls: ssl.SSLSocket, buffered: bytes = b"") -> tuple[bytes, bytes]:
    """One whole answer (head and Content-Length body), and what followed it."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        assert chunk, f"closed before an answer: {data[:200]!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(headers_of(head).get(b"content-length", b"0"))
    while len(rest) < length:
        chunk = tls.recv(65536)
        assert chunk, "closed mid-answer"
        rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


def read_to_close(tls: ssl.SSLSocket, data: bytes = b"") -> bytes:
    while True:
        try:
            chunk = tls.recv(65536)
        except (ssl.SSLError, OSError):
            return data
        if not chunk:
            return data
        data += chunk


def headers_of(head: bytes) -> dict[bytes, bytes]:
    return {k.lower(): v for k, v in (line.split(b": ", 1) for line in head.split(b"\r\n")[1:])}


def exchange(info: Server, request: bytes) -> tuple[int, dict[bytes, bytes], bytes, bytes]:
    """(status, headers, body) of the answer to `request`, then everything the server sent
    on that connection after it, FOLLOW included if the connection was kept."""
    with tls_socket(info) as tls:
        tls.sendall(request)
        answer, extra = read_answer(tls)
        head, _, body = answer.partition(b"\r\n\r\n")
        headers = headers_of(head)
        if headers.get(b"connection", b"").lower() != b"close":
            tls.sendall(FOLLOW)
        after = read_to_close(tls, extra)
    return int(head.split(b" ", 2)[1]), headers, body, after


def assert_safe(info: ServerInfo, request: bytes, status: int,
                code: str | None = None) -> dict[bytes, bytes]:
    got, headers, body, after = exchange(info, request)
    assert got == status, (got, body[:300])
    if 400 <= status < 500:
        err = json.loads(body)["error"]
        assert set(err) == {"code", "message", "request_id"}, err
        assert err["request_id"].encode() == headers[b"x-request-id"]
        if code is not None:
            assert err["code"] == code, err
    if headers.get(b"connection", b"").lower() == b"close":
        assert after == b"", f"answered after a close: {after[:300]!r}"
    else:  # kept: the next request on it is served
        assert after.startswith(b"HTTP/1.1 200"), after[:300]
    return headers


def smuggle(framing: bytes) -> bytes:
    """A POST with `framing` headers whose body hides a second request."""
    return (b"POST /api/auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + framing + b"\r\n0\r\n\r\nGET /api/metrics HTTP/1.1\r\nHost: x\r\n\r\n")


H = b"Host: x\r\n"
#: id -> (request, status under httptools, status under h11). The same status means
#: both parsers answer alike; 400s are the parser's envelope, others the app's answer.
CASES: dict[str, tuple[bytes, int, int]] = {
    # refused by both
    "nul-in-header-value": (b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
                            400, 400),
    "space-before-colon": (b"GET /api/health HTTP/1.1\r\nHost : x\r\n\r\n", 400, 400),
    "non-ascii-target": (b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400, 400),
    "no-host": (b"GET /api/health HTTP/1.1\r\n\r\n", 400, 400),
    "two-hosts": (b"GET /api/health HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400, 400),
    "http-0.9": (b"GET /api/health\r\n\r\n", 400, 400),
    "garbage": (b"NOT AN HTTP REQUEST\r\n\r\n", 400, 400),
    "tls-hello-on-http": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 400, 400),
    "bad-chunk-size": (b"POST /api/auth/token HTTP/1.1\r\nHost: x\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n1x\r\nx\r\n0\r\n\r\n", 400, 400),
    "content-length-plus": (b"POST /api/auth/token HTTP/1.1\r\nHost: x\r\n"
                            b"Content-Length: +2\r\n\r\n{}", 400, 400),
    "content-length-overflow": (b"POST /api/auth/token HTTP/1.1\r\nHost: x\r\n"
                                b"Content-Length: 99999999999999999999999\r\n\r\n", 400, 400),
    "transfer-encoding-gzip": (b"POST /api/auth/token HTTP/1.1\r\nHost: x\r\n"
                               b"Transfer-Encoding: gzip\r\n\r\n", 400, 400),
    "transfer-encoding-gzip-chunked": (b"POST /api/auth/token HTTP/1.1\r\nHost: x\r\n"
                                       b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                                       400, 400),
    "transfer-encoding-twice": (b"POST /api/auth/token HTTP/1.1\r\nHost: x\r\n"
                                b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
                                b"\r\n\r\n0\r\n\r\n", 400, 400),
    # request smuggling: ambiguous framing, a second request hidden in the body
    "smuggle-cl-te": (smuggle(b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n"),
                      400, 400),
    "smuggle-two-lengths": (smuggle(b"Content-Length: 5\r\nContent-Length: 48\r\n"), 400, 400),
    "smuggle-folded-te": (smuggle(b"Content-Length: 4\r\nTransfer-Encoding:\r\n chunked\r\n"),
                          400, 400),
    "smuggle-xchunked": (smuggle(b"Content-Length: 5\r\nTransfer-Encoding: xchunked\r\n"),
                         400, 400),
    "smuggle-te-space": (smuggle(b"Content-Length: 5\r\nTransfer-Encoding : chunked\r\n"),
                         400, 400),
    # methods: any token reaches the app (501 there) on both
    "unknown-method": (b"X000YZ /api/health HTTP/1.1\r\n" + H + b"\r\n", 501, 501),
    "lowercase-method": (b"get /api/health HTTP/1.1\r\n" + H + b"\r\n", 501, 501),
    "webdav-method": (b"PROPFIND /api/health HTTP/1.1\r\n" + H + b"\r\n", 501, 501),
    # llhttp is stricter: refused where h11 lets the request through to the app
    "obs-fold": (b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400, 200),
    "bare-lf": (b"GET /api/health HTTP/1.1\nHost: x\n\n", 400, 200),
    "control-char-in-value": (b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
                              400, 200),
    "same-length-twice": (b"POST /api/auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: "
                          b"application/json\r\nContent-Length: 2\r\nContent-Length: 2\r\n"
                          b"\r\n{}", 400, 400),
    "http-2.0-line": (b"GET /api/health HTTP/2.0\r\n" + H + b"\r\n", 400, 200),
    # targets that are not a path: refused by httptools, routed (and not found) by h11
    "absolute-form": (b"GET http://evil.example/api/health HTTP/1.1\r\n" + H + b"\r\n",
                      400, 404),
    "connect-authority": (b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example\r\n\r\n",
                          400, 501),
    "asterisk": (b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", 400, 404),
    # llhttp is laxer, harmlessly: one unambiguous request either way
    "leading-empty-line": (b"\r\nGET /api/health HTTP/1.1\r\n" + H + b"\r\n", 200, 400),
    "double-space": (b"GET  /api/health HTTP/1.1\r\n" + H + b"\r\n", 200, 400),
    # an upgrade to a protocol the server does not speak: answered as a plain request
    "upgrade-h2c": (b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                    b"Upgrade: h2c\r\n\r\n", 200, 200),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_request_heads(proto_server: ServerInfo, case: str) -> None:
    request, on_httptools, on_h11 = CASES[case]
    proto = proto_server.server.http_protocol
    assert_safe(proto_server, request, on_httptools if proto == "httptools" else on_h11)
    # and the server keeps serving
    assert httpx.get(proto_server.url + "/api/health",
                     verify=tls_context(proto_server)).status_code == 200


def test_http2_prior_knowledge_is_refused(proto_server: ServerInfo) -> None:
    """The HTTP/2 preface: llhttp refuses it whole; h11 reads "PRI *" as a request (501)
    and the rest as a malformed one (400, closed). No h2 either way."""
    with tls_socket(proto_server) as tls:
        tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        data = read_to_close(tls)
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) [A-Z]", data)]
    assert statuses == ([400] if proto_server.server.http_protocol == "httptools"
                        else [501, 400]), data[:500]


def test_smuggled_request_never_runs(proto_server: ServerInfo) -> None:
    """The hidden request would read the metrics; it must never be answered."""
    for framing in (b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
                    b"Content-Length: 5\r\nContent-Length: 48\r\n"):
        headers = assert_safe(proto_server, smuggle(framing), 400, "bad_request")
        assert headers[b"connection"] == b"close"


def test_content_length_with_transfer_encoding_says_why(proto_server: ServerInfo) -> None:
    _, _, body, _ = exchange(proto_server, smuggle(
        b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n"))
    assert "Transfer-Encoding" in json.loads(body)["error"]["message"]


def padded_head(size: int) -> bytes:
    """A GET head of about `size` bytes in many 1 KB headers, without its final CRLF."""
    headers = b"".join(b"X-Pad-%05d: %s\r\n" % (i, b"p" * 1000) for i in range(size // 1014))
    head = b"GET /api/health HTTP/1.1\r\nHost: x\r\n" + headers
    return head + b"X-Last: " + b"q" * (size - len(head) - 12) + b"\r\n"


def test_request_head_limit(proto_server: ServerInfo) -> None:
    """A head of many headers just under MAX_REQUEST_HEAD reaches the app; one past it is
    refused (llhttp has no limit of its own). The long one is left unfinished so that
    either parser holds all of it, incomplete, whatever the TLS segmentation."""
    assert_safe(proto_server, padded_head(MAX_REQUEST_HEAD - 4096) + b"\r\n", 200)
    assert_safe(proto_server, padded_head(MAX_REQUEST_HEAD + 1024), 400, "bad_request")


def test_unknown_method_split_over_writes(proto_server: ServerInfo) -> None:
    """A made-up method still gets the app's 501 when it arrives a few bytes at a time."""
    with tls_socket(proto_server) as tls:
        for piece in (b"X", b"0", b"0Y", b" /api/health", b" HTTP/1.1\r\nHost: x\r\n\r\n"):
            tls.sendall(piece)
        answer, _ = read_answer(tls)
    assert answer.startswith(b"HTTP/1.1 501"), answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "not_implemented"


def test_pipelined_requests_are_answered_in_order(proto_server: ServerInfo) -> None:
    with tls_socket(proto_server) as tls:
        tls.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Request-Id: first\r\n\r\n"
                    b"GET /api/nope HTTP/1.1\r\nHost: x\r\nX-Request-Id: second\r\n\r\n")
        first, extra = read_answer(tls)
        second, _ = read_answer(tls, extra)
    assert first.startswith(b"HTTP/1.1 200") and b"x-request-id: first" in first
    assert second.startswith(b"HTTP/1.1 404") and b"x-request-id: second" in second


def test_header_values_are_trimmed_alike(proto_server: ServerInfo) -> None:
    """llhttp keeps trailing whitespace, h11 drops it: the app sees the same value."""
    with tls_socket(proto_server) as tls:
        tls.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Request-Id: trimmed \t \r\n\r\n")
        answer, _ = read_answer(tls)
    assert headers_of(answer.partition(b"\r\n\r\n")[0])[b"x-request-id"] == b"trimmed"


def test_long_query_reaches_the_app(proto_server: ServerInfo) -> None:
    """A target over 64 KiB (httptools' URL parser stops there) is split into path and
    query as a short one is: the route and its collection check run."""
    api = Api(proto_server)
    try:
        auth = api.admin["Authorization"].encode()
    finally:
        api.close()
    _, _, body, _ = exchange(proto_server, b"GET /api/find/nope/r1?pad=" + b"a" * 100_000
                             + b" HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth
                             + b"\r\nConnection: close\r\n\r\n")
    assert json.loads(body)["error"]["code"] == "collection_not_found", body[:300]


# --- the connection bounds on either parser (the event loops: test_audit_connections) ---

@pytest.fixture(params=PROTOCOLS)
def proto(request: pytest.FixtureRequest) -> str:
    require(request.param)
    return str(request.param)


def test_websocket_upgrades_stop_counting_as_http_connections(
        ekodb_server_factory: Any, proto: str) -> None:
    """max_connections bounds HTTP connections; WebSockets are capped per key instead."""
    info: ServerInfo = ekodb_server_factory(http=proto, max_connections=2)
    with httpx.Client(base_url=info.url, verify=tls_context(info)) as http:
        token = http.post("/api/auth/token", json={"api_key": info.admin_key}).json()["token"]
    ctx = ssl.create_default_context(cafile=str(info.ca_bundle))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # see test_audit_ws.py
    url = info.url.replace("https://", "wss://") + "/api/ws"
    headers = {"Authorization": f"Bearer {token}"}
    with connect(url, ssl=ctx, open_timeout=10, additional_headers=headers), \
            connect(url, ssl=ctx, open_timeout=10, additional_headers=headers), \
            httpx.Client(base_url=info.url, verify=tls_context(info)) as http:
        assert http.get("/api/health").status_code == 200


def test_shutdown_drops_idle_keep_alive_connections_at_once(
        ekodb_server_factory: Any, proto: str) -> None:
    """An idle TLS keep-alive client never sends close_notify: waiting for it would make
    every stop() last the whole grace period."""
    info: ServerInfo = ekodb_server_factory(http=proto, keep_alive_timeout=60.0)
    with tls_socket(info) as tls:
        tls.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer, _ = read_answer(tls)
        assert answer.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        info.server.stop()
        took = time.monotonic() - started
    assert took < 2.5, f"stop() took {took:.1f}s with an idle connection open"


def test_auto_picks_the_fast_paths_when_installed(ekodb_server: ServerInfo) -> None:
    """The server-fast extra is used without a flag: httptools and uvloop if installed."""
    assert ekodb_server.server.http_protocol == ("httptools" if httptools_available()
                                                 else "h11")
    assert ekodb_server.server.event_loop == ("uvloop" if uvloop_available() else "asyncio")


def test_protocol_choice_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="http must be one of auto, httptools, h11"):
        ServerConfig(data_dir=tmp_path, http="h2")
    # without httptools (the server extra alone): auto falls back, a forced choice says why
    monkeypatch.setattr("mock_server.protocols.httptools_available", lambda: False)
    monkeypatch.setattr("mock_server.protocols.uvloop_available", lambda: False)
    assert resolve_http("auto") == "h11" and resolve_loop("auto") == "asyncio"
    with pytest.raises(RuntimeError, match=r"server-fast"):
        resolve_http("httptools")


@pytest.mark.parametrize("args", [["--http", "h11", "--event-loop", "asyncio"], []],
                         ids=["h11-asyncio", "defaults"])
def test_the_cli_runs_the_parser_it_is_given(tmp_path: Path, args: list[str]) -> None:
    """Two spaces after the method: h11 refuses the line, llhttp reads it; so the answer
    shows which parser `python -m mock_server` runs."""
    uses_httptools = not args and httptools_available()
    with ServerProcess(tmp_path / "data", *args) as proc:
        status, _, _, _ = exchange(proc, b"GET  /api/health HTTP/1.1\r\nHost: x\r\n"
                                         b"Connection: close\r\n\r\n")
    assert status == (200 if uses_httptools else 400)
