"""Server CPU per request in-process: the ASGI app called directly, no network, no TLS.

    python -m bench.inproc [get|find|insert|send ...] [--requests 1000]
    python -m bench.inproc insert --profile          # cProfile of the event loop thread

Each request is awaited in turn (one at a time), so this is the cost of the request path
itself: middlewares, routing, handlers, SQLite, encryption. The figure is the process's
CPU time per request, split into the event loop's thread and the others (worker threads
and the hops to them). ``insert`` and ``send`` carry a fresh Idempotency-Key each, as the
SDK sends them. Run it from the repository root (``python -m``), not as a file: ``bench/``
holds a module named ``queue``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mock_server.app import create_app
from mock_server.config import ServerConfig

Call = Callable[[int], Awaitable[tuple[int, bytes]]]


def _client(app: Any) -> Callable[..., Awaitable[tuple[int, bytes]]]:
    async def call(method: str, path: str, body: bytes = b"",
                   headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, bytes]:
        hdrs = [(b"host", b"bench"), (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()), *(headers or [])]
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": method, "scheme": "https", "path": path,
                 "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": hdrs, "client": ("127.0.0.1", 50000),
                 "server": ("127.0.0.1", 443), "state": {}}
        sent = False
        out: dict[str, Any] = {"body": b""}

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # no disconnect: the request ends first
            raise AssertionError

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                out["status"] = message["status"]
            elif message["type"] == "http.response.body":
                out["body"] += message.get("body", b"")

        await app(scope, receive, send)
        return int(out["status"]), bytes(out["body"])

    return call


async def _ops(app: Any, admin_key: str) -> dict[str, Call]:
    call = _client(app)
    _, body = await call("POST", "/api/auth/token", json.dumps({"api_key": admin_key}).encode())
    auth = [(b"authorization", f"Bearer {json.loads(body)['token']}".encode())]
    for name in ("c", "w"):
        await call("POST", f"/api/collections/{name}", headers=auth)
    inserts = [{"data": {"n": i, "team": "ab"[i % 2]}} for i in range(200)]
    _, body = await call("POST", "/api/batch/insert/c",
                         json.dumps({"inserts": inserts}).encode(), auth)
    ids = json.loads(body)["successful"]
    flt = json.dumps({"filter": {"type": "Condition", "content": {
        "field": "team", "operator": "Eq", "value": "a"}}, "limit": 10}).encode()

    def keyed() -> list[tuple[bytes, bytes]]:
        return [*auth, (b"idempotency-key", uuid.uuid4().hex.encode())]

    return {
        "get": lambda i: call("GET", f"/api/find/c/{ids[i % len(ids)]}", headers=auth),
        "find": lambda i: call("POST", "/api/find/c", flt, auth),
        "insert": lambda i: call("POST", "/api/insert/w",
                                 json.dumps({"n": i, "team": "c"}).encode(), keyed()),
        "send": lambda i: call("POST", "/api/queue/q/send",
                               json.dumps({"n": i}).encode(), keyed()),
    }


async def _run(names: list[str], requests: int, profile: cProfile.Profile | None) -> None:
    app = create_app(ServerConfig(data_dir=Path(tempfile.mkdtemp(prefix="ekobench-"))),
                     environ={})
    ops = await _ops(app, app.state.ekodb.admin_key)
    for name in names:
        op = ops[name]
        for i in range(20):  # warm caches (token, keys, statements)
            status, body = await op(i)
            assert status == 200, (status, body)
        if profile is not None:
            profile.enable()
        cpu, loop = time.process_time(), time.thread_time()
        for i in range(requests):
            await op(i)
        cpu, loop = time.process_time() - cpu, time.thread_time() - loop
        if profile is not None:
            profile.disable()
        print(f"{name}: {cpu / requests * 1e6:.0f} µs CPU/request in-process "
              f"(event loop {loop / requests * 1e6:.0f}, "
              f"other threads {(cpu - loop) / requests * 1e6:.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ops", nargs="*", default=["get", "find", "insert", "send"],
                        choices=["get", "find", "insert", "send"])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the event loop thread (thread CPU time); top 60")
    args = parser.parse_args()
    profile = cProfile.Profile(time.thread_time) if args.profile else None
    asyncio.run(_run(args.ops, args.requests, profile))
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(60)


if __name__ == "__main__":
    main()
