"""Shared bench plumbing: a reference server in its own process, and fair timing."""

from __future__ import annotations

import http.client
import json
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mock_server.testing import ServerProcess


@contextmanager
def reference_server(*args: str) -> Iterator[ServerProcess]:
    """A server subprocess, so its CPU never counts against the client being measured."""
    with tempfile.TemporaryDirectory(prefix="ekobench-") as tmp:
        server = ServerProcess(Path(tmp) / "data", *args).start()
        try:
            yield server
        finally:
            server.stop()


def cpu_per_call(fn: Callable[[], object], calls: int) -> float:
    """Process CPU seconds per call of ``fn`` (user + system of this process only)."""
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls


def interleaved(measures: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Median of ``rounds`` alternating runs of each measure, so drift hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            samples[name].append(measure())
    return {name: statistics.median(values) for name, values in samples.items()}


class FastServer:
    """``bench.fastserver`` in its own process: the client's cost without the server's."""

    def __init__(self, proc: subprocess.Popen[str], port: int, ca: str) -> None:
        self.proc, self.port, self.ca = proc, port, ca
        self.url = f"https://127.0.0.1:{port}"

    def stats(self, reset: bool = False) -> dict[str, int]:
        """Connections opened / open / peak open and requests seen by the server."""
        ctx = ssl.create_default_context(cafile=self.ca)
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx)
        try:
            conn.request("GET", "/stats/reset" if reset else "/stats")
            data: dict[str, int] = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        return data


@contextmanager
def fast_server() -> Iterator[FastServer]:
    with tempfile.TemporaryDirectory(prefix="ekofast-") as tmp:
        proc = subprocess.Popen([sys.executable, "-m", "bench.fastserver", "--tls-dir", tmp],
                                stdout=subprocess.PIPE, text=True,
                                cwd=str(Path(__file__).resolve().parent.parent))
        try:
            assert proc.stdout is not None
            port = int(proc.stdout.readline().split()[1])
            ca = proc.stdout.readline().split(None, 1)[1].strip()
            yield FastServer(proc, port, ca)
        finally:
            proc.terminate()
            proc.wait(10)


def spread(values: list[float]) -> str:
    """``median (min-max)`` for a report line."""
    return f"{statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g})"
