"""CPU of ``DataStore.find_page`` alone (no HTTP, no TLS): the find path's domain cost.

    python -m bench.find_domain [--rounds 3] [--sizes 200,10000]

Per size, one collection of records ``{"n": i, "team": "a"|"b"}`` (every second record
matches ``team == "a"``). Cases: the ``bench.server`` find (``team == "a"``, limit 10, no
sort), the next page by cursor, the same with a sort (must see every match), and a filter
matching nothing (a full scan: its cost over the size is the per-record cost of a scan).
Prints the median of ``--rounds`` rounds of process CPU per call.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mock_server.audit import AuditLog
from mock_server.changes import ChangeFeed
from mock_server.crypto import KeyRing
from mock_server.datastore import DataStore
from mock_server.permissions import Scope
from mock_server.storage import Storage


@dataclass(frozen=True)
class _Admin:
    key_id: str
    label: str
    scope: Scope


def _cond(field: str, op: str, value: Any) -> dict[str, Any]:
    return {"type": "Condition", "content": {"field": field, "operator": op, "value": value}}


def _cpu_per_call(call: Callable[[], object], budget: float = 0.3) -> float:
    """CPU seconds per call: repeat ``call`` for about ``budget`` s of process CPU."""
    call()
    n, t0 = 0, time.process_time()
    while True:
        call()
        n += 1
        spent = time.process_time() - t0
        if spent >= budget:
            return spent / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="200,10000")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    admin = _Admin("key_admin", "admin", Scope.from_raw({}, is_admin=True, read_only=False))
    with tempfile.TemporaryDirectory() as tmp:
        storage = Storage(Path(tmp))
        ring = KeyRing(os.urandom(32))
        ds = DataStore(storage, ring, AuditLog(storage, ring), ChangeFeed(), max_batch=1000)
        try:
            for size in (int(s) for s in args.sizes.split(",")):
                coll = f"c{size}"
                ds.create_collection(admin, coll)
                for start in range(0, size, 1000):
                    ds.batch_insert(admin, coll, {"inserts": [
                        {"data": {"n": i, "team": "ab"[i % 2]}}
                        for i in range(start, min(size, start + 1000))]})
                first = {"filter": _cond("team", "Eq", "a"), "limit": 10}
                cursor = ds.find_page(admin, coll, first).next_cursor
                cases: dict[str, dict[str, Any]] = {
                    "team==a limit 10": first,
                    "  next page (cursor)": {**first, "cursor": cursor},
                    "  sorted by n desc": {**first, "sort": [{"field": "n",
                                                               "ascending": False}]},
                    "no match (full scan)": {"filter": _cond("team", "Eq", "z")},
                }
                for label, body in cases.items():
                    def once(c: str = coll, b: dict[str, Any] = body) -> object:
                        return ds.find_page(admin, c, b)
                    runs = [_cpu_per_call(once) for _ in range(args.rounds)]
                    med = statistics.median(runs) * 1e6
                    extra = (f"  ({med / size:.2f} us/record)" if "scan" in label else "")
                    print(f"{size:>7} {label:<24} {med:>10.0f} us{extra}", flush=True)
        finally:
            storage.close()


if __name__ == "__main__":
    main()
