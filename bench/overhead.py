"""CPU per call of the SDK against the same request made with raw httpx (SPEC §6: at most 1.15x).

    python -m bench.overhead [--calls 2000] [--rounds 5]

Both sides call ``GET /api/auth/permissions`` on a reference server running in another
process, over TLS on loopback, with one warm keep-alive connection; the SDK side is
``client.admin.permissions()`` (token cache, retry bookkeeping, error mapping, pydantic
parse), the raw side is ``httpx`` with a bearer header and ``response.json()``.
Only this process's CPU time is counted, so the server's work does not blur the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import time

import httpx

from ekoclient import AsyncClient, Client

from .common import interleaved, reference_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with reference_server() as server:
        assert server.admin_key and server.ca_bundle
        ca = str(server.ca_bundle)
        url = server.url
        ctx = ssl.create_default_context(cafile=ca)
        token = httpx.post(f"{url}/api/auth/token", json={"api_key": server.admin_key},
                           verify=ctx).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}

        raw = httpx.Client(verify=ctx)
        sdk = Client(base_url=url, api_key=server.admin_key, ca_bundle=ca)

        def raw_call() -> object:
            response = raw.get(f"{url}/api/auth/permissions", headers=auth)
            response.raise_for_status()
            return response.json()

        raw_call()
        sdk.admin.permissions()

        def timed(fn: object) -> float:
            start = time.process_time()
            for _ in range(args.calls):
                fn()  # type: ignore[operator]
            return (time.process_time() - start) / args.calls

        sync = interleaved({"raw httpx": lambda: timed(raw_call),
                            "ekoclient": lambda: timed(sdk.admin.permissions)}, args.rounds)
        raw.close()
        sdk.close()

        async def async_part() -> dict[str, float]:
            araw = httpx.AsyncClient(verify=ctx)
            asdk = AsyncClient(base_url=url, api_key=server.admin_key, ca_bundle=ca)

            async def araw_call() -> object:
                response = await araw.get(f"{url}/api/auth/permissions", headers=auth)
                response.raise_for_status()
                return response.json()

            async def atimed(fn: object) -> float:
                start = time.process_time()
                for _ in range(args.calls):
                    await fn()  # type: ignore[operator]
                return (time.process_time() - start) / args.calls

            await araw_call()
            await asdk.admin.permissions()
            samples: dict[str, list[float]] = {"raw httpx": [], "ekoclient": []}
            for _ in range(args.rounds):
                samples["raw httpx"].append(await atimed(araw_call))
                samples["ekoclient"].append(await atimed(asdk.admin.permissions))
            await araw.aclose()
            await asdk.aclose()
            return {k: sorted(v)[len(v) // 2] for k, v in samples.items()}

        asyncs = asyncio.run(async_part())

    print(f"CPU per call, {args.calls} calls x {args.rounds} rounds (median), "
          "GET /api/auth/permissions over TLS")
    print(f"{'':8} {'raw httpx':>12} {'ekoclient':>12} {'ratio':>7}   goal <= 1.15")
    for name, res in (("sync", sync), ("async", asyncs)):
        ratio = res["ekoclient"] / res["raw httpx"]
        print(f"{name:8} {res['raw httpx'] * 1e6:10.1f}us {res['ekoclient'] * 1e6:10.1f}us "
              f"{ratio:7.3f}x")


if __name__ == "__main__":
    main()
