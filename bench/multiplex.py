"""N tenants' keys through one Authenticator vs N separate clients (SPEC §6).

    python -m bench.multiplex [--keys 200] [--calls 5]

A reference server runs in its own process (TLS on loopback). Each of N keys makes
``--calls`` sequential ``datastore.find`` calls, all keys concurrently. Three ways:

- ``authenticator``: one ``AsyncClient``, ``AsyncAuthenticator(...).using_credentials(key)``
  per key, one shared pool;
- ``separate-ekoclient``: N ``AsyncClient`` objects, one per key;
- ``separate-httpx``: N raw ``httpx.AsyncClient`` objects, each exchanging its own token.

Each scenario runs in a fresh subprocess so its peak RSS is its own; connections are the
server's ``ekodb_connections_opened_total`` delta. Ratios are against the separate clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import psutil

from ekoclient import AsyncAuthenticator, AsyncClient, Client

from .common import reference_server


def _peak_rss_sampler() -> tuple[threading.Event, list[int]]:
    stop, peak = threading.Event(), [0]
    proc = psutil.Process()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()
    return stop, peak


async def _scenario(name: str, url: str, ca: str, keys: list[str], collection: str,
                    calls: int, pool: int) -> None:
    async def per_view(view: Any) -> None:
        for _ in range(calls):
            await view.datastore.find(collection, limit=10)

    if name == "authenticator":
        async with AsyncClient(base_url=url, ca_bundle=ca,
                               pool={"max_connections": pool, "max_keepalive": pool}) as client:
            auth = AsyncAuthenticator(client)
            await asyncio.gather(*(per_view(auth.using_credentials(k)) for k in keys))
    elif name == "separate-ekoclient":
        clients = [AsyncClient(base_url=url, api_key=k, ca_bundle=ca) for k in keys]
        await asyncio.gather(*(per_view(c) for c in clients))
        await asyncio.gather(*(c.aclose() for c in clients))
    else:
        async def raw(key: str) -> None:
            async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=ca)) as c:
                r = await c.post(f"{url}/api/auth/token", json={"api_key": key})
                auth = {"Authorization": f"Bearer {r.json()['token']}"}
                for _ in range(calls):
                    r = await c.post(f"{url}/api/find/{collection}", json={"limit": 10},
                                     headers=auth)
                    r.raise_for_status()
                    r.json()

        await asyncio.gather(*(raw(k) for k in keys))


def _child(args: argparse.Namespace) -> None:
    """Run one scenario and print a JSON line: wall time and peak RSS of this process."""
    spec = json.loads(sys.stdin.read())
    stop, peak = _peak_rss_sampler()
    base = psutil.Process().memory_info().rss
    started = time.perf_counter()
    asyncio.run(_scenario(args.child, spec["url"], spec["ca"], spec["keys"],
                          spec["collection"], spec["calls"], spec["pool"]))
    wall = time.perf_counter() - started
    stop.set()
    print(json.dumps({"wall": wall, "peak_rss": max(peak[0], base), "base_rss": base}))


def _metric(url: str, ca: str, token: str, name: str) -> float:
    text = httpx.get(f"{url}/api/metrics", headers={"Authorization": f"Bearer {token}"},
                     verify=ssl.create_default_context(cafile=ca)).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--pool", type=int, default=20,
                        help="max connections of the Authenticator's one pool")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    with reference_server() as server:
        assert server.admin_key and server.ca_bundle
        url, ca = server.url, str(server.ca_bundle)
        collection = "bench_multiplex"
        with Client(base_url=url, api_key=server.admin_key, ca_bundle=ca) as admin:
            admin.datastore.create_collection(collection)
            admin.datastore.batch_insert(collection, [{"n": i} for i in range(20)])
            keys = [admin.admin.create_key(f"tenant{i}", collection_permissions={
                collection: ["read"]}).api_key for i in range(args.keys)]
        token = httpx.post(f"{url}/api/auth/token", json={"api_key": server.admin_key},
                           verify=ssl.create_default_context(cafile=ca)).json()["token"]
        spec = json.dumps({"url": url, "ca": ca, "keys": keys, "collection": collection,
                           "calls": args.calls, "pool": args.pool})
        results: dict[str, dict[str, float]] = {}
        for name in ("authenticator", "separate-ekoclient", "separate-httpx"):
            before = _metric(url, ca, token, "ekodb_connections_opened_total")
            out = subprocess.run(
                [sys.executable, "-m", "bench.multiplex", "--child", name],
                input=spec, capture_output=True, text=True, check=False,
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            if out.returncode != 0:
                sys.exit(f"scenario {name} failed:\n{out.stderr[-3000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            # minus the one connection this metrics read itself opened
            result["connections"] = _metric(url, ca, token,
                                            "ekodb_connections_opened_total") - before - 1
            results[name] = result

    base = results["separate-ekoclient"]
    print(f"{args.keys} keys x {args.calls} calls each, all keys concurrently, TLS loopback")
    print(f"{'':20} {'connections':>11} {'wall s':>8} {'peak RSS MiB':>13} "
          f"{'wall ratio':>10} {'RSS ratio':>9}")
    for name, r in results.items():
        print(f"{name:20} {r['connections']:11.0f} {r['wall']:8.2f} "
              f"{r['peak_rss'] / 2**20:13.1f} {r['wall'] / base['wall']:10.3f} "
              f"{r['peak_rss'] / base['peak_rss']:9.3f}")
    print(f"goal: authenticator connections <= pool limit ({args.pool}), wall ratio <= 0.2")


if __name__ == "__main__":
    main()
