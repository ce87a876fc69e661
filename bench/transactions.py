"""Cost of a DataStore transaction: N inserts in one transaction vs N plain inserts.

    python -m bench.transactions [--records 100] [--rounds 3]

Both sides go through the SDK (TLS, one keep-alive connection, Idempotency-Keys on writes)
to a reference server in another process, measured in the same run with rounds
alternating (medians shown). The transaction side is begin + N staged inserts + commit; the
commit applies the N records in one SQLite transaction (one fsync) and emits their events.
A ``batch_insert`` of the same N records is printed for reference (one request, one fsync).
"""

from __future__ import annotations

import argparse
import time
import uuid

from ekoclient import Client

from .common import interleaved, reference_server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.records
    with reference_server() as server, Client(
            base_url=server.url, api_key=server.admin_key, ca_bundle=str(server.ca_bundle),
            pool={"max_connections": 1, "max_keepalive": 1}) as client:
        ds = client.datastore
        coll = f"bench_tx_{uuid.uuid4().hex[:8]}"
        ds.create_collection(coll)
        commit_times: list[float] = []

        def plain() -> float:
            start = time.perf_counter()
            for i in range(n):
                ds.insert(coll, {"i": i, "body": "x" * 64})
            return time.perf_counter() - start

        def in_transaction() -> float:
            start = time.perf_counter()
            with ds.transaction() as tx:
                for i in range(n):
                    tx.insert(coll, {"i": i, "body": "x" * 64})
                before_commit = time.perf_counter()
            commit_times.append(time.perf_counter() - before_commit)
            return time.perf_counter() - start

        def batch() -> float:
            start = time.perf_counter()
            ds.batch_insert(coll, [{"i": i, "body": "x" * 64} for i in range(n)])
            return time.perf_counter() - start

        medians = interleaved({"plain": plain, "transaction": in_transaction,
                               "batch": batch}, args.rounds)
        commit = sorted(commit_times)[len(commit_times) // 2]
    print(f"{n} inserts, median of {args.rounds} alternating rounds")
    for name in ("plain", "transaction", "batch"):
        s = medians[name]
        print(f"  {name:<12} {s * 1000:8.1f} ms  {n / s:8.0f} records/s  "
              f"({medians[name] / medians['plain']:.2f}x plain)")
    print(f"  commit alone {commit * 1000:8.1f} ms  ({commit * 1000 / n:.2f} ms per record)")


if __name__ == "__main__":
    main()
