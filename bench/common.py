"""Shared bench plumbing: a reference server in its own process, and fair timing."""

from __future__ import annotations

import statistics
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
