"""What the reference server spends per request, by operation, SDK and raw httpx side by side.

    python -m bench.server [--requests 300] [--rounds 3] [--threads 4] [--records 200]
    python -m bench.server --event-loop asyncio --http h11    # without the server-fast extra
    python -m bench.server --ops "insert,queue send"         # only these operations
    python -m bench.server --profile get --requests 2000     # py-spy flame graph of the server
    python -m bench.server --profile insert --profile-gil --profile-format raw  # CPU only

Server CPU per request is read from the server process itself (user + system time from
psutil before and after a batch), so client cost never counts. Each round runs every
(operation, client) pair once, interleaved, so drift on a shared machine hits all alike; the
table shows the median and the range over rounds. ``find`` asks for the first 10 of
``team == "a"`` (every second record); ``find (scan)`` for a value no record has, so it
reads and decrypts all ``--records`` of them; ``queue poll`` claims one message from a
queue filled before the rounds. ``--threads`` clients share one keep-alive
TLS pool. ``--profile OP`` runs ``py-spy record`` (``pip install py-spy``) on the server
while OP is measured and writes ``bench-server-OP.svg``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psutil

from ekoclient import Client
from mock_server.protocols import resolve_http, resolve_loop

from .common import reference_server

Op = Callable[[int], object]


def _raw_ops(http: httpx.Client, token: str, coll: str, ids: list[str],
             queue: str) -> dict[str, Op]:
    h = {"Authorization": f"Bearer {token}"}
    find_body = {"filter": {"type": "Condition", "content": {
        "field": "team", "operator": "Eq", "value": "a"}}, "limit": 10}
    scan_body = {"filter": {"type": "Condition", "content": {  # matches none: reads all
        "field": "team", "operator": "Eq", "value": "z"}}, "limit": 10}

    def get(i: int) -> object:
        return http.get(f"/api/find/{coll}/{ids[i % len(ids)]}", headers=h).raise_for_status()

    def find(i: int) -> object:
        return http.post(f"/api/find/{coll}", json=find_body, headers=h).raise_for_status()

    def scan(i: int) -> object:
        return http.post(f"/api/find/{coll}", json=scan_body, headers=h).raise_for_status()

    def insert(i: int) -> object:  # into a collection of its own: finds never scan these
        return http.post(f"/api/insert/{coll}_w", json={"n": i, "team": "c"},
                         headers={**h, "Idempotency-Key": uuid.uuid4().hex}).raise_for_status()

    def send(i: int) -> object:
        return http.post(f"/api/queue/{queue}/send", json={"n": i},
                         headers={**h, "Idempotency-Key": uuid.uuid4().hex}).raise_for_status()

    def poll(i: int) -> object:  # one message claimed (never acked) from the prefilled queue
        return http.post(f"/api/queue/{queue}/poll", params={"limit": 1, "claim_ttl": 600},
                         headers={**h, "Idempotency-Key": uuid.uuid4().hex}).raise_for_status()

    return {"get": get, "find": find, "find (scan)": scan, "insert": insert,
            "queue send": send, "queue poll": poll}


def _sdk_ops(client: Client, coll: str, ids: list[str], queue: str) -> dict[str, Op]:
    ds, q = client.datastore, client.queue
    flt = {"type": "Condition", "content": {"field": "team", "operator": "Eq", "value": "a"}}
    none = {"type": "Condition", "content": {"field": "team", "operator": "Eq", "value": "z"}}
    return {
        "get": lambda i: ds.get(coll, ids[i % len(ids)]),
        "find": lambda i: ds.find(coll, flt, limit=10),
        "find (scan)": lambda i: ds.find(coll, none, limit=10),
        "insert": lambda i: ds.insert(f"{coll}_w", {"n": i, "team": "c"}),
        "queue send": lambda i: q.send(queue, {"n": i}),
        "queue poll": lambda i: q.poll(queue, limit=1, claim_ttl=600),
    }


def _measure(server: psutil.Process, op: Op, requests: int, threads: int) -> tuple[float, float]:
    """(requests per wall second, server CPU ms per request) for one batch."""
    before = server.cpu_times()
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(op, range(requests)))
    wall = time.perf_counter() - start
    after = server.cpu_times()
    cpu = (after.user - before.user) + (after.system - before.system)
    return requests / wall, cpu * 1000 / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--records", type=int, default=200, help="records the find scans")
    parser.add_argument("--event-loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                        help="the server's event loop (auto: uvloop when installed)")
    parser.add_argument("--http", choices=("auto", "httptools", "h11"), default="auto",
                        help="the server's HTTP parser (auto: httptools when installed)")
    parser.add_argument("--ops", default="get,find,find (scan),insert,queue send,queue poll",
                        help="comma-separated operations to measure (default: all)")
    parser.add_argument("--profile", metavar="OP", help="py-spy the server during OP (raw)")
    parser.add_argument("--profile-format", choices=("flamegraph", "raw"), default="flamegraph",
                        help="raw: collapsed stacks (one line per stack, for grep/sort)")
    parser.add_argument("--profile-rate", type=int, default=100,
                        help="py-spy samples per second (more: finer, but slows the server)")
    parser.add_argument("--profile-gil", action="store_true",
                        help="sample only the thread holding the GIL (Python CPU, no waits)")
    args = parser.parse_args()

    with reference_server("--event-loop", args.event_loop, "--http", args.http) as server:
        assert server.ca_bundle is not None and server.admin_key is not None
        assert server.proc is not None
        proc = psutil.Process(server.proc.pid)
        ctx = ssl.create_default_context(cafile=str(server.ca_bundle))
        limits = httpx.Limits(max_connections=args.threads, max_keepalive_connections=args.threads)
        with httpx.Client(base_url=server.url, verify=ctx, limits=limits, timeout=60) as http, \
                Client(base_url=server.url, api_key=server.admin_key,
                       ca_bundle=str(server.ca_bundle)) as sdk:
            token = http.post("/api/auth/token", json={"api_key": server.admin_key}).json()
            h = {"Authorization": f"Bearer {token['token']}"}
            coll, queue = f"bench_{uuid.uuid4().hex[:8]}", f"bench_{uuid.uuid4().hex[:8]}"
            for name in (coll, f"{coll}_w"):
                http.post(f"/api/collections/{name}", headers=h).raise_for_status()
            inserts = [{"data": {"n": i, "team": "ab"[i % 2]}} for i in range(args.records)]
            ids = http.post(f"/api/batch/insert/{coll}", json={"inserts": inserts},
                            headers=h).json()["successful"]
            # messages for every poll of every round and client (polls claim one each)
            for _ in range(0, 2 * args.requests * (args.rounds + 1) + 1, 1000):
                http.post(f"/api/queue/{queue}/sendbatch", json=[{"n": 0}] * 1000,
                          headers=h).raise_for_status()
            wanted = [op.strip() for op in args.ops.split(",")]
            variants = {
                who: {name: op for name, op in ops.items() if name in wanted}
                for who, ops in (("raw httpx", _raw_ops(http, token["token"], coll, ids, queue)),
                                 ("ekoclient", _sdk_ops(sdk, coll, ids, queue)))
            }
            if args.profile:
                variants["raw httpx"][args.profile] = _raw_ops(
                    http, token["token"], coll, ids, queue)[args.profile]
            for ops in variants.values():  # warm both pools and the token cache
                for op in ops.values():
                    op(0)

            if args.profile:
                _profile(proc, variants["raw httpx"][args.profile], args)
                return

            samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for _ in range(args.rounds):
                for op_name in variants["raw httpx"]:
                    for who, ops in variants.items():
                        samples.setdefault((op_name, who), []).append(
                            _measure(proc, ops[op_name], args.requests, args.threads))
    _print(samples, args)


def _print(samples: dict[tuple[str, str], list[tuple[float, float]]], args: Any) -> None:
    loop, http = resolve_loop(args.event_loop), resolve_http(args.http)
    print(f"reference server ({loop} loop, {http} HTTP parser) over TLS "
          "keep-alive, "
          f"{args.threads} client threads, "
          f"{args.requests} requests x {args.rounds} rounds; find scans {args.records} records")
    print(f"{'operation':<13} {'client':<10} {'req/s median (range)':>26} "
          f"{'server CPU ms/req median (range)':>36}")
    for (op_name, who), values in samples.items():
        rates = [v[0] for v in values]
        cpus = [v[1] for v in values]
        print(f"{op_name:<13} {who:<10} "
              f"{statistics.median(rates):>8.0f} ({min(rates):>6.0f}-{max(rates):>6.0f})"
              f"       {statistics.median(cpus):>8.2f} ({min(cpus):.2f}-{max(cpus):.2f})")


def _profile(proc: psutil.Process, op: Op, args: Any) -> None:
    # the venv's own py-spy when the venv is not on PATH (python -m from .venv/bin/python)
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    raw = args.profile_format == "raw"
    out = f"bench-server-{args.profile.replace(' ', '-')}.{'txt' if raw else 'svg'}"
    recorder = subprocess.Popen(
        [spy, "record", "--pid", str(proc.pid), "--output", out, "--threads", "--nonblocking",
         "--format", "raw" if raw else "flamegraph", "--rate", str(args.profile_rate),
         *(["--gil"] if args.profile_gil else [])])
    time.sleep(1.0)  # let py-spy attach before the load starts
    rate, cpu = _measure(proc, op, args.requests, args.threads)
    recorder.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT, not SIGTERM
    recorder.wait(60)
    print(f"{args.profile}: {rate:.0f} req/s, server {cpu:.2f} ms CPU/req; profile in {out}")


if __name__ == "__main__":
    main()
