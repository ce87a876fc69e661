"""DataStore on the reference server: routes over TLS, field rules, encryption at rest, audit,
and the ChangeFeed hook the DataBus relies on (the last one also unit-level, no HTTP)."""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mock_server.audit import AuditLog
from mock_server.changes import Change, ChangeFeed
from mock_server.crypto import KeyRing, load_master_key
from mock_server.datastore import DataStore, merge_changes
from mock_server.errors import ApiError
from mock_server.permissions import Scope
from mock_server.pytest_plugin import ServerInfo
from mock_server.storage import DB_FILE, Storage
from tests.server.conftest import ADMIN, Api, Who, assert_error

H = dict[str, str]


def cond(field: str, op: str, value: Any) -> dict[str, Any]:
    return {"type": "Condition", "content": {"field": field, "operator": op, "value": value}}


def logical(op: str, *exprs: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Logical", "content": {"operator": op, "expressions": list(exprs)}}


class Store:
    """The DataStore routes for one collection, as one key."""

    def __init__(self, api: Api, headers: H, collection: str) -> None:
        self.http, self.h, self.c = api.http, headers, collection

    def insert(self, record: Any) -> httpx.Response:
        return self.http.post(f"/api/insert/{self.c}", json=record, headers=self.h)

    def get(self, rid: str, **params: str) -> httpx.Response:
        return self.http.get(f"/api/find/{self.c}/{rid}", params=params, headers=self.h)

    def find(self, body: Any = None) -> httpx.Response:
        return self.http.post(f"/api/find/{self.c}", json={} if body is None else body,
                              headers=self.h)

    def update(self, rid: str, changes: Any) -> httpx.Response:
        return self.http.put(f"/api/update/{self.c}/{rid}", json=changes, headers=self.h)

    def delete(self, rid: str) -> httpx.Response:
        return self.http.delete(f"/api/delete/{self.c}/{rid}", headers=self.h)

    def batch(self, op: str, body: Any) -> httpx.Response:
        method = {"insert": "POST", "update": "PUT", "delete": "DELETE"}[op]
        return self.http.request(method, f"/api/batch/{op}/{self.c}", json=body, headers=self.h)

    def all(self) -> list[dict[str, Any]]:
        r = self.find({"limit": 1000})
        assert r.status_code == 200, r.text
        records: list[dict[str, Any]] = r.json()
        return records


@pytest.fixture
def admin_h(api: Api) -> H:
    return api.admin


def fresh(api: Api, admin_h: H, prefix: str = "ds") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    r = api.http.post(f"/api/collections/{name}", headers=admin_h)
    assert r.status_code == 200 and r.json() == {"collection": name}, r.text
    return name


@pytest.fixture
def coll(api: Api, admin_h: H) -> Iterator[str]:
    name = fresh(api, admin_h)
    yield name
    api.http.delete(f"/api/collections/{name}", headers=admin_h)


@pytest.fixture
def store(api: Api, admin_h: H, coll: str) -> Store:
    return Store(api, admin_h, coll)


def key_headers(api: Api, perms: dict[str, Any], **extra: Any) -> H:
    made = api.create_key("ds-test", collection_permissions=perms, **extra)
    return api.headers(made["api_key"])


# ------------------------------------------------------------------------------ CRUD


def test_crud_round_trip_with_deep_merge_update(store: Store) -> None:
    r = store.insert({"name": "ann", "address": {"city": "Leeds", "street": "Row"},
                      "nick": "a", "tags": ["x"]})
    assert r.status_code == 200, r.text
    rec = r.json()
    rid = rec["id"]
    assert len(rid) >= 22 and rec["address"]["city"] == "Leeds"
    assert store.get(rid).json() == rec
    changed = store.update(rid, {"address": {"city": "York"}, "nick": None, "age": 3})
    assert changed.status_code == 200, changed.text
    expected = {**rec, "address": {"city": "York", "street": "Row"}, "nick": None, "age": 3}
    assert changed.json() == expected  # nested objects merge; null sets null
    assert store.update(rid, {"address": {}}).json()["address"] == {}  # {} replaces
    assert store.delete(rid).json() == {"deleted": rid}
    assert_error(store.get(rid), 404, "not_found")
    assert_error(store.delete(rid), 404, "not_found")
    assert_error(store.update(rid, {"a": 1}), 404, "not_found")


def test_merge_semantics_unit() -> None:
    base = {"a": {"b": 1, "c": 2}, "s": 5, "keep": True}
    assert merge_changes(base, {"a": {"b": 9}, "s": {"x": 1}}) == {
        "a": {"b": 9, "c": 2}, "s": {"x": 1}, "keep": True}
    assert base["a"] == {"b": 1, "c": 2}  # input untouched


def test_ids_are_random_and_unique(store: Store) -> None:
    r = store.batch("insert", {"inserts": [{"data": {"n": i}} for i in range(50)]})
    ids = r.json()["successful"]
    assert len(set(ids)) == 50
    assert all(len(i) >= 22 and i.replace("-", "").replace("_", "").isalnum() for i in ids)


def test_collection_lifecycle(api: Api, admin_h: H) -> None:
    name = fresh(api, admin_h)
    assert_error(api.http.post(f"/api/collections/{name}", headers=admin_h), 409,
                 "collection_exists")
    assert name in api.http.get("/api/collections", headers=admin_h).json()["collections"]
    assert api.http.delete(f"/api/collections/{name}", headers=admin_h).json() == {
        "dropped": name}
    assert_error(api.http.delete(f"/api/collections/{name}", headers=admin_h), 404,
                 "collection_not_found")
    err = assert_error(Store(api, admin_h, name).insert({"a": 1}), 404, "collection_not_found")
    assert "create" in err["message"]
    for bad in ("blob:x", "bad name", "x" * 200, "a*"):
        assert_error(api.http.post(f"/api/collections/{bad}", headers=admin_h), 400)


def test_dropping_a_collection_removes_its_records(api: Api, admin_h: H) -> None:
    name = fresh(api, admin_h)
    rid = Store(api, admin_h, name).insert({"v": 1}).json()["id"]
    api.http.delete(f"/api/collections/{name}", headers=admin_h)
    api.http.post(f"/api/collections/{name}", headers=admin_h)
    store = Store(api, admin_h, name)
    assert store.all() == []
    assert_error(store.get(rid), 404)


def test_collection_admin_level_needed_to_create_and_drop(api: Api, admin_h: H) -> None:
    base = f"own_{uuid.uuid4().hex[:8]}"
    h = key_headers(api, {f"{base}_*": ["admin"], "other": ["read", "write"]})
    assert api.http.post(f"/api/collections/{base}_1", headers=h).status_code == 200
    assert_error(api.http.post("/api/collections/other", headers=h), 403)
    assert_error(api.http.delete(f"/api/collections/{base}_1", headers=key_headers(
        api, {f"{base}_1": ["read", "write"]})), 403)
    assert api.http.delete(f"/api/collections/{base}_1", headers=h).status_code == 200


# ------------------------------------------------------------------------------ queries


def test_find_filters_sorts_and_pages(store: Store) -> None:
    store.batch("insert", {"inserts": [{"data": {"n": i, "team": "ab"[i % 2],
                                                 "tags": ["even" if i % 2 == 0 else "odd"],
                                                 "name": f"user{i:02d}"}}
                                       for i in range(30)]})
    body = {"filter": logical("And", cond("n", "Gte", 10), cond("team", "Eq", "a")),
            "sort": [{"field": "n", "ascending": False}], "limit": 5, "skip": 1}
    assert [r["n"] for r in store.find(body).json()] == [26, 24, 22, 20, 18]
    either = logical("Or", cond("n", "Lt", 2), cond("name", "EndsWith", "29"))
    assert sorted(r["n"] for r in store.find({"filter": either}).json()) == [0, 1, 29]
    not_even = {"filter": logical("Not", cond("tags", "Contains", "even")),
                "sort": [{"field": "n"}], "limit": 3}
    assert [r["n"] for r in store.find(not_even).json()] == [1, 3, 5]
    listed = {"filter": cond("n", "In", [3, 4, 99]), "select_fields": ["n"]}
    assert store.find(listed).json() == [{"id": r["id"], "n": r["n"]}
                                         for r in store.all() if r["n"] in (3, 4)]


def test_default_page_is_100_and_limit_is_capped(store: Store) -> None:
    store.batch("insert", {"inserts": [{"data": {"n": i}} for i in range(120)]})
    assert len(store.find().json()) == 100
    assert len(store.find({"limit": 1000}).json()) == 120
    assert [r["n"] for r in store.find({"skip": 115}).json()] == list(range(115, 120))
    for bad in ({"limit": 1001}, {"limit": 0}, {"limit": -1}, {"skip": -1},
                {"limit": "10"}, {"limit": 1.5}, {"skip": 10**12}):
        assert_error(store.find(bad), 400)


def test_select_and_exclude_query_options(store: Store) -> None:
    rid = store.insert({"a": 1, "b": {"x": 1, "y": 2}, "c": 3}).json()["id"]
    assert store.get(rid, select_fields="a,b.x").json() == {"id": rid, "a": 1, "b": {"x": 1}}
    assert store.get(rid, exclude_fields="b.y,c,id").json() == {"id": rid, "a": 1,
                                                                 "b": {"x": 1}}
    assert store.get(rid, select_fields="").json() == {"id": rid}
    assert store.find({"exclude_fields": ["b"]}).json() == [{"id": rid, "a": 1, "c": 3}]
    assert_error(store.get(rid, select_fields="a..b"), 400)
    assert_error(store.find({"select_fields": "a"}), 400)


# ------------------------------------------------------------------------------ field rules


@pytest.fixture
def staff(api: Api, admin_h: H) -> Iterator[tuple[Store, str, str]]:
    """A staff collection with one record, and the name of a second collection."""
    name = fresh(api, admin_h, "staff")
    other = fresh(api, admin_h, "other")
    store = Store(api, admin_h, name)
    rid = store.insert({"name": "Ada", "salary": 100,
                        "address": {"city": "Leeds", "street": "Row"}}).json()["id"]
    yield store, rid, other
    for c in (name, other):
        api.http.delete(f"/api/collections/{c}", headers=admin_h)


def test_reads_are_projected_on_every_path(api: Api, staff: tuple[Store, str, str]) -> None:
    admin_store, rid, _ = staff
    h = key_headers(api, {admin_store.c: {"read": True, "write": True,
                                          "exclude_fields": ["salary", "address.street"]}})
    me = Store(api, h, admin_store.c)
    seen = {"id": rid, "name": "Ada", "address": {"city": "Leeds"}}
    assert me.get(rid).json() == seen
    assert me.find().json() == [seen]
    # query options narrow further but can never widen
    assert me.get(rid, select_fields="salary,name").json() == {"id": rid, "name": "Ada"}
    assert me.find({"select_fields": ["address"]}).json() == [
        {"id": rid, "address": {"city": "Leeds"}}]
    # the record a write returns is projected too
    written = me.update(rid, {"name": "Ada L"})
    assert written.json() == {**seen, "name": "Ada L"}
    assert me.insert({"name": "Bo"}).json().keys() == {"id", "name"}


@pytest.mark.parametrize("field", ["salary", "address.street", "address"])
def test_filter_or_sort_on_a_hidden_field_is_forbidden(
        api: Api, staff: tuple[Store, str, str], field: str) -> None:
    admin_store, _, _ = staff
    h = key_headers(api, {admin_store.c: {"read": True, "write": True,
                                          "exclude_fields": ["salary", "address.street"]}})
    me = Store(api, h, admin_store.c)
    err = assert_error(me.find({"filter": cond(field, "Gt", 0)}), 403, "forbidden")
    assert "100" not in err["message"]
    nested = logical("Or", cond("name", "Eq", "x"), logical("Not", cond(field, "Eq", 1)))
    assert_error(me.find({"filter": nested}), 403, "forbidden")
    assert_error(me.find({"sort": [{"field": field}]}), 403, "forbidden")
    assert_error(me.batch("delete", {"filter": cond(field, "Gt", 0)}), 403, "forbidden")
    assert len(admin_store.all()) == 1


def test_select_fields_rule_hides_everything_else(api: Api,
                                                  staff: tuple[Store, str, str]) -> None:
    admin_store, rid, _ = staff
    h = key_headers(api, {admin_store.c: {"read": True, "select_fields": ["address.city"]}})
    me = Store(api, h, admin_store.c)
    assert me.get(rid).json() == {"id": rid, "address": {"city": "Leeds"}}
    assert me.find({"filter": cond("id", "Eq", rid)}).json() == [me.get(rid).json()]
    assert_error(me.find({"filter": cond("name", "Eq", "Ada")}), 403)


def test_non_writable_fields_are_refused_whole(api: Api, staff: tuple[Store, str, str]) -> None:
    admin_store, rid, _ = staff
    h = key_headers(api, {admin_store.c: {"read": True, "write": True,
                                          "writable_fields": ["name", "address.city"]}})
    me = Store(api, h, admin_store.c)
    before = admin_store.all()
    for bad in ({"name": "x", "salary": 1}, {"address": {"street": "y"}},
                {"address": {"city": "ok", "zip": "no"}}, {"address": "flat"}):
        err = assert_error(me.update(rid, bad), 403, "forbidden")
        assert "may not write" in err["message"]
        assert_error(me.insert(bad), 403, "forbidden")
    assert admin_store.all() == before
    assert me.update(rid, {"address": {"city": "York"}}).json()["address"] == {
        "city": "York", "street": "Row"}


def test_replacing_a_scalar_by_an_object_counts_as_writing_it(
        api: Api, staff: tuple[Store, str, str]) -> None:
    admin_store, _, _ = staff
    rid = admin_store.insert({"meta": 5}).json()["id"]
    h = key_headers(api, {admin_store.c: {"read": True, "write": True,
                                          "writable_fields": ["meta.tag"]}})
    assert_error(Store(api, h, admin_store.c).update(rid, {"meta": {"tag": "x"}}), 403)
    assert admin_store.get(rid).json()["meta"] == 5


def test_read_only_key_reads_but_never_writes(api: Api, staff: tuple[Store, str, str]) -> None:
    admin_store, rid, _ = staff
    h = key_headers(api, {admin_store.c: ["read", "write", "admin"]}, read_only=True)
    me = Store(api, h, admin_store.c)
    assert me.get(rid).status_code == 200
    for resp in (me.insert({"a": 1}), me.update(rid, {"name": "x"}), me.delete(rid),
                 me.batch("insert", {"inserts": [{"data": {"a": 1}}]}),
                 me.batch("update", {"updates": [{"id": rid, "data": {"a": 1}}]}),
                 me.batch("delete", {"deletes": [{"id": rid}]}),
                 api.http.delete(f"/api/collections/{admin_store.c}", headers=h)):
        assert_error(resp, 403, "forbidden")
    assert len(admin_store.all()) == 1


def test_pattern_permissions(api: Api, admin_h: H) -> None:
    run = uuid.uuid4().hex[:8]
    mine, theirs = f"team_a_{run}", f"team_b_{run}"
    for c in (mine, theirs):
        api.http.post(f"/api/collections/{c}", headers=admin_h)
    h = key_headers(api, {"team_a_*": ["read", "write"]})
    assert Store(api, h, mine).insert({"t": 1}).status_code == 200
    assert_error(Store(api, h, theirs).insert({"t": 1}), 403)
    assert_error(Store(api, h, theirs).find(), 403)
    listed = api.http.get("/api/collections", headers=h).json()["collections"]
    assert mine in listed and theirs not in listed
    assert all(c.startswith("team_a_") for c in listed)
    for c in (mine, theirs):
        api.http.delete(f"/api/collections/{c}", headers=admin_h)


def test_no_right_on_a_collection_is_403_even_when_it_does_not_exist(api: Api) -> None:
    h = key_headers(api, {"things": ["read"]})
    assert_error(Store(api, h, f"nope_{uuid.uuid4().hex[:6]}").find(), 403)
    assert_error(Store(api, h, "things").insert({"a": 1}), 403)


def test_write_only_key_gets_back_only_the_id(api: Api, store: Store) -> None:
    h = key_headers(api, {store.c: ["write"]})
    me = Store(api, h, store.c)
    rec = me.insert({"secret": 1}).json()
    assert rec == {"id": rec["id"]}
    assert_error(me.get(rec["id"]), 403)


# ------------------------------------------------------------------------------ ids


def test_foreign_tampered_and_odd_ids_are_not_found(api: Api,
                                                    staff: tuple[Store, str, str]) -> None:
    admin_store, rid, other = staff
    other_store = Store(api, admin_store.h, other)
    assert_error(other_store.get(rid), 404, "not_found")
    assert_error(other_store.update(rid, {"a": 1}), 404)
    assert_error(other_store.delete(rid), 404)
    tampered = rid[:-1] + ("A" if rid[-1] != "A" else "B")
    for bad in (tampered, rid + "x", "x" * 500, "..", "%00"):
        assert_error(admin_store.get(bad), 404)
    assert admin_store.get(rid).status_code == 200


# ------------------------------------------------------------------------------ at rest


def scan(data_dir: Path, needles: list[bytes]) -> list[tuple[str, bytes]]:
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert any(p.name.endswith("-wal") for p in files), "WAL file expected"
    return [(p.name, n) for p in files for n in needles if n in p.read_bytes()]


def test_scan_finds_planted_plaintext(tmp_path: Path) -> None:
    (tmp_path / "db-wal").write_bytes(b"..VALUEabc..")
    assert scan(tmp_path, [b"VALUEabc"]) == [("db-wal", b"VALUEabc")]


def test_data_dir_holds_no_plaintext_value_and_no_record_id(api: Api, store: Store) -> None:
    marker = uuid.uuid4().hex
    idem = {**store.h, "Idempotency-Key": f"idem-{marker}"}  # the SDK sends one on writes
    ids = [api.http.post(f"/api/insert/{store.c}", headers=idem, json={
        "email": f"ann-{marker}@example.com", "n": {"deep": f"D{marker}"}}).json()["id"]]
    ids += store.batch("insert", {"inserts": [{"data": {"v": f"B{marker}{i}"}}
                                              for i in range(3)]}).json()["successful"]
    store.update(ids[0], {"note": f"U{marker}"})
    store.delete(ids[1])
    needles = [marker.encode(), *(i.encode() for i in ids)]
    assert scan(api.info.data_dir, needles) == []


def _keyring(info: ServerInfo) -> KeyRing:
    return KeyRing(load_master_key(info.data_dir, {}))


def test_ciphertext_copied_between_rows_fails_closed(api: Api, admin_h: H) -> None:
    a, b = fresh(api, admin_h), fresh(api, admin_h)
    sa, sb = Store(api, admin_h, a), Store(api, admin_h, b)
    r1, r2 = (sa.insert({"owner": n}).json()["id"] for n in ("one", "two"))
    r3 = sb.insert({"owner": "three"}).json()["id"]
    ring = _keyring(api.info)

    def where(c: str, rid: str) -> tuple[bytes, bytes]:
        return (ring.blind_index("datastore", "collection", c),
                ring.blind_index("datastore-record", c, rid))

    db = sqlite3.connect(api.info.data_dir / DB_FILE, timeout=30)
    try:
        (data1,) = db.execute("SELECT data FROM ds_records WHERE cidx=? AND ridx=?",
                              where(a, r1)).fetchone()
        with db:
            db.execute("UPDATE ds_records SET data=? WHERE cidx=? AND ridx=?",
                       (data1, *where(a, r2)))
            db.execute("UPDATE ds_records SET data=? WHERE cidx=? AND ridx=?",
                       (data1, *where(b, r3)))
    finally:
        db.close()
    for resp in (sa.get(r2), sb.get(r3), sa.find(), sa.update(r2, {"x": 1})):
        err = assert_error(resp, 500, "integrity_error")
        assert "one" not in err["message"]
    assert sa.get(r1).json()["owner"] == "one"  # the untouched row still reads
    assert api.http.get("/api/health").status_code == 200


# ------------------------------------------------------------------------------ bad input


BAD_FINDS = [
    ({"filter": cond("n", "Gtx", 1)}, 400),
    ({"filter": cond("n", "In", 3)}, 400),
    ({"filter": cond("n", "Eq", {"obj": 1})}, 400),
    ({"filter": cond("n", "StartsWith", 1)}, 400),
    ({"filter": cond("a..b", "Eq", 1)}, 400),
    ({"filter": logical("Xor", cond("n", "Eq", 1))}, 400),
    ({"filter": logical("Not")}, 400),
    ({"filter": {"type": "Condition"}}, 400),
    ({"filter": "n > 1"}, 400),
    ({"sort": [{"field": "n", "ascending": "yes"}]}, 400),
    ({"sort": "n"}, 400),
    ({"limit": 5, "where": {}}, 400),
    ([], 400),
    ("find", 400),
]


@pytest.mark.parametrize(("body", "status"), BAD_FINDS)
def test_bad_find_bodies_are_refused(store: Store, body: Any, status: int) -> None:
    err = assert_error(store.find(body), status)
    assert err["message"]


def test_bad_write_bodies_are_refused_and_store_nothing(api: Api, store: Store) -> None:
    rid = store.insert({"keep": 1}).json()["id"]
    raw = {**store.h, "Content-Type": "application/json"}
    cases: list[tuple[httpx.Response, int, str | None]] = [
        (store.insert({"id": "mine", "a": 1}), 400, "system_field"),
        (store.insert({"_created": 1}), 400, "system_field"),
        (store.insert({"a": {"b.c": 1}}), 400, "validation_error"),
        (store.insert({"bad key": 1}), 400, "validation_error"),
        (store.insert([1, 2]), 400, "validation_error"),
        (store.insert("text"), 400, "validation_error"),
        (store.update(rid, {"id": "other"}), 400, "system_field"),
        (store.update(rid, [1]), 400, "validation_error"),
        (api.http.post(f"/api/insert/{store.c}", content=b"", headers=raw), 400, "invalid_json"),
        (api.http.post(f"/api/insert/{store.c}", content=b"{bad", headers=raw), 400, None),
        (api.http.post(f"/api/insert/{store.c}", content=b'{"a": NaN}', headers=raw), 400,
         None),
        (api.http.post(f"/api/insert/{store.c}", content=b"{}", headers={
            **store.h, "Content-Type": "text/plain"}), 415, None),
        (api.http.post(f"/api/insert/{store.c}",
                       content=b'{"a":' * 200 + b"1" + b"}" * 200, headers=raw), 400, None),
    ]
    for resp, status, code in cases:
        assert_error(resp, status, code)
    assert store.all() == [{"id": rid, "keep": 1}]


@pytest.mark.parametrize(("op", "body"), [
    ("insert", {"inserts": {"data": {}}}),
    ("insert", {"inserts": [{"record": {}}]}),
    ("insert", {"inserts": [{"data": 5}]}),
    ("insert", {"inserts": [], "extra": 1}),
    ("insert", [{"data": {}}]),
    ("update", {"updates": [{"id": 5, "data": {}}]}),
    ("update", {"updates": [{"id": "x"}]}),
    ("delete", {"deletes": [{"id": "x"}], "filter": None}),
    ("delete", {"filter": None}),
    ("delete", {"filter": cond("n", "Nope", 1)}),
    ("delete", {}),
])
def test_malformed_batches_are_refused_whole(store: Store, op: str, body: Any) -> None:
    store.insert({"n": 1})
    assert_error(store.batch(op, {**body} if isinstance(body, dict) else body), 400)
    assert len(store.all()) == 1


def test_oversize_batch_is_refused_and_stores_nothing(store: Store) -> None:
    for n in (1001, 10_000):
        err = assert_error(store.batch("insert", {"inserts": [{"data": {"n": i}}
                                                              for i in range(n)]}),
                           413, "batch_too_large")
        assert "1000" in err["message"]
    assert_error(store.batch("delete", {"deletes": [{"id": "x"}] * 1001}), 413)
    assert store.all() == []
    ok = store.batch("insert", {"inserts": [{"data": {"n": i}} for i in range(1000)]})
    assert len(ok.json()["successful"]) == 1000


# ------------------------------------------------------------------------------ batches


def test_batch_results_report_each_item(api: Api, store: Store) -> None:
    h = key_headers(api, {store.c: {"read": True, "write": True, "writable_fields": ["n"]}})
    me = Store(api, h, store.c)
    ins = me.batch("insert", {"inserts": [{"data": {"n": 1}}, {"data": {"secret": 1}},
                                          {"data": {"id": "x"}}, {"data": {"n": 2}}]})
    assert ins.status_code == 200, ins.text
    body = ins.json()
    assert set(body) == {"successful", "failed"} and len(body["successful"]) == 2
    assert [(f["index"], f["code"]) for f in body["failed"]] == [(1, "forbidden"),
                                                                  (2, "system_field")]
    assert all(set(f) == {"index", "code", "message"} for f in body["failed"])
    one, two = body["successful"]
    ghost = "x" * 22
    upd = me.batch("update", {"updates": [{"id": one, "data": {"n": 10}},
                                          {"id": ghost, "data": {"n": 3}},
                                          {"id": two, "data": {"secret": 3}}]}).json()
    assert upd["successful"] == [one]
    assert [(f["id"], f["code"]) for f in upd["failed"]] == [(ghost, "not_found"),
                                                            (two, "forbidden")]
    # a key that may write only "n" may not delete (SECURITY: deleting needs write on all)
    assert_error(me.batch("delete", {"deletes": [{"id": two}]}), 403, "forbidden")
    deleter = Store(api, key_headers(api, {store.c: ["read", "write"]}), store.c)
    dele = deleter.batch("delete", {"deletes": [{"id": two}, {"id": ghost}]}).json()
    assert dele == {"successful": [two], "failed": [
        {"id": ghost, "code": "not_found", "message": "record not found"}]}
    assert store.all() == [{"id": one, "n": 10}]


def test_batch_delete_by_filter(store: Store) -> None:
    ids = store.batch("insert", {"inserts": [{"data": {"u": i % 3}} for i in range(9)]}
                      ).json()["successful"]
    gone = store.batch("delete", {"filter": cond("u", "Eq", 0)}).json()
    assert gone == {"successful": ids[0::3], "failed": []}
    assert sorted(r["u"] for r in store.all()) == [1, 1, 1, 2, 2, 2]


# ------------------------------------------------------------------------------ audit


def test_every_write_is_audited_without_contents(api: Api, admin_h: H, store: Store) -> None:
    marker = uuid.uuid4().hex
    rid = store.insert({"email": f"{marker}@example.com"}).json()["id"]
    store.update(rid, {"email": f"new{marker}"})
    bid = store.batch("insert", {"inserts": [{"data": {"v": marker}}]}).json()["successful"][0]
    store.batch("update", {"updates": [{"id": bid, "data": {"v": marker + "2"}}]})
    store.batch("delete", {"deletes": [{"id": bid}]})
    store.delete(rid)
    resp = api.http.get("/api/audit", params={"limit": 50}, headers=admin_h)
    assert marker not in resp.text
    mine = [(r["operation"], r["target_id"]) for r in resp.json()["records"]
            if r["resource"] == store.c]
    assert mine[::-1][-6:] == [("record.insert", rid), ("record.update", rid),
                               ("record.batch_insert", bid), ("record.batch_update", bid),
                               ("record.batch_delete", bid), ("record.delete", rid)]
    rec = next(r for r in resp.json()["records"] if r["operation"] == "record.update")
    assert rec["key_id"] and rec["label"] and rec["time"] > 0
    assert rec["details"] == {"fields": ["email"]}


# ------------------------------------------------------------------------------ changes


def test_server_publishes_every_write_to_the_change_feed(api: Api, store: Store) -> None:
    seen: list[tuple[str, str, str, bool]] = []
    feed = api.info.server.state.changes  # type: ignore[union-attr]

    def in_tx(changes: Any, conn: sqlite3.Connection) -> None:
        seen.extend((c.operation, c.record_id, "tx", conn.in_transaction)
                    for c in changes if c.collection == store.c)

    feed.listen(in_transaction=in_tx)
    rid = store.insert({"a": 1}).json()["id"]
    store.update(rid, {"a": 2})
    [bid] = store.batch("insert", {"inserts": [{"data": {"b": 1}}]}).json()["successful"]
    store.batch("update", {"updates": [{"id": bid, "data": {"b": 2}}]})
    store.batch("delete", {"deletes": [{"id": bid}]})
    store.delete(rid)
    assert [(op, r) for op, r, _, _ in seen] == [
        ("insert", rid), ("update", rid), ("insert", bid), ("update", bid),
        ("delete", bid), ("delete", rid)]
    assert all(in_tx for *_, in_tx in seen)


@pytest.fixture
def domain(tmp_path: Path) -> Iterator[tuple[DataStore, ChangeFeed, Storage]]:
    storage = Storage(tmp_path)
    ring = KeyRing(os.urandom(32))
    feed = ChangeFeed()
    ds = DataStore(storage, ring, AuditLog(storage, ring), feed, max_batch=10)
    ds.create_collection(ADMIN, "c")
    yield ds, feed, storage
    storage.close()


def test_change_feed_unit(domain: tuple[DataStore, ChangeFeed, Storage]) -> None:
    ds, feed, _ = domain
    in_tx: list[Change] = []
    committed: list[list[Change]] = []
    feed.listen(in_transaction=lambda ch, conn: in_tx.extend(ch),
                committed=lambda ch: committed.append(list(ch)))
    rec = ds.insert(ADMIN, "c", {"a": {"b": 1}})
    ds.update(ADMIN, "c", rec["id"], {"a": {"c": 2}})
    res = ds.batch_insert(ADMIN, "c", {"inserts": [{"data": {"x": 1}}, {"data": {"_y": 1}}]})
    ds.delete(ADMIN, "c", rec["id"])
    assert [(c.operation, c.record) for c in in_tx] == [
        ("insert", rec), ("update", {"id": rec["id"], "a": {"b": 1, "c": 2}}),
        ("insert", {"id": res["successful"][0], "x": 1}), ("delete", None)]
    assert all(c.collection == "c" and c.key_id == "key_admin" and c.time > 0 for c in in_tx)
    assert [len(batch) for batch in committed] == [1, 1, 1, 1]


def test_a_failing_in_transaction_listener_rolls_the_write_back(
        domain: tuple[DataStore, ChangeFeed, Storage]) -> None:
    ds, feed, storage = domain
    committed: list[Any] = []

    def boom(changes: Any, conn: sqlite3.Connection) -> None:
        raise RuntimeError("bus down")

    feed.listen(in_transaction=boom, committed=committed.append)
    with pytest.raises(RuntimeError):
        ds.insert(ADMIN, "c", {"a": 1})
    assert committed == []
    assert storage.conn.execute("SELECT COUNT(*) FROM ds_records").fetchone() == (0,)
    assert storage.conn.execute(
        "SELECT COUNT(*) FROM audit_log WHERE operation = 'record.insert'").fetchone() == (0,)


def test_domain_refuses_without_http(domain: tuple[DataStore, ChangeFeed, Storage]) -> None:
    ds, _, _ = domain
    reader = Who("k2", "r", Scope.from_raw({"c": ["read"]}, is_admin=False, read_only=False))
    with pytest.raises(ApiError) as info:
        ds.insert(reader, "c", {"a": 1})
    assert info.value.status == 403
    with pytest.raises(ApiError) as info:
        ds.batch_insert(ADMIN, "c", {"inserts": [{"data": {}}] * 11})
    assert (info.value.status, info.value.code) == (413, "batch_too_large")
    with pytest.raises(ApiError) as info:
        ds.insert(ADMIN, "c", {"x": float("nan")})
    assert info.value.status == 400
    assert ds.find(ADMIN, "c", {}) == []


def test_get_answers_small_and_large_records_alike(api: Api, admin_h: H, coll: str) -> None:
    """Small records are read on the event loop, large ones in the threadpool: the same
    answer, projection and 404s either way."""
    s = Store(api, admin_h, coll)
    for size in (10, 200_000):  # the second is over the inline limit
        made = s.insert({"blob": "x" * size, "n": size})
        assert made.status_code == 200, made.text
        rid = made.json()["id"]
        got = s.get(rid)
        assert got.status_code == 200 and got.json()["blob"] == "x" * size
        assert s.get(rid, select_fields="n").json() == {"id": rid, "n": size}
    assert_error(s.get("no_such_record"), 404, "not_found")
    assert_error(Store(api, admin_h, "never_created_coll").get("x"), 404,
                 "collection_not_found")
