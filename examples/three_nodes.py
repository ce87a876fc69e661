"""Three reference-server nodes on one data directory, one client spread over all three.

    python -m examples.three_nodes [--seconds 6] [--writers 1] [--kills 1]

Starts three ``python -m mock_server`` processes on one data dir (the first start makes the
CA and the admin key, the other two reuse them), runs a steady read/write workload through
one ``Client`` built with ``.hosts([...])``, SIGKILLs one node mid-load and restarts it, then
prints how many calls each node took and how many errors the caller saw (zero: the client
benches the dead node, fails over inside its retry policy, probes the node with
``GET /api/health`` and takes it back once it answers). ``--kills N`` kills and restarts
nodes N times in turn and ``--writers N`` runs N writer threads: a stress run that checks
every acknowledged write is stored exactly once. See docs/multi_node.md.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

from ekoclient import Client
from mock_server.testing import ServerProcess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="length of the workload")
    parser.add_argument("--writers", type=int, default=1, help="writer threads")
    parser.add_argument("--kills", type=int, default=1, help="SIGKILL + restart cycles")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ekodb-3nodes-") as tmp:
        data_dir = Path(tmp)
        first = ServerProcess(data_dir).start()  # creates the CA, master key and admin key
        nodes = [first, ServerProcess(data_dir).start(), ServerProcess(data_dir).start()]
        try:
            run(nodes, args.seconds, max(1, args.writers), max(1, args.kills))
        finally:
            for node in nodes:
                node.stop()


def run(nodes: list[ServerProcess], seconds: float, writers: int, kills: int) -> None:
    admin_key, ca = nodes[0].admin_key, str(nodes[0].ca_bundle)
    assert admin_key is not None
    for node in nodes:
        print(f"node {node.url}  pid {node.proc.pid if node.proc else '?'}")

    calls: Counter[str] = Counter()  # per node, real calls only (health probes apart)
    probes: Counter[str] = Counter()

    def count(request: httpx.Request) -> None:
        origin = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        (probes if request.url.path == "/api/health" else calls)[origin] += 1

    client = (Client.builder()
              .hosts([n.url for n in nodes])
              .api_key(admin_key)
              .ca_bundle(ca)
              .host_cooldown(0.2, maximum=2.0)
              .event_hooks({"request": [count]})
              .build())
    tag = uuid.uuid4().hex[:6]
    collection = f"three_nodes_{tag}"
    client.datastore.create_collection(collection)
    done = threading.Event()
    errors: list[Exception] = []
    writes: list[str] = []

    def workload(worker: int) -> None:
        i = 0
        while not done.is_set():
            try:
                label = f"demo-{tag}-{worker}-{i}"
                record = client.datastore.insert(collection, {"label": label})  # a write
                writes.append(label)
                client.datastore.get(collection, record["id"])  # a read, maybe on another node
            except Exception as exc:  # what the caller would see
                errors.append(exc)
            i += 1

    with client:
        workers = [threading.Thread(target=workload, args=(w,)) for w in range(writers)]
        for worker in workers:
            worker.start()
        step = seconds / (2 * kills + 1)
        for k in range(kills):
            victim = nodes[1 + k % (len(nodes) - 1)]  # node 0 stays up to read back from
            time.sleep(step)
            print(f"SIGKILL {victim.url}")
            victim.kill(signal.SIGKILL)
            time.sleep(step)
            print(f"restart {victim.url}")
            victim.start()
        time.sleep(step)
        done.set()
        for worker in workers:
            worker.join()

        stored = Counter(r["label"] for r in client.datastore.iter_find(collection))
        print("\ncalls per node (attempts, as the client sent them):")
        for node in nodes:
            print(f"  {node.url}  {calls[node.url]:5d} calls  {probes[node.url]:3d} probes")
        for status in client.host_status():
            print(f"  {status.url} healthy={status.healthy}")
        twice = sum(1 for n in stored.values() if n > 1)
        lost = sum(1 for label in writes if label not in stored)
        print(f"\nwrites acknowledged: {len(writes)}, stored: {sum(stored.values())}, "
              f"stored twice: {twice}, acknowledged but lost: {lost}")
        print(f"errors surfaced to the caller: {len(errors)}")
        for exc in errors[:5]:
            print(f"  {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
