"""Two server processes on one data dir agree; a SIGKILLed server keeps acknowledged writes,
and a write it was running when killed is applied exactly once by a retry elsewhere."""

from __future__ import annotations

import signal
import ssl
import threading
import time
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


# ------------------------------------------------------------- exactly once under SIGKILL


def _labelled(c: httpx.Client, headers: dict[str, str], label: str) -> int:
    return [k["label"] for k in c.get("/api/auth/keys", headers=headers).json()].count(label)


def _kill_while_held(tmp_path: Path, when: str) -> tuple[httpx.Response, int, int]:
    """Register a key through node A with a fault holding it at `when`, SIGKILL A during the
    hold, retry the same request (same Idempotency-Key) on node B.

    Returns B's answer, the count of keys with the label seen from B before the retry, and
    after it.
    """
    label = f"held-{when}"
    with ServerProcess(tmp_path, "--fault-injection") as a, \
            ServerProcess(tmp_path, "--fault-injection") as b, client(a) as ca, client(b) as cb:
        token = ca.post("/api/auth/token", json={"api_key": a.admin_key}).json()["token"]
        admin = {"Authorization": f"Bearer {token}"}
        rule = {"method": "POST", "path_prefix": "/api/auth/register", "when": when,
                "seconds": 60}
        assert ca.post("/api/_faults", json={"rules": [rule]}, headers=admin).is_success
        write = {**admin, "Idempotency-Key": f"kill-{when}"}
        lost: list[BaseException] = []

        def first_attempt() -> None:
            try:
                ca.post("/api/auth/register", json={"label": label}, headers=write)
            except httpx.TransportError as exc:
                lost.append(exc)

        attempt = threading.Thread(target=first_attempt)
        attempt.start()
        deadline = time.monotonic() + 20
        while ca.get("/api/_faults", headers=admin).json()["holding"] == 0:
            assert time.monotonic() < deadline, "the fault never held the request"
            time.sleep(0.02)
        a.kill(signal.SIGKILL)
        attempt.join(10)
        assert lost, "the first attempt got no answer: its node died"
        before = _labelled(cb, admin, label)
        retry = cb.post("/api/auth/register", json={"label": label}, headers=write)
        after = _labelled(cb, admin, label)
        again = cb.post("/api/auth/register", json={"label": label}, headers=write)
        assert again.json() == retry.json()  # and from now on, the same answer
        return retry, before, after


def test_a_node_killed_before_its_write_commits_leaves_nothing_and_the_retry_applies_it(
        tmp_path: Path) -> None:
    retry, before, after = _kill_while_held(tmp_path, "hold_commit")
    assert before == 0  # the write died with its node
    assert retry.status_code == 200 and "idempotent-replayed" not in retry.headers
    assert after == 1


def test_a_node_killed_after_its_write_commits_answers_the_retry_from_the_stored_answer(
        tmp_path: Path) -> None:
    retry, before, after = _kill_while_held(tmp_path, "hold_answer")
    assert before == 1  # committed before the node died
    assert retry.status_code == 200 and retry.headers["idempotent-replayed"] == "true"
    assert after == 1  # not applied a second time


def test_a_key_narrowed_in_one_process_is_narrowed_in_the_other_at_once(tmp_path: Path) -> None:
    """Each process caches decoded keys; a change made through another process still bites
    on the very next request (the key's version is checked in SQLite every time)."""
    with ServerProcess(tmp_path) as a, ServerProcess(tmp_path) as b, \
            client(a) as ca, client(b) as cb:
        admin = ca.post("/api/auth/token", json={"api_key": a.admin_key}).json()["token"]
        ha = {"Authorization": f"Bearer {admin}"}
        for name in ("mp_open", "mp_closed"):
            assert ca.post(f"/api/collections/{name}", headers=ha).status_code == 200
        made = ca.post("/api/auth/register", json={
            "label": "narrowed", "collection_permissions": {
                "mp_open": ["read"], "mp_closed": ["read"]}}, headers=ha).json()

        def headers() -> dict[str, str]:
            tok = cb.post("/api/auth/token", json={"api_key": made["api_key"]}).json()
            return {"Authorization": f"Bearer {tok['token']}"}

        old = headers()
        for _ in range(3):  # A has decoded (and cached) the key by now
            assert ca.post("/api/find/mp_closed", json={}, headers=old).status_code == 200
        assert cb.put(f"/api/auth/keys/{made['key_id']}", json={
            "collection_permissions": {"mp_open": ["read"]}}, headers=ha).status_code == 200
        # the token of the old version is refused, a new one carries the narrowed scope
        assert ca.post("/api/find/mp_closed", json={}, headers=old).status_code == 401
        new = headers()
        assert ca.post("/api/find/mp_closed", json={}, headers=new).status_code == 403
        assert ca.post("/api/find/mp_open", json={}, headers=new).status_code == 200
