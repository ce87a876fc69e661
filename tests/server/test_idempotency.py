"""Idempotency-Key: replay, conflict, fault after commit + retry, concurrent repeat; a
write's answer commits with it."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import httpx

from mock_server.pytest_plugin import ServerFactory
from tests.server.conftest import Api, assert_error, tls_context


def keys_labelled(api: Api, label: str) -> list[dict[str, Any]]:
    return [k for k in api.http.get("/api/auth/keys", headers=api.admin).json()
            if k["label"] == label]



def wait_until_held(api: Api, admin: dict[str, str], timeout: float = 10) -> None:
    """Until the fault rule holds a request (``GET /api/_faults`` reports it)."""
    deadline = time.monotonic() + timeout
    while api.http.get("/api/_faults", headers=admin).json()["holding"] == 0:
        assert time.monotonic() < deadline, "the fault never held the request"
        time.sleep(0.01)

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


def test_a_key_reused_with_another_body_is_refused_and_stores_nothing(api: Api) -> None:
    h = {**api.admin, "Idempotency-Key": str(uuid.uuid4())}
    first, other = "body-a-" + uuid.uuid4().hex[:8], "body-b-" + uuid.uuid4().hex[:8]
    assert api.http.post("/api/auth/register", json={"label": first}, headers=h
                         ).status_code == 200
    reused = api.http.post("/api/auth/register", json={"label": other}, headers=h)
    assert_error(reused, 409, "idempotency_key_reused")
    assert keys_labelled(api, other) == []
    same = api.http.post("/api/auth/register", json={"label": first}, headers=h)
    assert same.headers["idempotent-replayed"] == "true"
    assert len(keys_labelled(api, first)) == 1


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


def test_held_writes_do_not_starve_on_a_small_thread_pool(
        ekodb_server_factory: ServerFactory) -> None:
    """A write holds the write lock until its answer commits; everything it still needs
    after the write must not wait for a worker thread that other writers, queued on that
    lock, occupy. Two threads, sixteen concurrent writes: all done in seconds, not stuck
    until SQLite's 30 s busy timeout."""
    api = Api(ekodb_server_factory(worker_threads=2))
    try:
        admin = api.admin
        made = [api.create_key(f"starve-{i}") for i in range(16)]
        results: list[int] = []
        lock = threading.Lock()

        def delete(key_id: str) -> None:
            with httpx.Client(base_url=api.info.url, verify=tls_context(api.info),
                              timeout=60) as c:
                r = c.delete(f"/api/auth/keys/{key_id}",
                             headers={**admin, "Idempotency-Key": uuid.uuid4().hex})
            with lock:
                results.append(r.status_code)

        started = time.monotonic()
        threads = [threading.Thread(target=delete, args=(m["key_id"],)) for m in made]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [200] * 16
        assert time.monotonic() - started < 10
    finally:
        api.close()


def test_an_answer_is_sent_only_once_its_write_is_committed(api: Api) -> None:
    admin = api.admin
    label = "held-" + uuid.uuid4().hex[:8]
    rules = {"rules": [{"method": "POST", "path_prefix": "/api/auth/register",
                        "when": "hold_commit", "seconds": 1.0}]}
    assert api.http.post("/api/_faults", json=rules, headers=admin).status_code == 200
    answer: list[httpx.Response] = []
    try:
        def write() -> None:
            with httpx.Client(base_url=api.info.url, verify=tls_context(api.info)) as c:
                answer.append(c.post("/api/auth/register", json={"label": label},
                                     headers={**admin, "Idempotency-Key": uuid.uuid4().hex}))

        writer = threading.Thread(target=write)
        writer.start()
        wait_until_held(api, admin)
        # the write ran and is held: nobody sees it yet, and its caller has no answer
        assert keys_labelled(api, label) == []
        assert answer == []
        writer.join(10)
        assert [r.status_code for r in answer] == [200]
        assert len(keys_labelled(api, label)) == 1
    finally:
        api.http.delete("/api/_faults", headers=admin)


def test_an_answer_too_large_to_store_is_sent_and_its_write_kept(
        ekodb_server_factory: ServerFactory) -> None:
    """Answers over the cap (JSON body limit + 1 MiB) stream through after their writes
    commit; the key is then free again, so a retry runs anew instead of replaying."""
    api = Api(ekodb_server_factory(max_body_bytes=64 * 1024))  # cap: 1.06 MiB
    try:
        admin = api.admin
        blob = "x" * 60_000
        for i in range(24):
            assert api.http.post("/api/queue/big/send", json={"i": i, "pad": blob},
                                 headers=admin).status_code == 200
        h = {**admin, "Idempotency-Key": uuid.uuid4().hex}
        polled = api.http.post("/api/queue/big/poll?limit=24", headers=h)
        assert polled.status_code == 200 and len(polled.content) > 64 * 1024 + 1024 * 1024
        assert sorted(m["payload"]["i"] for m in polled.json()) == list(range(24))
        assert api.http.get("/api/queue/big/claimcount", headers=admin).json() == {"count": 24}
        again = api.http.post("/api/queue/big/poll?limit=24", headers=h)
        assert again.status_code == 200 and "idempotent-replayed" not in again.headers
        assert again.json() == []  # ran again: everything is claimed already
    finally:
        api.close()


