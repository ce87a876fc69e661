"""DataStore throughput of the reference server (raw httpx over TLS, one keep-alive connection).

    python -m bench.datastore [--records 2000] [--gets 500] [--finds 50]

Measures single inserts, batch inserts (1000 per call), get by id (one blind-index lookup)
and find with a filter (decrypts and filters the whole collection in Python: the reference
server's documented cost model). Wall-clock figures from one client, so they are latency-bound.
"""

from __future__ import annotations

import argparse
import json
import ssl
import time
import uuid
from typing import Any

import httpx

from .common import reference_server


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:8.0f}/s  ({seconds * 1000 / n:6.2f} ms each)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--gets", type=int, default=500)
    parser.add_argument("--finds", type=int, default=50)
    args = parser.parse_args()
    with reference_server() as server:
        assert server.ca_bundle is not None and server.admin_key is not None
        ctx = ssl.create_default_context(cafile=str(server.ca_bundle))
        with httpx.Client(base_url=server.url, verify=ctx, timeout=60) as http:
            token = http.post("/api/auth/token", json={"api_key": server.admin_key}).json()
            h = {"Authorization": f"Bearer {token['token']}"}
            coll = f"bench_{uuid.uuid4().hex[:8]}"
            http.post(f"/api/collections/{coll}", headers=h).raise_for_status()
            results: dict[str, Any] = {}

            singles = min(args.records, 500)
            t = time.perf_counter()
            ids = [http.post(f"/api/insert/{coll}", json={"n": i, "team": "ab"[i % 2]},
                             headers=h).json()["id"] for i in range(singles)]
            results["insert"] = _rate(singles, time.perf_counter() - t)

            rest = args.records - singles
            t = time.perf_counter()
            for start in range(0, rest, 1000):
                items = [{"data": {"n": i, "team": "ab"[i % 2]}}
                         for i in range(start, min(rest, start + 1000))]
                http.post(f"/api/batch/insert/{coll}", json={"inserts": items},
                          headers=h).raise_for_status()
            if rest:
                results["batch insert (records)"] = _rate(rest, time.perf_counter() - t)

            t = time.perf_counter()
            for i in range(args.gets):
                http.get(f"/api/find/{coll}/{ids[i % len(ids)]}", headers=h).raise_for_status()
            results["get by id"] = _rate(args.gets, time.perf_counter() - t)

            body = {"filter": {"type": "Condition", "content": {
                "field": "team", "operator": "Eq", "value": "a"}}, "limit": 10}
            t = time.perf_counter()
            for _ in range(args.finds):
                http.post(f"/api/find/{coll}", json=body, headers=h).raise_for_status()
            results[f"find over {args.records} records"] = _rate(
                args.finds, time.perf_counter() - t)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
