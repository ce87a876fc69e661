"""Two server processes on one data dir agree; a SIGKILLed server keeps acknowledged writes."""

from __future__ import annotations

import signal
import ssl
from pathlib import Path

import httpx

from mock_server.testing import ServerProcess


def client(proc: ServerProcess) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(proc.ca_bundle))
    return httpx.Client(base_url=proc.url, verify=ctx, timeout=30)


def test_two_processes_share_keys_tokens_and_revocation(tmp_path: Path) -> None:
    with ServerProcess(tmp_path) as a, ServerProcess(tmp_path) as b:
        assert a.admin_key is not None and b.admin_key is None  # one bootstrap only
        with client(a) as ca, client(b) as cb:
            admin = ca.post("/api/auth/token", json={"api_key": a.admin_key}).json()["token"]
            ha = {"Authorization": f"Bearer {admin}"}
            made = ca.post("/api/auth/register", json={"label": "shared"}, headers=ha).json()
            tok = cb.post("/api/auth/token", json={"api_key": made["api_key"]}).json()["token"]
            h = {"Authorization": f"Bearer {tok}"}
            assert ca.get("/api/auth/permissions", headers=h).status_code == 200
            assert cb.delete(f"/api/auth/keys/{made['key_id']}", headers=ha).status_code == 200
            assert ca.get("/api/auth/permissions", headers=h).status_code == 401


def test_acknowledged_key_survives_sigkill(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path).start()
    try:
        with client(proc) as c:
            tok = c.post("/api/auth/token", json={"api_key": proc.admin_key}).json()["token"]
            made = c.post("/api/auth/register", json={"label": "durable"},
                          headers={"Authorization": f"Bearer {tok}"}).json()
        assert proc.kill(signal.SIGKILL) == -signal.SIGKILL
        proc.start()
        with client(proc) as c:
            assert c.post("/api/auth/token", json={"api_key": made["api_key"]}).status_code == 200
            # a token from before the crash is still valid (secret derives from the master key)
            assert c.get("/api/auth/permissions",
                         headers={"Authorization": f"Bearer {tok}"}).status_code == 200
    finally:
        proc.stop()