def test_a_read_answer_too_large_to_store_leaves_the_database_writable(
        ekodb_server_factory: ServerFactory) -> None:
    """A POST read (find) with an Idempotency-Key wrote nothing: passing its big answer
    through must not open a transaction that nobody commits."""
    api = Api(ekodb_server_factory(max_body_bytes=64 * 1024))
    try:
        admin = api.admin
        assert api.http.post("/api/collections/wide", headers=admin).status_code == 200
        for i in range(24):
            assert api.http.post("/api/insert/wide", json={"i": i, "pad": "y" * 60_000},
                                 headers=admin).status_code == 200
        found = api.http.post("/api/find/wide", json={"limit": 100},
                              headers={**admin, "Idempotency-Key": uuid.uuid4().hex})
        assert found.status_code == 200 and len(found.json()) == 24
        started = time.monotonic()
        write = api.http.post("/api/insert/wide", json={"after": True}, headers=admin)
        assert write.status_code == 200
        assert time.monotonic() - started < 5  # not stuck behind a lock nobody releases
    finally:
        api.close()


def test_concurrent_keyed_writes_each_apply_once_while_they_contend_for_the_lock(
        api: Api) -> None:
    """Claims are taken on the event loop when the write lock is free and wait there for
    this server's own writes to commit: many keyed inserts at once, each sent twice at
    the same time, still store one record per key, and both copies get its answer."""
    coll = "contend_" + uuid.uuid4().hex[:8]
    assert api.http.post(f"/api/collections/{coll}", headers=api.admin).status_code == 200
    keys = [uuid.uuid4().hex for _ in range(12)]
    answers: dict[str, list[httpx.Response]] = {k: [] for k in keys}
    lock = threading.Lock()

    def insert(key: str) -> None:
        with httpx.Client(base_url=api.info.url, verify=tls_context(api.info),
                          timeout=60) as c:
            r = c.post(f"/api/insert/{coll}", json={"key": key},
                       headers={**api.admin, "Idempotency-Key": key})
        with lock:
            answers[key].append(r)

    threads = [threading.Thread(target=insert, args=(k,)) for k in keys + keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for key in keys:
        assert [r.status_code for r in answers[key]] == [200, 200]
        assert answers[key][0].json() == answers[key][1].json()
    found = api.http.post(f"/api/find/{coll}", json={"limit": 100}, headers=api.admin)
    assert found.status_code == 200
    assert sorted(r["key"] for r in found.json()) == sorted(keys)


def test_a_keyed_write_behind_a_held_commit_waits_for_it_and_then_applies(api: Api) -> None:
    """One keyed insert holds the write lock (its commit held for 1 s); another keyed insert
    meanwhile cannot claim its key yet. It waits for that commit, then runs: no error, no
    deadlock of the event loop on SQLite's lock, and both records are there."""
    admin = api.admin
    held, other = "held_" + uuid.uuid4().hex[:8], "next_" + uuid.uuid4().hex[:8]
    for name in (held, other):
        assert api.http.post(f"/api/collections/{name}", headers=admin).status_code == 200
    rules = {"rules": [{"method": "POST", "path_prefix": f"/api/insert/{held}",
                        "when": "hold_commit", "seconds": 1.0}]}
    assert api.http.post("/api/_faults", json=rules, headers=admin).status_code == 200
    first: list[httpx.Response] = []
    try:
        def write() -> None:
            with httpx.Client(base_url=api.info.url, verify=tls_context(api.info)) as c:
                first.append(c.post(f"/api/insert/{held}", json={"n": 1},
                                    headers={**admin, "Idempotency-Key": uuid.uuid4().hex}))

        writer = threading.Thread(target=write)
        writer.start()
        wait_until_held(api, admin)
        second = api.http.post(f"/api/insert/{other}", json={"n": 2},
                               headers={**admin, "Idempotency-Key": uuid.uuid4().hex})
        assert second.status_code == 200
        writer.join(10)
        assert [r.status_code for r in first] == [200]
        for name, n in ((held, 1), (other, 2)):
            found = api.http.post(f"/api/find/{name}", json={}, headers=admin).json()
            assert [r["n"] for r in found] == [n]
    finally:
        api.http.delete("/api/_faults", headers=admin)
