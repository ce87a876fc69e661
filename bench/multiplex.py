"""N tenants' keys through one Authenticator vs N separate clients (SPEC §6).

    python -m bench.multiplex [--keys 200] [--calls 5] [--pool 20] [--rounds 3]
                              [--server fast|reference]
    python -m bench.multiplex --keys 10000 [--workers 50] [--pool 50] [--token-cache N]

Default mode: each of N keys makes one token exchange and ``--calls`` sequential
``datastore.find`` calls, all keys at once, TLS on loopback, against ``bench.fastserver``
(so the client is measured, not the server) or the reference server. Variants:

- ``authenticator``: one ``AsyncClient`` (pool ``--pool``), a view per key: the SDK;
- ``separate-httpx``: N raw ``httpx.AsyncClient`` objects (goal: authenticator wall <= 0.2x
  on the fast server, <= 0.8x on the reference server);
- ``raw-aiohttp``: the same requests on one raw aiohttp pool, the library under the SDK's
  async transport (goal: SDK client CPU per request <= 1.3x of it);
- ``shared-httpx``: one raw ``httpx.AsyncClient`` pool of ``--pool`` (what the SDK used before).

Many-keys mode (``--keys`` >= 1000): ``--workers`` tasks take keys from a queue, each key
makes one ``find`` (one exchange), then every key is used once more (a second pass, which
must exchange nothing while the keys fit the token cache). Printed: connections opened,
peak open, exchanges per pass, memory per key and client CPU per key, for the SDK's pool
and for httpx's pool injected with ``transport=`` (which is what opened 4x the pool limit).

Each variant runs in a fresh subprocess; rounds interleave variants; median (min-max).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil

from .common import fast_server, reference_server, spread

COLLECTION = "bench_multiplex"


def _peak_rss_sampler() -> tuple[threading.Event, list[int]]:
    stop, peak = threading.Event(), [0]
    proc = psutil.Process()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()
    return stop, peak


async def _scenario(name: str, spec: dict[str, Any]) -> int:
    """Run one variant; returns the number of HTTP requests it made."""
    import aiohttp
    import httpx

    from ekoclient import AsyncAuthenticator, AsyncClient

    url, ca, keys, calls, pool = (spec["url"], spec["ca"], spec["keys"], spec["calls"],
                                  spec["pool"])
    find = f"{url}/api/find/{COLLECTION}"
    ctx = ssl.create_default_context(cafile=ca)

    async def per_view(view: Any) -> None:
        for _ in range(calls):
            await view.datastore.find(COLLECTION, limit=10)

    if name == "authenticator":
        async with AsyncClient(base_url=url, ca_bundle=ca,
                               pool={"max_connections": pool, "max_keepalive": pool}) as client:
            auth = AsyncAuthenticator(client)
            await asyncio.gather(*(per_view(auth.using_credentials(k)) for k in keys))
    elif name in ("separate-httpx", "shared-httpx"):
        shared = httpx.AsyncClient(verify=ctx, limits=httpx.Limits(
            max_connections=pool, max_keepalive_connections=pool))

        async def raw(key: str) -> None:
            c = shared if name == "shared-httpx" else httpx.AsyncClient(verify=ctx)
            r = await c.post(f"{url}/api/auth/token", json={"api_key": key})
            h = {"Authorization": f"Bearer {r.json()['token']}"}
            for _ in range(calls):
                r = await c.post(find, json={"limit": 10}, headers=h)
                r.raise_for_status()
                r.json()
            if c is not shared:
                await c.aclose()

        await asyncio.gather(*(raw(k) for k in keys))
        await shared.aclose()
    elif name == "raw-aiohttp":
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=pool, ssl=ctx)) as session:
            async def raw_a(key: str) -> None:
                async with session.post(f"{url}/api/auth/token", json={"api_key": key}) as r:
                    h = {"Authorization": f"Bearer {(await r.json())['token']}"}
                for _ in range(calls):
                    async with session.post(find, json={"limit": 10}, headers=h) as r:
                        r.raise_for_status()
                        await r.json()

            await asyncio.gather(*(raw_a(k) for k in keys))
    else:
        raise SystemExit(f"unknown scenario {name}")
    return len(keys) * (calls + 1)


async def _many_keys(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """10,000-keys mode: two passes over every key with ``workers`` tasks."""
    import httpx

    from ekoclient import AsyncAuthenticator, AsyncClient

    url, ca, keys, pool, workers = (spec["url"], spec["ca"], spec["keys"], spec["pool"],
                                    spec["workers"])
    options: dict[str, Any] = {"token_cache_size": spec["token_cache"]}
    if name == "authenticator-httpcore":  # the pool ekoclient used before 0.3
        options["transport"] = httpx.AsyncHTTPTransport(
            verify=ssl.create_default_context(cafile=ca),
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool))
    else:
        options.update(ca_bundle=ca, pool={"max_connections": pool, "max_keepalive": pool})
    out: dict[str, Any] = {}
    async with AsyncClient(base_url=url, **options) as client:
        auth = AsyncAuthenticator(client)
        for phase in ("first", "second"):
            queue: asyncio.Queue[str] = asyncio.Queue()
            for key in keys:
                queue.put_nowait(key)

            async def worker(queue: asyncio.Queue[str] = queue) -> None:
                while not queue.empty():
                    key = queue.get_nowait()
                    await auth.using_credentials(key).datastore.find(COLLECTION, limit=10)

            gc.collect()
            rss0, cpu0, wall0 = psutil.Process().memory_info().rss, time.process_time(), \
                time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(workers)))
            gc.collect()
            out[phase] = {"cpu_per_key": (time.process_time() - cpu0) / len(keys),
                          "wall": time.perf_counter() - wall0,
                          "rss_per_key": (psutil.Process().memory_info().rss - rss0) / len(keys),
                          "cached": client.token_cache_size}
            print(json.dumps({"phase_done": phase}), flush=True)
            if spec.get("stats_port"):  # let the parent read the server's counters per pass
                sys.stdin.readline()
    return out


def _child(name: str) -> None:
    spec = json.loads(sys.stdin.readline())
    import aiohttp  # noqa: F401 - imports are not the cost being measured
    import httpx  # noqa: F401

    import ekoclient  # noqa: F401
    if spec.get("many"):
        result = asyncio.run(_many_keys(name, spec))
        print(json.dumps(result), flush=True)
        return
    stop, peak = _peak_rss_sampler()
    base = psutil.Process().memory_info().rss
    times, started = psutil.Process().cpu_times(), time.perf_counter()
    requests = asyncio.run(_scenario(name, spec))
    wall = time.perf_counter() - started
    after = psutil.Process().cpu_times()
    stop.set()
    user, system = after.user - times.user, after.system - times.system
    print(json.dumps({"wall": wall, "cpu_per_request": (user + system) / requests,
                      "user_per_request": user / requests,
                      "peak_rss": max(peak[0], base)}), flush=True)


def _run(name: str, spec: dict[str, Any], counters: Any) -> dict[str, Any]:
    before = counters()
    out = subprocess.run([sys.executable, "-m", "bench.multiplex", "--child", name],
                         input=json.dumps(spec) + "\n", capture_output=True, text=True,
                         check=False, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if out.returncode != 0:
        sys.exit(f"scenario {name} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    after = counters()
    result["opened"] = after["opened"] - before["opened"]
    result["peak"] = after.get("peak")
    return result


@contextmanager
def _target(kind: str, keys: int) -> Iterator[tuple[str, str, list[str], Any]]:
    """(url, ca, keys, counters) where counters() gives connections opened (and peak)."""
    if kind == "fast":
        with fast_server() as fast:
            fast.stats(reset=True)
            yield (fast.url, fast.ca, [f"eko_bench_{i:06d}_{'k' * 30}" for i in range(keys)],
                   _FastCounters(fast))
        return
    import httpx

    from ekoclient import Client
    with reference_server() as server:
        assert server.admin_key and server.ca_bundle
        url, ca = server.url, str(server.ca_bundle)
        with Client(base_url=url, api_key=server.admin_key, ca_bundle=ca) as admin:
            admin.datastore.create_collection(COLLECTION)
            admin.datastore.batch_insert(COLLECTION, [{"n": i} for i in range(20)])
            made = [admin.admin.create_key(f"tenant{i}", collection_permissions={
                COLLECTION: ["read"]}).api_key for i in range(keys)]
        ctx = ssl.create_default_context(cafile=ca)
        token = httpx.post(f"{url}/api/auth/token", json={"api_key": server.admin_key},
                           verify=ctx).json()["token"]

        reads = [0]

        def metric() -> dict[str, Any]:
            reads[0] += 1
            text = httpx.get(f"{url}/api/metrics", headers={"Authorization": f"Bearer {token}"},
                             verify=ctx).text
            opened = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                         if line.startswith("ekodb_connections_opened_total"))
            return {"opened": opened - reads[0]}  # minus the metrics reads' own connections
        yield url, ca, made, metric


class _FastCounters:
    def __init__(self, fast: Any) -> None:
        self.fast = fast
        self.opened = 0

    def __call__(self) -> dict[str, Any]:
        s = self.fast.stats()
        self.fast.stats(reset=True)  # peak restarts per variant
        self.opened += s["opened"]
        return {"opened": self.opened, "peak": s["peak"], "exchanges": s["exchanges"]}


def _default_mode(args: argparse.Namespace) -> None:
    names = ["authenticator", "raw-aiohttp", "separate-httpx", "shared-httpx"]
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    with _target(args.server, args.keys) as (url, ca, keys, counters):
        spec = {"url": url, "ca": ca, "keys": keys, "calls": args.calls, "pool": args.pool}
        for _ in range(args.rounds):
            for n in names:
                runs[n].append(_run(n, spec, counters))
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("wall", "cpu_per_request")}
           for n, rs in runs.items()}
    print(f"{args.keys} keys x (1 exchange + {args.calls} finds), all at once, TLS loopback, "
          f"{args.server} server, pool {args.pool}, {args.rounds} rounds: median (min-max)")
    print(f"{'variant':16} {'opened':>6} {'peak':>5} {'wall s':>20} {'client CPU us/req':>22} "
          f"{'peak RSS MiB':>12}")
    for n, rs in runs.items():
        peak = max((r["peak"] or 0) for r in rs) if args.server == "fast" else "-"
        print(f"{n:16} {max(r['opened'] for r in rs):6.0f} {peak!s:>5} "
              f"{spread([r['wall'] for r in rs]):>20} "
              f"{spread([r['cpu_per_request'] * 1e6 for r in rs]):>22} "
              f"{statistics.median(r['peak_rss'] for r in rs) / 2**20:12.1f}")
    wall = med["authenticator"]["wall"] / med["separate-httpx"]["wall"]
    cpu = med["authenticator"]["cpu_per_request"] / med["raw-aiohttp"]["cpu_per_request"]
    goal = 0.2 if args.server == "fast" else 0.8
    print(f"authenticator wall / separate-httpx wall: {wall:.3f}x (goal <= {goal})")
    print(f"authenticator CPU / raw-aiohttp CPU per request: {cpu:.3f}x (goal <= 1.3)")
    # kernel time is mostly loopback sends waking the server, which varies with the machine's
    # load more than with the client; user time is the client's own Python and C work
    users = {n: [r["user_per_request"] * 1e6 for r in rs] for n, rs in runs.items()}
    ratio = statistics.median(users["authenticator"]) / statistics.median(users["raw-aiohttp"])
    print(f"  user CPU us/req: authenticator {spread(users['authenticator'])}, raw-aiohttp "
          f"{spread(users['raw-aiohttp'])}: {ratio:.3f}x")
    print(f"authenticator wall / shared-httpx wall: "
          f"{med['authenticator']['wall'] / med['shared-httpx']['wall']:.3f}x")


def _many_mode(args: argparse.Namespace) -> None:
    # httpx's own pool for comparison (slow: ~3 min for 10,000 keys); not when only the
    # token cache is being looked at
    names = ["authenticator"] if args.token_cache else ["authenticator",
                                                          "authenticator-httpcore"]
    with fast_server() as fast:
        keys = [f"eko_bench_{i:06d}_{'k' * 30}" for i in range(args.keys)]
        spec = {"url": fast.url, "ca": fast.ca, "keys": keys, "pool": args.pool,
                "workers": args.workers, "token_cache": args.token_cache or 10_000,
                "many": True, "stats_port": fast.port}
        rows: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = []
        for name in names:
            fast.stats(reset=True)
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.multiplex", "--child", name],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            assert proc.stdin and proc.stdout
            proc.stdin.write(json.dumps(spec) + "\n")
            proc.stdin.flush()
            stats = {}
            for phase in ("first", "second"):
                proc.stdout.readline()  # phase_done
                stats[phase] = fast.stats()
                fast.stats(reset=True)
                proc.stdin.write("\n")
                proc.stdin.flush()
            result = json.loads(proc.stdout.readline())
            proc.wait(60)
            for phase in ("first", "second"):
                rows.append((name, phase, result[phase], stats[phase]))
    print(f"{args.keys} keys through one AsyncAuthenticator, {args.workers} workers, pool "
          f"{args.pool}, token cache {spec['token_cache']}, fast server; each key: one find "
          "per pass")
    print(f"{'variant':24} {'pass':6} {'opened':>6} {'peak':>5} {'exchanges':>9} "
          f"{'memory/key':>10} {'CPU/key':>9} {'wall s':>7}")
    for name, phase, r, s in rows:
        print(f"{name:24} {phase:6} {s['opened']:6d} {s['peak']:5d} {s['exchanges']:9d} "
              f"{r['rss_per_key']:9.0f}B {r['cpu_per_key'] * 1e6:7.0f}us {r['wall']:7.2f}")
    print(f"goal: opened and peak <= pool ({args.pool}); second pass exchanges 0 while keys "
          "<= token cache")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--pool", type=int, default=None,
                        help="max connections of the Authenticator's one pool (20; 50 for "
                             "the many-keys mode)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server", choices=["fast", "reference"], default="fast")
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--token-cache", type=int, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return
    if args.keys >= 1000:
        args.pool = args.pool or 50
        _many_mode(args)
    else:
        args.pool = args.pool or 20
        _default_mode(args)


if __name__ == "__main__":
    main()
