"""Client transactions on the reference server, over raw HTTP (ekoDB's wire shapes).

Covers what the SDK tests cannot reach directly: the official client's shapes (query
parameter and body field), idempotent retries of staged writes, bad input, isolation
levels, expiry with purge, and staged writes encrypted at rest.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from typing import Any

import httpx
import pytest

from mock_server.pytest_plugin import ServerInfo
from mock_server.storage import DB_FILE
from tests.server.conftest import Api, assert_error, tls_context
from tests.server.test_datastore import scan

H = dict[str, str]


class Tx:
    """One collection and the transaction routes, as one key."""

    def __init__(self, api: Api, headers: H, collection: str) -> None:
        self.http, self.h, self.c = api.http, headers, collection

    def begin(self, **body: Any) -> str:
        r = self.http.post("/api/transactions", json=body, headers=self.h)
        assert r.status_code == 200, r.text
        return str(r.json()["transaction_id"])

    def insert(self, record: Any, tx: str | None = None, **headers: str) -> httpx.Response:
        return self.http.post(f"/api/insert/{self.c}", json=record,
                              params={"transaction_id": tx} if tx else None,
                              headers={**self.h, **headers})

    def get(self, rid: str, tx: str | None = None) -> httpx.Response:
        return self.http.get(f"/api/find/{self.c}/{rid}",
                             params={"transaction_id": tx} if tx else None, headers=self.h)

    def find(self, body: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        r = self.http.post(f"/api/find/{self.c}", json=body or {}, headers=self.h)
        assert r.status_code == 200, r.text
        out: list[dict[str, Any]] = r.json()
        return out

    def update(self, rid: str, changes: Any, tx: str | None = None) -> httpx.Response:
        return self.http.put(f"/api/update/{self.c}/{rid}", json=changes,
                             params={"transaction_id": tx} if tx else None, headers=self.h)

    def commit(self, tx: str, **headers: str) -> httpx.Response:
        return self.http.post(f"/api/transactions/{tx}/commit", headers={**self.h, **headers})


def _collection(api: Api, admin_h: H, schema: dict[str, Any] | None = None) -> str:
    name = f"txs_{uuid.uuid4().hex[:10]}"
    r = api.http.post(f"/api/collections/{name}", headers=admin_h, json=schema)
    assert r.status_code == 200, r.text
    return name


@pytest.fixture
def t(api: Api) -> Tx:
    admin_h = api.admin
    return Tx(api, admin_h, _collection(api, admin_h))


def test_the_official_clients_shapes_join_the_transaction(t: Tx) -> None:
    tx = t.begin(isolation_level="ReadCommitted")  # what ekoDB's client sends
    rid = t.insert({"n": 1}, tx).json()["id"]
    # find and batch bodies may carry transaction_id as a field (null = none)
    assert t.find({"transaction_id": tx}) == [{"id": rid, "n": 1}]
    assert t.find({"transaction_id": None}) == []
    r = t.http.post(f"/api/batch/insert/{t.c}", headers=t.h,
                    json={"inserts": [{"data": {"n": 2}}], "transaction_id": tx})
    assert r.status_code == 200 and len(r.json()["successful"]) == 1
    assert len(t.find({"transaction_id": tx})) == 2
    r = t.http.post(f"/api/find/{t.c}", params={"transaction_id": tx}, headers=t.h,
                    json={"transaction_id": "tx_" + "x" * 24})
    assert_error(r, 400, "validation_error")
    status = t.http.get(f"/api/transactions/{tx}", headers=t.h).json()
    assert status["status"] == "active" and status["operations"] == 2
    assert t.commit(tx).json()["status"] == "committed"
    assert sorted(r["n"] for r in t.find()) == [1, 2]


def test_bad_input_is_refused_and_stages_nothing(t: Tx) -> None:
    for body in ({"isolation_level": "Sometimes"}, {"isolation": "Serializable"}, [1]):
        assert_error(t.http.post("/api/transactions", json=body, headers=t.h), 400)
    assert_error(t.http.post("/api/transactions", content=b"{nope", headers={
        **t.h, "content-type": "application/json"}), 400, "invalid_json")
    assert_error(t.insert({"n": 1}, "tx_doesnotexist_0000000"), 404, "transaction_not_found")
    assert_error(t.insert({"n": 1}, "../../etc"), 404, "transaction_not_found")
    tx = t.begin()
    assert_error(t.insert({"id": "mine"}, tx), 400, "system_field")
    assert_error(t.insert([1], tx), 400)  # not an object
    assert_error(t.http.post(f"/api/transactions/{tx}/savepoints", json={"name": ""},
                             headers=t.h), 400)
    assert_error(t.http.post(f"/api/transactions/{tx}/savepoints/nope/rollback",
                             headers=t.h), 404, "savepoint_not_found")
    assert t.http.get(f"/api/transactions/{tx}", headers=t.h).json()["operations"] == 0
    assert t.commit(tx).json()["status"] == "committed"
    assert t.find() == []
    assert t.http.get("/api/health").status_code == 200


def test_retried_write_is_staged_once_and_retried_commit_answers_the_same(t: Tx) -> None:
    tx = t.begin()
    first = t.insert({"n": 1}, tx, **{"Idempotency-Key": "tx-insert-1"})
    again = t.insert({"n": 1}, tx, **{"Idempotency-Key": "tx-insert-1"})
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    one = t.commit(tx, **{"Idempotency-Key": "tx-commit-1"})
    two = t.commit(tx, **{"Idempotency-Key": "tx-commit-1"})
    three = t.commit(tx)  # another key, same transaction: still "committed"
    assert one.status_code == two.status_code == three.status_code == 200
    assert three.json()["status"] == "committed"
    assert t.find() == [first.json()]


def test_commit_is_all_or_nothing_on_a_unique_race(api: Api) -> None:
    admin_h = api.admin
    t = Tx(api, admin_h, _collection(api, admin_h, {"fields": {
        "email": {"field_type": "string", "unique": True}}}))
    tx = t.begin()
    assert t.insert({"email": "a@x"}, tx).status_code == 200
    assert t.insert({"email": "b@x"}, tx).status_code == 200
    assert_error(t.insert({"email": "a@x"}, tx), 400, "unique_violation")  # sees own writes
    assert t.insert({"email": "b@x"}).status_code == 200  # someone else takes one meanwhile
    err = assert_error(t.commit(tx), 409, "transaction_conflict")
    assert "email" in err["message"]
    assert [r["email"] for r in t.find()] == ["b@x"]
    assert t.http.get(f"/api/transactions/{tx}", headers=t.h).json()["status"] == "aborted"
    assert_error(t.commit(tx), 409, "transaction_not_active")


def test_repeatable_read_and_serializable(t: Tx) -> None:
    rid = t.insert({"n": 1}).json()["id"]
    rr = t.begin(isolation_level="RepeatableRead")
    assert t.get(rid, rr).json()["n"] == 1
    assert t.update(rid, {"n": 2}).status_code == 200  # outside
    assert_error(t.get(rid, rr), 409, "transaction_conflict")  # never another version
    rc = t.begin()  # ReadCommitted: a read alone never blocks the commit
    assert t.get(rid, rc).json()["n"] == 2
    t.update(rid, {"n": 3})
    assert t.commit(rc).status_code == 200
    rr2 = t.begin(isolation_level="Repeatable_Read")
    assert len(t.find({"transaction_id": rr2})) == 1
    t.insert({"n": 50})  # changes what that query saw
    assert_error(t.commit(rr2), 409, "transaction_conflict")
    t.http.request("DELETE", f"/api/batch/delete/{t.c}", headers=t.h, json={"filter": {
        "type": "Condition", "content": {"field": "n", "operator": "Eq", "value": 50}}})
    ser = t.begin(isolation_level="serializable")
    assert len(t.find({"transaction_id": ser})) == 1
    t.insert({"n": 99}, None)  # a phantom for the query above
    assert t.insert({"n": 4}, ser).status_code == 200
    err = assert_error(t.commit(ser), 409, "transaction_conflict")
    assert t.c in err["message"]
    assert sorted(r["n"] for r in t.find()) == [3, 99]


def test_staged_writes_are_encrypted_at_rest(t: Tx, ekodb_server: ServerInfo) -> None:
    marker = uuid.uuid4().hex
    tx = t.begin()
    rid = t.insert({"secret": f"S{marker}"}, tx).json()["id"]
    savepoint = f"SP{marker[:16]}"  # a savepoint name is the caller's data too
    r = t.http.post(f"/api/transactions/{tx}/savepoints", json={"name": savepoint},
                    headers=t.h)
    assert r.status_code == 200, r.text
    t.update(rid, {"more": f"M{marker}"}, tx)
    assert scan(ekodb_server.data_dir, [marker.encode(), rid.encode(), tx.encode(),
                                        savepoint.encode()]) == []
    status = t.http.get(f"/api/transactions/{tx}", headers=t.h).json()
    assert status["savepoints"] == [savepoint]  # still readable through the API
    t.commit(tx)


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/api/kv/set/{key}", {"value": 1}),
    ("GET", "/api/kv/get/{key}", None),
    ("DELETE", "/api/kv/delete/{key}", None),
    ("POST", "/api/kv/batch/set", {"keys": ["{key}"], "values": [1]}),
    ("POST", "/api/kv/batch/get", {"keys": ["{key}"]}),
    ("DELETE", "/api/kv/batch/delete", {"keys": ["{key}"]}),
    ("POST", "/api/kv/find", {"pattern": "{key}"}),
    ("POST", "/api/search/{c}", {"query": "zebra"}),
    ("GET", "/api/subscribe/{c}", None),
    ("POST", "/api/collections/{c}_new", None),
    ("DELETE", "/api/collections/{c}", None),
    ("GET", "/api/schemas/{c}", None),
    ("PUT", "/api/schemas/{c}", {"constraints": {"n": {"field_type": "integer"}}}),
])
def test_routes_outside_transactions_refuse_a_transaction_id(
        t: Tx, method: str, path: str, body: Any) -> None:
    """Never applied at once (or answered from committed data) while the caller believes
    it ran inside the transaction: 400, and nothing changes."""
    key = f"txkv.{uuid.uuid4().hex[:8]}"
    tx = t.begin()
    assert t.insert({"title": "zebra"}, tx).status_code == 200
    fill = path.format(c=t.c, key=key)
    content = None if body is None else json.dumps(body).replace("{key}", key)
    r = t.http.request(method, fill, params={"transaction_id": tx}, content=content,
                       headers={**t.h, "content-type": "application/json"})
    err = assert_error(r, 400, "validation_error")
    assert "transaction" in err["message"]
    t.http.post(f"/api/transactions/{tx}/rollback", headers=t.h)
    assert t.http.get(f"/api/kv/get/{key}", headers=t.h).status_code == 404
    assert t.http.get(f"/api/schemas/{t.c}", headers=t.h).json()["fields"] == {}
    assert t.http.post(f"/api/count/{t.c}", headers=t.h, json={}).status_code == 200
    assert t.http.post(f"/api/count/{t.c}_new", headers=t.h, json={}).status_code == 404


def test_abandoned_transactions_expire_and_are_purged(ekodb_server_factory: Any) -> None:
    info = ekodb_server_factory(transaction_ttl=0.5)
    api = Api(info)
    try:
        admin_h = api.admin
        t = Tx(api, admin_h, _collection(api, admin_h))
        tx = t.begin()
        assert t.insert({"n": 1}, tx).status_code == 200
        deadline = time.monotonic() + 10
        while t.http.get(f"/api/transactions/{tx}", headers=t.h).json()["status"] == "active":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert_error(t.insert({"n": 2}, tx), 404, "transaction_expired")
        assert_error(t.commit(tx), 404, "transaction_expired")
        t.begin()  # any begin sweeps: the abandoned writes leave the disk
        with sqlite3.connect(info.data_dir / DB_FILE) as db:
            assert db.execute("SELECT COUNT(*) FROM ds_tx_writes").fetchone() == (0,)
        assert t.find() == []
    finally:
        api.close()


def test_abandoned_transactions_are_purged_without_another_transaction_call(
        ekodb_server_factory: Any) -> None:
    """The server's sweeper expires them: no later begin or commit is needed."""
    info = ekodb_server_factory(transaction_ttl=0.3)
    api = Api(info)
    try:
        admin_h = api.admin
        t = Tx(api, admin_h, _collection(api, admin_h))
        tx = t.begin()
        assert t.insert({"secret": "x"}, tx).status_code == 200
        deadline = time.monotonic() + 10
        while True:
            with sqlite3.connect(info.data_dir / DB_FILE) as db:
                left = db.execute("SELECT COUNT(*) FROM ds_tx_writes").fetchone()[0]
            if left == 0:
                break
            assert time.monotonic() < deadline, "abandoned writes never purged"
            time.sleep(0.1)
        assert_error(t.commit(tx), 404, "transaction_expired")
    finally:
        api.close()


