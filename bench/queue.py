"""Queue throughput: send_batch + poll + ack through the SDK vs raw httpx (SPEC §6: >= 1.0x).

    python -m bench.queue [--messages 2000] [--batch 100] [--rounds 5]

One round moves ``--messages`` messages through a fresh queue: ``send_batch`` of ``--batch``,
then ``poll(limit=batch)`` and one ``ack`` per poll, until the queue is empty. The server
runs in another process (TLS on loopback, one keep-alive connection per side). The raw side
makes the same HTTP requests as the SDK, ``Idempotency-Key`` on writes included (the server
stores each write's answer, so omitting it would compare different server work); the figure
without that header is printed for reference. Rounds alternate sides; medians are shown.
"""

from __future__ import annotations

import argparse
import json
import ssl
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from ekoclient import Client

from .common import reference_server, spread


def _messages(count: int) -> list[dict[str, Any]]:
    return [{"job": i, "body": "x" * 64} for i in range(count)]


def sdk_round(client: Client, total: int, batch: int) -> float:
    """Seconds to move ``total`` messages through a fresh queue with the SDK."""
    q = "bench-" + uuid.uuid4().hex[:10]
    start = time.perf_counter()
    for offset in range(0, total, batch):
        client.queue.send_batch(q, _messages(min(batch, total - offset)))
        got = 0
        while got < min(batch, total - offset):
            polled = client.queue.poll(q, claim_ttl=60, limit=batch)
            client.queue.ack(q, polled)
            got += len(polled)
    return time.perf_counter() - start


def raw_round(http: httpx.Client, url: str, token: str, total: int, batch: int,
              idempotency: bool) -> float:
    """Seconds to move ``total`` messages with hand-written httpx requests."""
    q = "bench-" + uuid.uuid4().hex[:10]
    base = f"{url}/api/queue/{q}"
    auth = {"Authorization": f"Bearer {token}"}

    def post(path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        headers = dict(auth)
        if idempotency:
            headers["Idempotency-Key"] = uuid.uuid4().hex
        content = None
        if body is not None:
            content = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        response = http.post(base + path, content=content, params=params, headers=headers)
        response.raise_for_status()
        return response.json()

    start = time.perf_counter()
    for offset in range(0, total, batch):
        post("/sendbatch", _messages(min(batch, total - offset)))
        got = 0
        while got < min(batch, total - offset):
            polled = post("/poll", params={"claim_ttl": 60, "limit": batch})
            post("/ack", {"ids": [m["id"] for m in polled]})
            got += len(polled)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    total, batch = args.messages, args.batch

    with reference_server() as server:
        assert server.admin_key and server.ca_bundle
        ctx = ssl.create_default_context(cafile=str(server.ca_bundle))
        url = server.url
        token = httpx.post(f"{url}/api/auth/token", json={"api_key": server.admin_key},
                           verify=ctx).json()["token"]
        sdk = Client(base_url=url, api_key=server.admin_key, ca_bundle=str(server.ca_bundle))
        raw = httpx.Client(verify=ctx)
        measures: dict[str, Callable[[], float]] = {
            "raw httpx": lambda: raw_round(raw, url, token, total, batch, True),
            "ekoclient": lambda: sdk_round(sdk, total, batch),
            "raw, no Idempotency-Key": lambda: raw_round(raw, url, token, total, batch, False),
        }
        for measure in measures.values():  # warm up connections, token, caches
            measure()
        samples: dict[str, list[float]] = {name: [] for name in measures}
        for _ in range(args.rounds):
            for name, measure in measures.items():
                samples[name].append(total / measure())
        seconds = {name: total / statistics.median(v) for name, v in samples.items()}
        sdk.close()
        raw.close()

    print(f"Queue throughput, {total} messages per round (send_batch of {batch}, poll, ack), "
          f"{args.rounds} rounds (median), TLS on loopback")
    rate = {name: total / s for name, s in seconds.items()}
    for name, value in rate.items():
        print(f"  {name:26} {value:10.0f} messages/s   (range {spread(samples[name])})")
    print(f"  ratio ekoclient / raw httpx (same requests): "
          f"{rate['ekoclient'] / rate['raw httpx']:.3f}x   goal >= 1.0")


if __name__ == "__main__":
    main()
