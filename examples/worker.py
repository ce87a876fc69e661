"""A queue worker: send some jobs, then consume them until Ctrl-C (or the queue stays empty).

    EKODB_URL=... EKODB_API_KEY=... EKODB_CA_BUNDLE=... python -m examples.worker [queue]

``consume`` polls, runs ``handle`` for up to four messages at a time, renews each claim while
its handler runs, acks on success and leaves a failed message's claim to expire so it is
delivered again. Ctrl-C sets the stop event: running handlers finish and are acked first.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

from ekoclient import Client
from ekoclient.models import Message

_failed_once: set[int] = set()


def handle(message: Message) -> None:
    job = message.payload
    if job.get("fail_once") and job["n"] not in _failed_once:
        _failed_once.add(job["n"])
        raise RuntimeError(f"job {job['n']} failed; it will come back")
    time.sleep(job.get("seconds", 0.1))
    print(f"done: job {job['n']}")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    queue = sys.argv[1] if len(sys.argv) > 1 else "examples-jobs"
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with Client.from_env() as client:
        client.queue.send_batch(queue, [{"n": n, "seconds": 0.2, "fail_once": n == 3}
                                        for n in range(8)])
        # stop by itself once every job is done (a real worker would just run until Ctrl-C)
        timer = threading.Timer(5, stop.set)
        timer.daemon = True
        timer.start()
        stats = client.queue.consume(queue, handle, claim_ttl=2, concurrency=4,
                                     stop_event=stop, poll_interval=0.2)
        print(f"acked {stats.acked}, failed {stats.failed}, left in queue "
              f"{client.queue.size(queue)}")


if __name__ == "__main__":
    main()