def test_commits_racing_on_one_record_one_wins(api: Api, t: Tx,
                                               ekodb_server: ServerInfo) -> None:
    rid = t.insert({"n": 0}).json()["id"]
    txs = [t.begin() for _ in range(6)]
    for tx in txs:
        assert t.update(rid, {"n": 1}, tx).status_code == 200
    codes: list[int] = []
    start = threading.Barrier(len(txs))

    def commit(tx: str) -> None:
        with httpx.Client(base_url=api.info.url, verify=tls_context(ekodb_server),
                          timeout=30) as http:
            start.wait(timeout=30)
            codes.append(http.post(f"/api/transactions/{tx}/commit", headers=t.h).status_code)

    threads = [threading.Thread(target=commit, args=(tx,)) for tx in txs]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert sorted(codes) == [200] + [409] * 5


def test_concurrent_unique_inserts_keep_one(api: Api, ekodb_server: ServerInfo) -> None:
    admin_h = api.admin
    name = _collection(api, admin_h, {"fields": {"sku": {"field_type": "string",
                                                         "unique": True, "required": True}}})
    codes: list[int] = []
    start = threading.Barrier(8)

    def insert() -> None:
        with httpx.Client(base_url=api.info.url, verify=tls_context(ekodb_server),
                          timeout=30) as http:
            start.wait(timeout=30)
            codes.append(http.post(f"/api/insert/{name}", json={"sku": "A-1"},
                                   headers=admin_h).status_code)

    threads = [threading.Thread(target=insert) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert sorted(codes) == [200] + [400] * 7
    found = api.http.post(f"/api/find/{name}", json={}, headers=admin_h).json()
    assert [r["sku"] for r in found] == ["A-1"]


def test_rights_are_checked_again_at_commit(api: Api, t: Tx) -> None:
    key = api.create_key("narrowed", collection_permissions={t.c: ["read", "write"]})
    mine = Tx(api, api.headers(key["api_key"]), t.c)
    tx = mine.begin()
    assert mine.insert({"n": 1}, tx).status_code == 200
    r = api.http.put(f"/api/auth/keys/{key['key_id']}", json={"read_only": True},
                     headers=api.admin)
    assert r.status_code == 200, r.text
    mine.h = api.headers(key["api_key"])  # the change revoked its tokens: take a new one
    assert_error(mine.commit(tx), 403)
    assert t.find() == []
    status = mine.http.get(f"/api/transactions/{tx}", headers=mine.h).json()["status"]
    assert status == "aborted"


def test_schema_routes_in_ekodbs_shapes(api: Api) -> None:
    admin_h = api.admin
    name = _collection(api, admin_h, {"fields": {"n": {"field_type": "integer"}},
                                      "version": 1, "bypass_ripple": True})
    schema = api.http.get(f"/api/schemas/{name}", headers=admin_h).json()
    meta = api.http.get(f"/api/collections/{name}", headers=admin_h).json()
    assert meta == {"collection": schema, "analytics": {}}
    r = api.http.put(f"/api/schemas/{name}", headers=admin_h,
                     json={"constraints": {"n": {"min": 0}}})
    assert r.status_code == 200 and r.json()["fields"]["n"]["min"] == 0
    assert_error(api.http.put(f"/api/schemas/{name}", headers=admin_h,
                              json={"fields": {}}), 400, "validation_error")
