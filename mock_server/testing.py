"""Helpers for tests that need the reference server as a separate process.

``ServerProcess`` runs ``python -m mock_server`` as a subprocess (so a test can SIGKILL it and
restart it on the same data dir), parses the printed ``EKODB_*`` lines and waits for health.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO

from mock_server.cli import READY_LINE


class ServerProcess:
    """A reference server subprocess: `start()`, `kill(sig)`, `restart()`, `stop()`."""

    def __init__(
        self,
        data_dir: Path,
        *extra_args: str,
        port: int = 0,
        env: dict[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.extra_args = list(extra_args)
        self.port = port
        self.env = env
        self.python = python
        self.proc: subprocess.Popen[str] | None = None
        self.url: str = ""
        self.ca_bundle: Path | None = None
        #: Admin key printed by the most recent start that printed one.
        self.admin_key: str | None = None
        self.lines: dict[str, str] = {}
        self._stderr: IO[str] | None = None

    def start(self, timeout: float = 30.0) -> ServerProcess:
        cmd = [self.python, "-m", "mock_server", "--data-dir", str(self.data_dir),
               "--port", str(self.port), *self.extra_args]
        env = dict(os.environ if self.env is None else self.env)
        # stderr goes to a file outside the data dir: a pipe nobody drains could fill up
        if self._stderr is not None:
            self._stderr.close()
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - outlives start()
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env
        )
        assert self.proc.stdout is not None
        self.lines = {}
        deadline = time.monotonic() + timeout
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait(timeout)
                raise RuntimeError(f"server exited early: {self.stderr_text()[-2000:]}")
            if line.strip() == READY_LINE:
                break
            name, sep, value = line.strip().partition("=")
            if sep:
                self.lines[name] = value
            if time.monotonic() > deadline:
                raise RuntimeError("server did not print its address in time")
        self.url = self.lines["EKODB_URL"]
        ca = self.lines.get("EKODB_CA_BUNDLE")
        self.ca_bundle = Path(ca) if ca else None
        self.port = int(self.url.rsplit(":", 1)[1])  # restarts reuse the same port
        self.wait_healthy(timeout)
        key = self.lines.get("EKODB_API_KEY")
        if key:
            self.admin_key = key
        return self

    def stderr_text(self) -> str:
        """What the server wrote to stderr so far (for failure messages)."""
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read()

    def wait_healthy(self, timeout: float = 30.0) -> None:
        ctx = ssl.create_default_context(cafile=str(self.ca_bundle)) if self.ca_bundle else None
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(  # noqa: S310 - our own loopback URL
                    self.url + "/api/health", context=ctx, timeout=2
                ) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server not healthy in time")
            time.sleep(0.05)

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 15.0) -> int:
        """Send a signal and wait for exit; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def restart(self, timeout: float = 30.0) -> ServerProcess:
        if self.proc is not None and self.proc.poll() is None:
            self.kill(signal.SIGTERM)
        return self.start(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.kill(signal.SIGTERM)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
