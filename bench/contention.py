"""Atomic increments under contention vs plain updates, measured in the same run.

    python -m bench.contention [--threads 8] [--ops 40] [--rounds 3]

Every round, ``--threads`` threads of one SDK client (one pool, TLS on loopback, the server
in its own process) each make ``--ops`` changes to the *same* record, three ways:

* ``increment`` — ``datastore.increment(c, id, "n")``: one request, applied in the record's
  write transaction; the final count must equal threads x ops (checked, every round);
* ``update (blind)`` — ``datastore.update(c, id, {"n": i})``: one request, the plain write's
  cost, but it cannot express "add one";
* ``get + update`` — the read-modify-write a client would do without actions: two requests,
  and concurrent writers overwrite each other (lost updates are counted and printed).

Rounds alternate the three; medians are shown.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ekoclient import Client

from .common import interleaved, reference_server


def _run(threads: int, ops: int, work: Callable[[int], None]) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads * ops)))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--ops", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    threads, ops = args.threads, args.ops
    total = threads * ops
    lost: list[int] = []

    with reference_server() as server:
        assert server.admin_key and server.ca_bundle
        with Client(base_url=server.url, api_key=server.admin_key,
                    ca_bundle=str(server.ca_bundle),
                    pool={"max_connections": threads, "max_keepalive": threads}) as client:
            ds = client.datastore
            coll = "bench_" + uuid.uuid4().hex[:8]
            ds.create_collection(coll)

            def fresh() -> str:
                return str(ds.insert(coll, {"n": 0})["id"])

            def increments() -> float:
                rid = fresh()
                seconds = _run(threads, ops, lambda _: ds.increment(coll, rid, "n") and None)
                assert ds.get(coll, rid)["n"] == total, "an increment was lost"
                return seconds

            def blind() -> float:
                rid = fresh()
                return _run(threads, ops, lambda i: ds.update(coll, rid, {"n": i}) and None)

            def read_modify_write() -> float:
                rid = fresh()

                def step(_: int) -> None:
                    current = ds.get(coll, rid)["n"]
                    ds.update(coll, rid, {"n": current + 1})

                seconds = _run(threads, ops, step)
                lost.append(total - int(ds.get(coll, rid)["n"]))
                return seconds

            measures = {"increment": increments, "update (blind)": blind,
                        "get + update": read_modify_write}
            for measure in measures.values():  # warm up pool, token, caches
                measure()
            lost.clear()
            seconds = interleaved(measures, args.rounds)
            ds.drop_collection(coll)

    print(f"{threads} threads x {ops} changes to one record ({total} per round), "
          f"{args.rounds} rounds (median), TLS on loopback, server in its own process")
    for name, value in seconds.items():
        print(f"  {name:16} {total / value:8.0f} changes/s   "
              f"{value * 1000 / total:6.2f} ms wall per change")
    print(f"  increment vs blind update: {seconds['update (blind)'] / seconds['increment']:.2f}x "
          "the throughput; every increment counted")
    print(f"  get + update lost {min(lost)}-{max(lost)} of {total} changes per round")


if __name__ == "__main__":
    main()
