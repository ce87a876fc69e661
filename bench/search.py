"""Search cost on the reference server against a plain find on the same data, in one run.

    python -m bench.search [--sizes 500,2000,5000] [--calls 15] [--dims 32]

Per collection size: ``find`` with a filter (decrypts and filters every record: the baseline
any query pays), the first text search (builds the in-memory index: decrypts everything
once), warm text, fuzzy, vector (brute force, cosine) and hybrid searches, and a text search
right after one update (the index re-decrypts only the changed record). Medians of
interleaved rounds, wall clock from one client over TLS keep-alive, server in its own process.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import ssl
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from .common import reference_server

WORDS = [f"w{i:04d}" for i in range(3000)] + ["machine", "learning", "garden", "engine"]


def _record(rng: random.Random, dims: int) -> dict[str, Any]:
    return {"title": " ".join(rng.choices(WORDS, k=4)),
            "body": " ".join(rng.choices(WORDS, k=30)),
            "team": rng.choice("abcd"),
            "embedding": [round(rng.uniform(-1, 1), 4) for _ in range(dims)]}


def _median_ms(fn: Callable[[], object], calls: int) -> float:
    samples = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def _measure(http: httpx.Client, h: dict[str, str], post: Callable[[str, Any], Any],
             coll: str, size: int, args: argparse.Namespace, rng: random.Random
             ) -> dict[str, Any]:
    first_id = post(f"/api/find/{coll}", {"limit": 1})[0]["id"]
    find = {"filter": {"type": "Condition", "content": {
        "field": "team", "operator": "Eq", "value": "a"}}, "limit": 10}
    vec = [rng.uniform(-1, 1) for _ in range(args.dims)]
    bodies = {"text": {"query": "machine learning", "limit": 10},
              "fuzzy": {"query": "machin lerning", "fuzzy": True, "limit": 10},
              "vector": {"vector": vec, "limit": 10},
              "hybrid": {"query": "garden", "vector": vec, "limit": 10}}
    url = f"/api/search/{coll}"
    t = time.perf_counter()
    post(url, bodies["text"])
    row: dict[str, Any] = {
        "records": size,
        "first search (index build) ms": (time.perf_counter() - t) * 1000,
        "find (filter) ms": _median_ms(lambda: post(f"/api/find/{coll}", find), args.calls),
    }
    for name, body in bodies.items():
        row[f"{name} ms"] = _median_ms(functools.partial(post, url, body), args.calls)
    updated: list[float] = []
    for _ in range(args.calls):
        http.put(f"/api/update/{coll}/{first_id}",
                 json={"title": " ".join(rng.choices(WORDS, k=4))}, headers=h
                 ).raise_for_status()
        t = time.perf_counter()
        post(url, bodies["text"])
        updated.append((time.perf_counter() - t) * 1000)
    row["text after 1 update ms"] = statistics.median(updated)
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="500,2000,5000")
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--dims", type=int, default=32)
    args = parser.parse_args()
    rng = random.Random(7)
    rows: list[dict[str, Any]] = []
    with reference_server() as server:
        assert server.ca_bundle is not None and server.admin_key is not None
        ctx = ssl.create_default_context(cafile=str(server.ca_bundle))
        with httpx.Client(base_url=server.url, verify=ctx, timeout=120) as http:
            token = http.post("/api/auth/token", json={"api_key": server.admin_key}).json()
            h = {"Authorization": f"Bearer {token['token']}"}

            def post(path: str, body: Any) -> Any:
                r = http.post(path, json=body, headers=h)
                r.raise_for_status()
                return r.json()

            for size in (int(s) for s in args.sizes.split(",")):
                coll = f"bench_search_{uuid.uuid4().hex[:8]}"
                http.post(f"/api/collections/{coll}", headers=h).raise_for_status()
                for start in range(0, size, 1000):
                    post(f"/api/batch/insert/{coll}", {"inserts": [
                        {"data": _record(rng, args.dims)}
                        for _ in range(min(1000, size - start))]})
                rows.append(_measure(http, h, post, coll, size, args, rng))
                http.delete(f"/api/collections/{coll}", headers=h)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
