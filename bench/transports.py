"""Raw HTTP clients side by side on the fast server: what the SDK's transport was chosen by.

    python -m bench.transports [--tenants 200] [--calls 5] [--pool 20] [--threads 32]
                               [--rounds 3] [--only NAME,...]

Async: ``--tenants`` tasks at once, each one ``POST /api/auth/token`` and ``--calls``
``POST /api/find/c`` over one shared pool of ``--pool`` connections. Sync: ``--threads``
threads sharing one client (pool ``--pool``), each making ``--calls`` x 10 finds. Every
variant runs in a fresh subprocess, rounds interleave variants; printed per variant:
wall and client CPU per request (median and range over rounds), connections the server saw
opened and the peak open at once (which must not exceed the pool), and the exit status.
Variants whose library is not installed are skipped (pyreqwest and httpx2 need Python >= 3.11).
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import fast_server, spread

ASYNC = ["httpx", "httpx+sniffio", "httpx-aiohttp", "ekoclient-aiohttp-transport", "aiohttp",
         "pyreqwest", "httpx2"]
SYNC = ["httpx-sync", "ekoclient-urllib3-transport", "urllib3-sync", "pyreqwest-sync",
        "httpx2-sync"]


def _ctx(ca: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca)


async def _async_variant(name: str, url: str, ca: str, tenants: int, calls: int,
                         pool: int) -> None:
    body = {"limit": 10}
    if name in ("httpx", "httpx+sniffio", "httpx-aiohttp", "ekoclient-aiohttp-transport",
                "httpx2"):
        if name == "httpx2":
            import httpx2 as hx
        else:
            import httpx as hx  # type: ignore[no-redef]
        limits = hx.Limits(max_connections=pool, max_keepalive_connections=pool)
        transport: Any = None
        if name == "httpx-aiohttp":
            from httpx_aiohttp import AiohttpTransport  # type: ignore[import-not-found]
            transport = AiohttpTransport(verify=_ctx(ca), limits=limits)
        elif name == "ekoclient-aiohttp-transport":
            from ekoclient._http import AiohttpTransport as EkoAiohttp
            transport = EkoAiohttp(verify=_ctx(ca), max_connections=pool, keepalive_expiry=5.0)
        async with hx.AsyncClient(verify=_ctx(ca), limits=limits, transport=transport) as c:
            async def one(i: int) -> None:
                r = await c.post(f"{url}/api/auth/token", json={"api_key": f"k{i}"})
                h = {"Authorization": "Bearer " + r.json()["token"]}
                for _ in range(calls):
                    r = await c.post(f"{url}/api/find/c", json=body, headers=h)
                    r.raise_for_status()
                    r.json()
            await asyncio.gather(*(one(i) for i in range(tenants)))
    elif name == "aiohttp":
        import aiohttp
        conn = aiohttp.TCPConnector(limit=pool, ssl=_ctx(ca))
        async with aiohttp.ClientSession(connector=conn) as s:
            async def one_a(i: int) -> None:
                async with s.post(f"{url}/api/auth/token", json={"api_key": f"k{i}"}) as r:
                    h = {"Authorization": "Bearer " + (await r.json())["token"]}
                for _ in range(calls):
                    async with s.post(f"{url}/api/find/c", json=body, headers=h) as r:
                        r.raise_for_status()
                        await r.json()
            await asyncio.gather(*(one_a(i) for i in range(tenants)))
    elif name == "pyreqwest":
        from pyreqwest.client import ClientBuilder  # type: ignore[import-not-found]
        client = (ClientBuilder().add_root_certificate_pem(Path(ca).read_bytes())
                  .max_connections(pool).error_for_status(True).build())
        async with client:
            async def one_p(i: int) -> None:
                r = await client.post(f"{url}/api/auth/token").body_json(
                    {"api_key": f"k{i}"}).build().send()
                h = {"Authorization": "Bearer " + (await r.json())["token"]}
                for _ in range(calls):
                    r = await client.post(f"{url}/api/find/c").headers(h).body_json(
                        body).build().send()
                    await r.json()
            await asyncio.gather(*(one_p(i) for i in range(tenants)))
    else:
        raise SystemExit(f"unknown variant {name}")


def _sync_variant(name: str, url: str, ca: str, threads: int, calls: int, pool: int) -> None:
    body = {"limit": 10}
    h = {"Authorization": "Bearer t"}
    call: Callable[[], Any]
    close: Callable[[], Any]
    if name in ("httpx-sync", "httpx2-sync", "ekoclient-urllib3-transport"):
        if name == "httpx2-sync":
            import httpx2 as hx
        else:
            import httpx as hx  # type: ignore[no-redef]
        transport: Any = None
        if name == "ekoclient-urllib3-transport":
            from ekoclient._http import Urllib3Transport
            transport = Urllib3Transport(verify=_ctx(ca), max_connections=pool)
        c = hx.Client(verify=_ctx(ca), limits=hx.Limits(max_connections=pool,
                                                        max_keepalive_connections=pool),
                      transport=transport)

        def call() -> Any:
            r = c.post(f"{url}/api/find/c", json=body, headers=h)
            r.raise_for_status()
            return r.json()
        close = c.close
    elif name == "urllib3-sync":
        import urllib3
        pm = urllib3.PoolManager(maxsize=pool, block=True, ssl_context=_ctx(ca))
        payload = json.dumps(body).encode()
        hh = {**h, "Content-Type": "application/json"}

        def call() -> Any:
            r = pm.request("POST", f"{url}/api/find/c", body=payload, headers=hh)
            assert r.status == 200
            return r.json()
        close = pm.clear
    elif name == "pyreqwest-sync":
        from pyreqwest.client import SyncClientBuilder  # type: ignore[import-not-found]
        sc = (SyncClientBuilder().add_root_certificate_pem(Path(ca).read_bytes())
              .max_connections(pool).error_for_status(True).build())

        def call() -> Any:
            return sc.post(f"{url}/api/find/c").headers(h).body_json(body).build().send().json()
        close = sc.close
    else:
        raise SystemExit(f"unknown variant {name}")

    def worker() -> None:
        for _ in range(calls * 10):
            call()

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    close()


_MODULES = {"httpx2": ["httpx2"], "httpx2-sync": ["httpx2"], "pyreqwest": ["pyreqwest.client"],
            "pyreqwest-sync": ["pyreqwest.client"], "aiohttp": ["aiohttp"],
            "urllib3-sync": ["urllib3"], "httpx-aiohttp": ["httpx", "httpx_aiohttp"]}


def _child(name: str, spec: dict[str, Any]) -> None:
    if name == "httpx":  # httpcore without sniffio, as a plain `pip install httpx` gets it
        sys.modules["sniffio"] = None  # type: ignore[assignment]
    import importlib
    for module in _MODULES.get(name, ["httpx", "ekoclient._http"]):
        importlib.import_module(module)  # imports are not the cost being measured
    cpu, wall = time.process_time(), time.perf_counter()
    if name in SYNC:
        _sync_variant(name, spec["url"], spec["ca"], spec["threads"], spec["calls"],
                      spec["pool"])
        requests = spec["threads"] * spec["calls"] * 10
    else:
        asyncio.run(_async_variant(name, spec["url"], spec["ca"], spec["tenants"],
                                   spec["calls"], spec["pool"]))
        requests = spec["tenants"] * (spec["calls"] + 1)
    print(json.dumps({"wall": time.perf_counter() - wall,
                      "cpu_per_request": (time.process_time() - cpu) / requests}), flush=True)


def run_variant(name: str, spec: dict[str, Any], server: Any) -> dict[str, Any]:
    """One variant in a fresh interpreter; adds the server's connection counts."""
    server.stats(reset=True)
    out = subprocess.run([sys.executable, "-m", "bench.transports", "--child", name],
                         input=json.dumps(spec), capture_output=True, text=True, check=False,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         timeout=300)
    stats = server.stats()
    lines = out.stdout.strip().splitlines()
    result: dict[str, Any] = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    result.update(rc=out.returncode, opened=stats["opened"], peak=stats["peak"],
                  err=out.stderr.strip().splitlines()[-1][:120] if out.returncode else "")
    return result


