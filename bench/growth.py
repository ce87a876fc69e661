"""How a selective find's cost grows with the data: indexed field vs unindexed, one run.

    python -m bench.growth [--sizes 1000,10000,100000] [--finds 30] [--scans 3]

One collection grows through the sizes (batch inserts of 1,000). Every record has ``i``
(declared ``"index": {"type": "hash"}``) and ``u`` (same value, no index), both unique, so
``where("i").eq(x)`` and ``where("u").eq(x)`` match the same single record: the first is a
blind-index lookup, the second scans and decrypts the whole collection. Raw httpx over TLS on
one keep-alive connection, server in its own process; medians of wall-clock time. A get by
id (one blind-index lookup, the request path's floor) is printed alongside.
"""

from __future__ import annotations

import argparse
import random
import ssl
import statistics
import time
import uuid

import httpx

from .common import reference_server


def _find(http: httpx.Client, h: dict[str, str], coll: str, field: str, value: int) -> float:
    body = {"filter": {"type": "Condition", "content": {
        "field": field, "operator": "Eq", "value": value}}}
    t = time.perf_counter()
    r = http.post(f"/api/find/{coll}", json=body, headers=h)
    took = time.perf_counter() - t
    r.raise_for_status()
    assert [rec["u"] for rec in r.json()] == [value], r.text
    return took


def _get(http: httpx.Client, h: dict[str, str], coll: str, rid: str) -> float:
    t = time.perf_counter()
    http.get(f"/api/find/{coll}/{rid}", headers=h).raise_for_status()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--finds", type=int, default=30, help="indexed finds per size")
    parser.add_argument("--scans", type=int, default=3, help="unindexed finds per size")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    rng = random.Random(17)
    with reference_server() as server:
        assert server.ca_bundle is not None and server.admin_key is not None
        ctx = ssl.create_default_context(cafile=str(server.ca_bundle))
        with httpx.Client(base_url=server.url, verify=ctx, timeout=600) as http:
            token = http.post("/api/auth/token", json={"api_key": server.admin_key}).json()
            h = {"Authorization": f"Bearer {token['token']}"}
            coll = f"growth_{uuid.uuid4().hex[:8]}"
            schema = {"fields": {"i": {"field_type": "Integer", "index": {"type": "hash"}}}}
            http.post(f"/api/collections/{coll}", json=schema, headers=h).raise_for_status()
            print(f"{'records':>8} | {'setup s':>7} | {'get by id ms':>12} | "
                  f"{'indexed find ms':>15} | {'unindexed find ms':>17} | "
                  f"{'unindexed us/record':>19}")
            have = 0
            for size in sizes:
                t = time.perf_counter()
                for start in range(have, size, 1000):
                    items = [{"data": {"i": n, "u": n, "pad": "x" * 40}}
                             for n in range(start, min(size, start + 1000))]
                    http.post(f"/api/batch/insert/{coll}", json={"inserts": items},
                              headers=h).raise_for_status()
                setup = time.perf_counter() - t
                have = size
                some = http.post(f"/api/find/{coll}", json={"limit": 1}, headers=h).json()
                for _ in range(5):  # warm the connection and the server's caches
                    _get(http, h, coll, some[0]["id"])
                get = statistics.median(_get(http, h, coll, some[0]["id"])
                                        for _ in range(args.finds))
                indexed = statistics.median(
                    _find(http, h, coll, "i", rng.randrange(size)) for _ in range(args.finds))
                scanned = statistics.median(
                    _find(http, h, coll, "u", rng.randrange(size)) for _ in range(args.scans))
                print(f"{size:>8} | {setup:>7.1f} | {get * 1000:>12.2f} | "
                      f"{indexed * 1000:>15.2f} | "
                      f"{scanned * 1000:>17.1f} | {scanned * 1e6 / size:>19.1f}", flush=True)


if __name__ == "__main__":
    main()
