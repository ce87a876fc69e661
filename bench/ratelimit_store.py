"""Cost of one rate-limit decision: the SQLite store (one transaction per request, the old
server default) against the shared memory-mapped table the server now uses.

    python -m bench.ratelimit_store [--calls 20000] [--threads 4] [--dir PATH]

Both run ``RateLimiter.hit`` on 1,000 keys round robin in a data dir on disk (``--dir``,
default a temporary dir), first from one thread, then from ``--threads`` threads at once.
Prints microseconds per decision.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mock_server.ratelimit import RateLimiter, SharedTatStore, SqliteTatStore, TatStore


def per_call(limiter: RateLimiter, calls: int, threads: int) -> float:
    def work(offset: int) -> None:
        for i in range(calls // threads):
            limiter.hit(f"key_{(i + offset) % 1000}", 1_000_000)

    workers = [threading.Thread(target=work, args=(n * 7,)) for n in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        stores: dict[str, Callable[[], TatStore]] = {
            "sqlite (WAL, synchronous=NORMAL)": lambda: SqliteTatStore(Path(tmp) / "rl.db"),
            "shared mmap table + flock": lambda: SharedTatStore(Path(tmp) / "rl.shm"),
        }
        for name, make in stores.items():
            limiter = RateLimiter(60.0, store=make())
            per_call(limiter, 1000, 1)  # warm up
            one = per_call(limiter, args.calls, 1)
            many = per_call(limiter, args.calls, args.threads)
            limiter.close()
            print(f"{name:34s} {one:8.1f} us/decision (1 thread)  "
                  f"{many:8.1f} us/decision ({args.threads} threads)")


if __name__ == "__main__":
    main()
