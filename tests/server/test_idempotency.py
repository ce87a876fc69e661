"""Idempotency-Key: replay, conflict, fault after commit + retry, concurrent repeat."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import httpx

from tests.server.conftest import Api, assert_error, tls_context


def keys_labelled(api: Api, label: str) -> list[dict[str, Any]]:
    return [k for k in api.http.get("/api/auth/keys", headers=api.admin).json()
            if k["label"] == label]


def test_replay_returns_first_result_and_applies_once(api: Api) -> None:
    h = {**api.admin, "Idempotency-Key": str(uuid.uuid4())}
    label = "idem-" + uuid.uuid4().hex[:8]
    first = api.http.post("/api/auth/register", json={"label": label}, headers=h)
    second = api.http.post("/api/auth/register", json={"label": label}, headers=h)
    assert first.status_code == second.status_code == 200
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert second.headers["x-request-id"] != first.headers["x-request-id"]
    assert len(keys_labelled(api, label)) == 1


def test_different_fingerprint_is_409(api: Api) -> None:
    idem = str(uuid.uuid4())
    h = {**api.admin, "Idempotency-Key": idem}
    made = api.create_key("idem-target")
    r1 = api.http.post(f"/api/auth/keys/{made['key_id']}/rotate", headers=h)
    assert r1.status_code == 200
    other = api.create_key("idem-other")
    r2 = api.http.post(f"/api/auth/keys/{other['key_id']}/rotate", headers=h)
    assert_error(r2, 409, "idempotency_key_reused")


def test_keys_are_per_api_key(api: Api) -> None:
    """The same Idempotency-Key from two API keys are two different requests."""
    idem = str(uuid.uuid4())
    sub = api.create_key("sub-admin-idem", is_admin=True)
    label = "per-key-" + uuid.uuid4().hex[:8]
    for headers in (api.admin, api.headers(sub["api_key"])):
        r = api.http.post("/api/auth/register", json={"label": label},
                          headers={**headers, "Idempotency-Key": idem})
        assert r.status_code == 200 and "idempotent-replayed" not in r.headers
    assert len(keys_labelled(api, label)) == 2


def test_4xx_is_replayed(api: Api) -> None:
    h = {**api.admin, "Idempotency-Key": str(uuid.uuid4())}
    r1 = api.http.delete("/api/auth/keys/key_missing", headers=h)
    r2 = api.http.delete("/api/auth/keys/key_missing", headers=h)
    assert_error(r1, 404)
    assert_error(r2, 404)
    assert r2.headers["idempotent-replayed"] == "true"


def test_invalid_idempotency_key_header(api: Api) -> None:
    r = api.http.post("/api/auth/register", json={"label": "x"},
                      headers={**api.admin, "Idempotency-Key": "x" * 300})
    assert_error(r, 400, "bad_request")


def test_fault_after_commit_then_retry_stores_once(api: Api) -> None:
    admin = api.admin
    label = "fault-" + uuid.uuid4().hex[:8]
    rules = {"rules": [{"method": "POST", "path_prefix": "/api/auth/register",
                        "when": "after", "status": 503, "count": 1}]}
    assert api.http.post("/api/_faults", json=rules, headers=admin).status_code == 200
    try:
        h = {**admin, "Idempotency-Key": str(uuid.uuid4())}
        lost = api.http.post("/api/auth/register", json={"label": label}, headers=h)
        assert_error(lost, 503, "service_unavailable")
        assert lost.headers["retry-after"] == "1"
        assert len(keys_labelled(api, label)) == 1  # the write did commit
        retry = api.http.post("/api/auth/register", json={"label": label}, headers=h)
        assert retry.status_code == 200
        assert retry.headers["idempotent-replayed"] == "true"
        assert retry.json()["label"] == label
        assert len(keys_labelled(api, label)) == 1
    finally:
        api.http.delete("/api/_faults", headers=admin)


def test_fault_before_does_not_run_handler(api: Api) -> None:
    admin = api.admin
    label = "before-" + uuid.uuid4().hex[:8]
    rules = {"rules": [{"method": "POST", "path_prefix": "/api/auth/register",
                        "when": "before", "status": 503, "count": 2}]}
    api.http.post("/api/_faults", json=rules, headers=admin)
    try:
        h = {**admin, "Idempotency-Key": str(uuid.uuid4())}
        for _ in range(2):
            assert_error(api.http.post("/api/auth/register", json={"label": label}, headers=h),
                         503)
        assert keys_labelled(api, label) == []
        ok = api.http.post("/api/auth/register", json={"label": label}, headers=h)
        assert ok.status_code == 200 and "idempotent-replayed" not in ok.headers
        assert len(keys_labelled(api, label)) == 1
    finally:
        api.http.delete("/api/_faults", headers=admin)


def test_concurrent_repeats_apply_once(api: Api) -> None:
    admin = api.admin
    label = "conc-" + uuid.uuid4().hex[:8]
    h = {**admin, "Idempotency-Key": str(uuid.uuid4())}
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def call() -> None:
        with httpx.Client(base_url=api.info.url, verify=tls_context(api.info)) as c:
            r = c.post("/api/auth/register", json={"label": label}, headers=h)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * 8
    assert len({r.json()["key_id"] for r in results}) == 1
    assert sum(1 for r in results if "idempotent-replayed" not in r.headers) == 1
    assert len(keys_labelled(api, label)) == 1
