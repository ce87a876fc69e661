"""CPU per call of the SDK against the same request made with raw libraries (SPEC §6: <= 0.5x
of raw httpx, sync and async).

    python -m bench.overhead [--calls 1000] [--rounds 5] [--server fast|reference]

Every side makes ``POST /api/find/c`` (``{"limit": 10}``, a bearer token, JSON answer of ten
records) over one warm keep-alive TLS connection on loopback. The SDK side is
``client.datastore.find("c", limit=10)`` (token cache, retry bookkeeping, error mapping,
JSON parse). Baselines: raw ``httpx`` (what most users would otherwise write) and the raw
library under the SDK's transport (``urllib3`` sync, ``aiohttp`` async). The server runs in
another process (``bench.fastserver`` by default, so its cost does not blur the client's);
only this process's CPU time is counted. Rounds interleave the variants; median and range.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx
import urllib3

from ekoclient import AsyncClient, Client

from .common import fast_server, reference_server, spread

BODY = {"limit": 10}


@contextmanager
def _server(kind: str) -> Iterator[tuple[str, str, str]]:
    """(url, ca, api_key) of a fresh server with collection ``c``."""
    if kind == "fast":
        with fast_server() as fast:
            yield fast.url, fast.ca, "eko_bench_" + "k" * 40
        return
    with reference_server() as server:
        assert server.admin_key and server.ca_bundle
        with Client(base_url=server.url, api_key=server.admin_key,
                    ca_bundle=str(server.ca_bundle)) as admin:
            admin.datastore.create_collection("c")
            admin.datastore.batch_insert("c", [{"n": i} for i in range(10)])
        yield server.url, str(server.ca_bundle), server.admin_key


def _report(title: str, samples: dict[str, list[float]], baselines: list[str]) -> None:
    print(title)
    med = {k: statistics.median(v) for k, v in samples.items()}
    for name, values in samples.items():
        ratios = "  ".join(f"{med[name] / med[b]:6.3f}x of {b}" for b in baselines
                           if name not in baselines)
        print(f"  {name:14} {spread([v * 1e6 for v in values]):>24} us   {ratios}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--server", choices=["fast", "reference"], default="fast")
    args = parser.parse_args()

    with _server(args.server) as (url, ca, key):
        ctx = ssl.create_default_context(cafile=ca)
        find = f"{url}/api/find/c"
        payload = json.dumps(BODY).encode()
        token = httpx.post(f"{url}/api/auth/token", json={"api_key": key},
                           verify=ctx).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}

        raw = httpx.Client(verify=ctx)
        pool = urllib3.PoolManager(maxsize=1, ssl_context=ctx)
        sdk = Client(base_url=url, api_key=key, ca_bundle=ca)

        def raw_httpx() -> object:
            response = raw.post(find, json=BODY, headers=auth)
            response.raise_for_status()
            return response.json()

        def raw_urllib3() -> object:
            response = pool.request("POST", find, body=payload,
                                    headers={**auth, "Content-Type": "application/json"})
            assert response.status == 200
            return response.json()

        def ekoclient() -> object:
            return sdk.datastore.find("c", limit=10)

        def timed(fn: Callable[[], object]) -> float:
            start = time.process_time()
            for _ in range(args.calls):
                fn()
            return (time.process_time() - start) / args.calls

        sync_fns = {"raw httpx": raw_httpx, "raw urllib3": raw_urllib3, "ekoclient": ekoclient}
        for fn in sync_fns.values():
            fn()
        sync: dict[str, list[float]] = {k: [] for k in sync_fns}
        for _ in range(args.rounds):
            for name, fn in sync_fns.items():
                sync[name].append(timed(fn))
        raw.close()
        pool.clear()
        sdk.close()

        async def async_part() -> dict[str, list[float]]:
            araw = httpx.AsyncClient(verify=ctx)
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1, ssl=ctx))
            asdk = AsyncClient(base_url=url, api_key=key, ca_bundle=ca)

            async def raw_httpx_a() -> object:
                response = await araw.post(find, json=BODY, headers=auth)
                response.raise_for_status()
                return response.json()

            async def raw_aiohttp() -> object:
                async with session.post(find, json=BODY, headers=auth) as response:
                    response.raise_for_status()
                    return await response.json()

            async def ekoclient_a() -> object:
                return await asdk.datastore.find("c", limit=10)

            async def atimed(fn: Callable[[], Awaitable[Any]]) -> float:
                start = time.process_time()
                for _ in range(args.calls):
                    await fn()
                return (time.process_time() - start) / args.calls

            fns = {"raw httpx": raw_httpx_a, "raw aiohttp": raw_aiohttp,
                   "ekoclient": ekoclient_a}
            for fn in fns.values():
                await fn()
            samples: dict[str, list[float]] = {k: [] for k in fns}
            for _ in range(args.rounds):
                for name, fn in fns.items():
                    samples[name].append(await atimed(fn))
            await araw.aclose()
            await session.close()
            await asdk.aclose()
            return samples

        asyncs = asyncio.run(async_part())

    print(f"CPU per call, {args.calls} calls x {args.rounds} rounds, median (min-max), "
          f"POST /api/find/c over TLS keep-alive, {args.server} server")
    _report("sync  (goal: ekoclient <= 0.5x of raw httpx)", sync, ["raw httpx", "raw urllib3"])
    _report("async (goal: ekoclient <= 0.5x of raw httpx)", asyncs,
            ["raw httpx", "raw aiohttp"])


if __name__ == "__main__":
    main()