def _available(name: str) -> bool:
    mod = {"httpx-aiohttp": "httpx_aiohttp", "aiohttp": "aiohttp", "pyreqwest": "pyreqwest",
           "pyreqwest-sync": "pyreqwest", "httpx2": "httpx2", "httpx2-sync": "httpx2",
           "urllib3-sync": "urllib3", "ekoclient-aiohttp-transport": "aiohttp",
           "ekoclient-urllib3-transport": "urllib3"}.get(name)
    if mod is None:
        return True
    import importlib.util
    return importlib.util.find_spec(mod) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--pool", type=int, default=20)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, json.loads(sys.stdin.read()))
        return
    names = [n for n in ASYNC + SYNC if _available(n)]
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    with fast_server() as server:
        spec = {"url": server.url, "ca": server.ca, "tenants": args.tenants,
                "calls": args.calls, "pool": args.pool, "threads": args.threads}
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for _ in range(args.rounds):
            for n in names:
                runs[n].append(run_variant(n, spec, server))
    print(f"fast TLS server; async: {args.tenants} tasks x (1 token + {args.calls} finds); "
          f"sync: {args.threads} threads x {args.calls * 10} finds; pool {args.pool}; "
          f"{args.rounds} rounds, median (min-max)")
    print(f"{'variant':28} {'wall s':>20} {'CPU us/request':>22} {'opened':>7} {'peak':>5} "
          f"{'failed':>6}")
    for n, rs in runs.items():
        ok = [r for r in rs if r["rc"] == 0 and "wall" in r]
        fails = len(rs) - len(ok)
        if not ok:
            print(f"{n:28} all runs failed: {rs[-1]['err']}")
            continue
        print(f"{n:28} {spread([r['wall'] for r in ok]):>20} "
              f"{spread([r['cpu_per_request'] * 1e6 for r in ok]):>22} "
              f"{max(r['opened'] for r in rs):7d} {max(r['peak'] for r in rs):5d} "
              f"{fails:6d}" + (f"  ({rs[-1]['err'] or 'crash at exit'})" if fails else ""))


if __name__ == "__main__":
    main()
