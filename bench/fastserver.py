"""A minimal, fast TLS server speaking just enough of the wire protocol to measure clients.

    python -m bench.fastserver [--port 0] [--tls-dir DIR]

The reference server spends 2-3 ms of CPU per request, which hides any client cost; this one
spends tens of microseconds (a hand-written HTTP/1.1 parser on an asyncio protocol), so a
benchmark against it measures the client. It answers:

- ``POST /api/auth/token`` -> ``{"token", "expires_at"}`` (a JWT with ``exp``, never checked);
- ``GET /api/auth/permissions``, ``POST /api/find/{c}`` -> small JSON answers;
- ``PUT /api/blob/{t}/{id}`` (reads and discards the body, chunked or not) and
  ``GET /api/blob/{t}/{id}?size=N`` (streams N bytes);
- ``GET /stats`` -> connections opened, open now and peak open since the last ``/stats/reset``.

It prints ``PORT <n>`` and ``CA <path>`` on stdout once it listens, and runs until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import ssl
import sys
import tempfile
import time
from pathlib import Path

import jwt

STATS = {"opened": 0, "open": 0, "peak": 0, "requests": 0, "exchanges": 0}

_RECORDS = json.dumps([{"id": f"r{i}", "n": i, "name": f"record {i}"} for i in range(10)]
                      ).encode()
_PERMS = json.dumps({"key_id": "k1", "label": "bench", "is_admin": True, "read_only": False,
                     "collection_permissions": {"*": ["read", "write"]}}).encode()
_BLOCK = hashlib.sha256(b"x").digest() * 2048  # 64 KiB


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    reason = {200: "OK", 201: "Created", 404: "Not Found"}.get(status, "OK")
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _json(status: int, body: bytes) -> bytes:
    return _head(status, [("content-type", "application/json"),
                          ("content-length", str(len(body))),
                          ("x-request-id", "r1")]) + body


class HttpProtocol(asyncio.Protocol):
    """One connection: parse requests as bytes arrive, answer each in order."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.state = "head"
        self.method = self.path = ""
        self.remaining = 0
        self.chunked = False
        self.streaming: asyncio.Task[None] | None = None
        self.body_len = 0
        self.paused = False
        self.drained = asyncio.Event()
        self.drained.set()
        self.observer = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        STATS["opened"] += 1
        STATS["open"] += 1
        STATS["peak"] = max(STATS["peak"], STATS["open"])

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.observer:
            STATS["open"] -= 1
        self.drained.set()

    def pause_writing(self) -> None:
        self.drained.clear()

    def resume_writing(self) -> None:
        self.drained.set()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self._step():
            pass

    def _step(self) -> bool:
        if self.state == "head":
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            del self.buf[:end + 4]
            self.method, self.path, _ = head[0].split(" ", 2)
            headers = {}
            for line in head[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            self.chunked = "chunked" in headers.get("transfer-encoding", "")
            self.remaining = int(headers.get("content-length", "0") or 0)
            self.body_len = 0
            self.state = "chunk-size" if self.chunked else "body"
            return True
        if self.state == "body":
            take = min(self.remaining, len(self.buf))
            self.body_len += take
            body = bytes(self.buf[:take]) if take < 65536 else b""
            del self.buf[:take]
            self.remaining -= take
            if self.remaining:
                return False
            self.state = "head"
            self._answer(body)
            return True
        if self.state == "chunk-size":
            end = self.buf.find(b"\r\n")
            if end < 0:
                return False
            size = int(bytes(self.buf[:end]).split(b";")[0], 16)
            del self.buf[:end + 2]
            self.remaining = size
            self.state = "chunk" if size else "trailer"
            return True
        if self.state == "chunk":
            take = min(self.remaining, len(self.buf))
            self.body_len += take
            del self.buf[:take]
            self.remaining -= take
            if self.remaining:
                return False
            self.state = "chunk-end"
            return True
        if self.state == "chunk-end":
            if len(self.buf) < 2:
                return False
            del self.buf[:2]
            self.state = "chunk-size"
            return True
        if self.state == "trailer":
            end = self.buf.find(b"\r\n")
            if end < 0:
                return False
            del self.buf[:end + 2]
            if end == 0:
                self.state = "head"
                self._answer(b"")
            return True
        return False

    def _answer(self, body: bytes) -> None:
        assert self.transport is not None
        STATS["requests"] += 1
        path, _, query = self.path.partition("?")
        m = self.method
        if m == "POST" and path == "/api/auth/token":
            STATS["exchanges"] += 1
            try:
                key = json.loads(body).get("api_key", "")
            except ValueError:
                key = ""
            exp = int(time.time()) + 3600
            token = jwt.encode({"sub": hashlib.sha1(key.encode()).hexdigest(), "exp": exp,
                                "iat": exp - 3600}, "bench-secret-bench-secret-bench-32", "HS256")
            out = json.dumps({"token": token, "expires_at": exp}).encode()
            self.transport.write(_json(200, out))
        elif path == "/api/auth/permissions":
            self.transport.write(_json(200, _PERMS))
        elif path.startswith("/api/find/"):
            self.transport.write(_json(200, _RECORDS))
        elif m == "PUT" and path.startswith("/api/blob/"):
            meta = [("x-blob-length", str(self.body_len)), ("x-blob-sha256", "0" * 64),
                    ("x-blob-md5", "0" * 32), ("x-blob-timestamp", "2026-01-01T00:00:00Z"),
                    ("content-type", "application/json"), ("x-request-id", "r1")]
            out = json.dumps({"length": self.body_len}).encode()
            self.transport.write(_head(201, [*meta, ("content-length", str(len(out)))]) + out)
        elif m == "GET" and path.startswith("/api/blob/"):
            size = int(dict(p.split("=", 1) for p in query.split("&") if "=" in p)
                       .get("size", "1048576"))
            self.transport.pause_reading()
            self.streaming = asyncio.ensure_future(self._stream(size))
        elif path in ("/stats", "/stats/reset"):
            if not self.observer:  # the reading connection is not counted
                self.observer = True
                if STATS["peak"] == STATS["open"]:
                    STATS["peak"] -= 1
                STATS["opened"] -= 1
                STATS["open"] -= 1
                STATS["requests"] -= 1
            if path == "/stats/reset":
                STATS.update(opened=0, peak=STATS["open"], requests=0, exchanges=0)
            self.transport.write(_json(200, json.dumps(STATS).encode()))
            self.transport.write(_json(200, b"{}"))
        else:
            self.transport.write(_json(404, b'{"error":{"code":"not_found","message":"no",'
                                            b'"request_id":"r1"}}'))

    async def _stream(self, size: int) -> None:
        assert self.transport is not None
        self.transport.write(_head(200, [("content-type", "application/octet-stream"),
                                         ("content-length", str(size)),
                                         ("x-request-id", "r1")]))
        sent = 0
        while sent < size and not self.transport.is_closing():
            piece = _BLOCK[: min(len(_BLOCK), size - sent)]
            self.transport.write(piece)
            sent += len(piece)
            await self.drained.wait()
        self.transport.resume_reading()


def tls_context(tls_dir: Path) -> tuple[ssl.SSLContext, Path]:
    from mock_server.tls import ensure_local_ca

    files = ensure_local_ca(tls_dir)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(files.cert, files.key)
    assert files.ca is not None
    return ctx, files.ca


async def serve(port: int, tls_dir: Path) -> None:
    ctx, ca = tls_context(tls_dir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(HttpProtocol, "127.0.0.1", port, ssl=ctx, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"PORT {bound}\nCA {ca}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls-dir", default=None)
    args = parser.parse_args()
    tls_dir = Path(args.tls_dir or tempfile.mkdtemp(prefix="ekofast-"))
    try:
        asyncio.run(serve(args.port, tls_dir))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
