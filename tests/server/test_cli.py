"""`python -m mock_server` as a real subprocess: printed lines, health over TLS, SIGTERM."""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx

from mock_server.testing import ServerProcess


def test_cli_prints_env_lines_and_shuts_down_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = ServerProcess(data, env={"PATH": "/usr/bin:/bin"})
    proc.start()
    try:
        assert proc.url.startswith("https://127.0.0.1:")
        assert proc.ca_bundle is not None and proc.ca_bundle.is_absolute()
        assert proc.ca_bundle.exists()
        key = proc.lines["EKODB_API_KEY"]
        assert key.startswith("eko_test_")
        ctx = ssl.create_default_context(cafile=str(proc.ca_bundle))
        with httpx.Client(base_url=proc.url, verify=ctx) as c:
            assert c.get("/api/health").json()["status"] == "ok"
            assert c.post("/api/auth/token", json={"api_key": key}).status_code == 200
        assert proc.kill(signal.SIGTERM) == 0
        assert "Traceback" not in proc.stderr_text()

        proc.start()  # second start on the same dir: same CA, no key printed, key still valid
        assert "EKODB_API_KEY" not in proc.lines
        with httpx.Client(base_url=proc.url, verify=ctx) as c:
            assert c.post("/api/auth/token", json={"api_key": key}).status_code == 200
        assert proc.kill(signal.SIGINT) == 0
    finally:
        proc.stop()


def test_cli_refuses_insecure_http_on_public_host(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mock_server", "--data-dir", str(tmp_path), "--host", "0.0.0.0",
         "--insecure-http"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert r.returncode == 2
    assert "loopback" in r.stderr
    assert r.stdout == ""


def test_cli_insecure_http_on_loopback(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "--insecure-http") as proc:
        assert proc.url.startswith("http://127.0.0.1:")
        assert "EKODB_CA_BUNDLE" not in proc.lines
        assert httpx.get(proc.url + "/api/health").status_code == 200
