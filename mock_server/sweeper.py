"""A background thread that runs periodic housekeeping (expiry, purges) for one AppState.

Each task is a plain callable run every ``interval`` seconds; a failing task is logged and
retried on the next round, never allowed to kill the thread. Several server processes on
one data dir each run their own sweeper: every task is idempotent (it deletes what is due),
so running it twice is harmless.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["Sweeper"]

log = logging.getLogger("mock_server.sweeper")


class Sweeper:
    """Runs ``tasks`` every ``interval`` seconds on a daemon thread until :meth:`stop`."""

    def __init__(self, tasks: list[Callable[[], object]], interval: float) -> None:
        self._tasks = list(tasks)
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None and self._interval > 0:
            self._thread = threading.Thread(target=self._run, name="ekodb-sweeper",
                                            daemon=True)
            self._thread.start()

    def run_once(self) -> None:
        """One round of every task (also what the thread does each interval)."""
        for task in self._tasks:
            if self._stop.is_set():
                return
            try:
                task()
            except Exception:
                log.exception("sweeper: a housekeeping task failed; retrying next round")

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.run_once()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
