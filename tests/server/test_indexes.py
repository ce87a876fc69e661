"""Declared (blind) equality indexes: same answers as the scan, kept on every write path,
nothing readable on disk. Domain-level (no HTTP) where many cases run, over TLS end to end."""

from __future__ import annotations

import itertools
import os
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mock_server.audit import AuditLog
from mock_server.changes import ChangeFeed
from mock_server.crypto import KeyRing
from mock_server.datastore import DataStore
from mock_server.errors import ApiError
from mock_server.indexes import canonical
from mock_server.storage import DB_FILE, Storage
from mock_server.transactions import Transactions
from mock_server.trash import RecordTtl, Trash
from tests.server.conftest import ADMIN, Api, assert_error
from tests.server.test_encryption_at_rest import scan

INDEXED = {"fields": {"v": {"field_type": "Any", "index": {"type": "hash"}},
                      "w": {"field_type": "Any", "index": {"type": "btree"}}}}


def cond(field: str, op: str, value: Any) -> dict[str, Any]:
    return {"type": "Condition", "content": {"field": field, "operator": op, "value": value}}


def logical(op: str, *exprs: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Logical", "content": {"operator": op, "expressions": list(exprs)}}


@dataclass
class Domain:
    ds: DataStore
    storage: Storage
    clock: list[float]

    def ids(self, collection: str, flt: dict[str, Any] | None) -> list[str]:
        return [r["id"] for r in self.ds.find(ADMIN, collection,
                                              {"filter": flt, "limit": 1000})]

    def index_rows(self) -> int:
        (n,) = self.storage.conn.execute("SELECT count(*) FROM ds_index").fetchone()
        return int(n)


@pytest.fixture
def dom(tmp_path: Path) -> Iterator[Domain]:
    storage = Storage(tmp_path)
    storage.conn.execute("PRAGMA synchronous=OFF")  # these tests are about answers, not fsync
    ring = KeyRing(os.urandom(32))
    clock = [1_000_000.0]
    ds = DataStore(storage, ring, AuditLog(storage, ring), ChangeFeed(),
                   clock=lambda: clock[0])
    yield Domain(ds, storage, clock)
    storage.close()


_names = itertools.count()


def _pair(dom: Domain) -> tuple[str, str]:
    """An indexed and an unindexed collection (the scan is the reference)."""
    n = next(_names)
    idx, ref = f"idx{n}", f"ref{n}"
    dom.ds.create_collection(ADMIN, idx, INDEXED)
    dom.ds.create_collection(ADMIN, ref)
    return idx, ref


# Values of every JSON kind, crowded around what equality must keep apart (1, true, "1")
# or together (1 and 1.0, 0 and -0.0, 2**53 and its float), so collisions are frequent.
scalars = st.sampled_from([None, True, 0, -0.0, 0.0, 1, 1.0, 1.5, 2**53, float(2**53),
                           2**53 + 1, "1", "a", "\u00e9"])
values = st.one_of(scalars, scalars, scalars, st.lists(scalars, max_size=2),
                   st.dictionaries(st.sampled_from(["v", "x"]), scalars, max_size=2))
records = st.lists(st.fixed_dictionaries({"v": values}, optional={"w": values, "x": values}),
                   min_size=1, max_size=12)


def _filters() -> st.SearchStrategy[dict[str, Any]]:
    field = st.sampled_from(["v", "v", "v", "w", "x", "v.x"])  # mostly indexed fields
    leaf = st.one_of(  # mostly what an index can serve, so most finds use it
        st.builds(cond, field, st.just("Eq"), scalars),
        st.builds(cond, field, st.just("In"), st.lists(scalars, max_size=4)),
        st.builds(cond, field, st.sampled_from(["Eq", "Ne"]), scalars),
        st.builds(cond, field, st.sampled_from(["In", "NotIn"]), st.lists(scalars, max_size=4)),
        st.builds(cond, field, st.sampled_from(["Gt", "Lte"]), st.sampled_from([0, 1, "a"])),
    )
    served = st.one_of(  # an index lookup covers these
        st.builds(cond, st.sampled_from(["v", "w"]), st.just("Eq"), scalars),
        st.builds(cond, st.sampled_from(["v", "w"]), st.just("In"),
                  st.lists(scalars, max_size=4)))
    tree = st.recursive(leaf, lambda inner: st.one_of(
        st.builds(lambda xs: logical("And", *xs), st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: logical("Or", *xs), st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda x: logical("Not", x), inner)), max_leaves=5)
    return st.one_of(served, st.builds(lambda a, b: logical("And", a, b), served, tree),
                     st.builds(lambda a, b: logical("Or", a, b), served, served), tree)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=records, flt=_filters())
def test_an_indexed_find_answers_exactly_like_the_scan(dom: Domain, data: list[dict[str, Any]],
                                                      flt: dict[str, Any]) -> None:
    idx, ref = _pair(dom)
    for collection in (idx, ref):
        dom.ds.batch_insert(ADMIN, collection, {"inserts": [{"data": r} for r in data]})
    strip = [{k: v for k, v in r.items() if k != "id"}
             for r in dom.ds.find(ADMIN, idx, {"filter": flt, "limit": 1000})]
    want = [{k: v for k, v in r.items() if k != "id"}
            for r in dom.ds.find(ADMIN, ref, {"filter": flt, "limit": 1000})]
    assert strip == want


def test_equal_json_values_of_different_kinds_are_told_apart(dom: Domain) -> None:
    idx, _ = _pair(dom)
    ids = {repr(v): dom.ds.insert(ADMIN, idx, {"v": v})["id"]
           for v in (1, 1.5, "1", True, None, [1], {"x": 1})}
    one_float = dom.ds.insert(ADMIN, idx, {"v": 1.0})["id"]
    assert dom.ids(idx, cond("v", "Eq", 1)) == [ids["1"], one_float]
    assert dom.ids(idx, cond("v", "Eq", 1.0)) == [ids["1"], one_float]
    assert dom.ids(idx, cond("v", "Eq", "1")) == [ids["'1'"]]
    assert dom.ids(idx, cond("v", "Eq", True)) == [ids["True"]]
    assert dom.ids(idx, cond("v", "Eq", None)) == [ids["None"]]
    assert dom.ids(idx, cond("v", "In", [1.5, True])) == [ids["1.5"], ids["True"]]
    assert canonical(2**53 + 1) != canonical(float(2**53))


def test_an_indexed_find_decrypts_only_the_candidates(dom: Domain,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    idx, _ = _pair(dom)
    dom.ds.batch_insert(ADMIN, idx, {"inserts": [{"data": {"v": i % 50, "x": i}}
                                                 for i in range(500)]})
    opened: list[bytes] = []
    real = dom.ds._open_row

    def counting(collection: str, ridx: bytes, rid: bytes, data: bytes) -> dict[str, Any]:
        opened.append(ridx)
        return real(collection, ridx, rid, data)

    monkeypatch.setattr(dom.ds, "_open_row", counting)
    flt = logical("And", cond("v", "Eq", 7), cond("x", "Gte", 200))
    found = dom.ds.find(ADMIN, idx, {"filter": flt})
    assert [r["x"] for r in found] == [207, 257, 307, 357, 407, 457]
    assert len(opened) == 10  # the ten records with v == 7, not all 500
    opened.clear()
    dom.ds.find(ADMIN, idx, {"filter": cond("x", "Eq", 7)})  # x is not indexed: a scan
    assert len(opened) == 500


def test_keyset_pages_over_an_index_follow_insertion_order(dom: Domain) -> None:
    idx, ref = _pair(dom)
    for i in range(30):
        for c in (idx, ref):
            dom.ds.insert(ADMIN, c, {"v": i % 3, "n": i})
    flt = cond("v", "In", [0, 2])

    def pages(collection: str, sort: list[dict[str, Any]] | None) -> list[int]:
        got: list[int] = []
        cursor = None
        while True:
            page = dom.ds.find_page(ADMIN, collection, {"filter": flt, "limit": 4,
                                                         "cursor": cursor, "sort": sort})
            got += [r["n"] for r in page.records]
            if page.next_cursor is None:
                return got
            cursor = page.next_cursor

    assert pages(idx, None) == pages(ref, None) == [i for i in range(30) if i % 3 != 1]
    desc = [{"field": "n", "ascending": False}]
    assert pages(idx, desc) == pages(ref, desc)


def test_every_write_path_keeps_the_index(dom: Domain) -> None:
    idx, _ = _pair(dom)
    ds = dom.ds
    a = ds.insert(ADMIN, idx, {"v": "a"})["id"]
    ds.batch_insert(ADMIN, idx, {"inserts": [{"data": {"v": "b"}}, {"data": {"v": "a"}}]})
    assert len(dom.ids(idx, cond("v", "Eq", "a"))) == 2
    ds.update(ADMIN, idx, a, {"v": "c"})
    assert dom.ids(idx, cond("v", "Eq", "c")) == [a]
    ds.modify(ADMIN, idx, a, lambda rec: {"v": "d"})  # actions (increment, push...) use it
    assert dom.ids(idx, cond("v", "Eq", "d")) == [a]
    assert dom.ids(idx, cond("v", "Eq", "c")) == []
    ds.upsert(ADMIN, idx, "up1", {"v": "e"})
    ds.upsert(ADMIN, idx, "up1", {"v": "f"})
    assert dom.ids(idx, cond("v", "In", ["e", "f"])) == ["up1"]
    ds.batch_update(ADMIN, idx, {"updates": [{"id": "up1", "data": {"v": "g"}}]})
    assert dom.ids(idx, cond("v", "Eq", "g")) == ["up1"]
    ds.update(ADMIN, idx, a, {"v": None})
    assert dom.ids(idx, cond("v", "Eq", None)) == [a]
    ds.update(ADMIN, idx, a, {"v": {"x": 1}})  # an object: no row, no match
    assert dom.ids(idx, cond("v", "Eq", None)) == []
    ds.delete(ADMIN, idx, a)
    ds.batch_delete(ADMIN, idx, {"deletes": [{"id": "up1"}]})
    assert dom.ids(idx, cond("v", "In", ["d", "g", None])) == []
    ds.batch_delete(ADMIN, idx, {"filter": cond("v", "Eq", "a")})
    assert dom.ids(idx, None) != [] and dom.ids(idx, cond("v", "Eq", "a")) == []
    assert dom.index_rows() == 1  # only the record with "b" is left


def test_trash_restore_and_ttl_expiry_keep_the_index(dom: Domain) -> None:
    idx, _ = _pair(dom)
    trash = Trash(dom.ds, dom.storage, retention=3600, clock=lambda: dom.clock[0])
    ttl = RecordTtl(dom.ds, dom.storage, KeyRing(os.urandom(32)), clock=lambda: dom.clock[0])
    rid = dom.ds.insert(ADMIN, idx, {"v": "kept"})["id"]
    dom.ds.delete(ADMIN, idx, rid)
    assert dom.ids(idx, cond("v", "Eq", "kept")) == []
    trash.restore(ADMIN, idx, rid)
    assert dom.ids(idx, cond("v", "Eq", "kept")) == [rid]
    ttl.insert(ADMIN, idx, {"v": "brief", "ttl": 10})
    assert len(dom.ids(idx, cond("v", "Eq", "brief"))) == 1
    dom.clock[0] += 60
    assert ttl.expire_due() == 1
    assert dom.ids(idx, cond("v", "Eq", "brief")) == []
    assert dom.index_rows() == 1


def test_a_transaction_sees_its_staged_writes_and_commit_indexes_them(dom: Domain) -> None:
    idx, _ = _pair(dom)
    txs = Transactions(dom.storage, KeyRing(os.urandom(32)), dom.ds)
    old = dom.ds.insert(ADMIN, idx, {"v": "old"})["id"]
    tx = txs.begin(ADMIN, {})["transaction_id"]
    new = txs.within(ADMIN, tx, dom.ds.insert, ADMIN, idx, {"v": "new"})["id"]
    txs.within(ADMIN, tx, dom.ds.update, ADMIN, idx, old, {"v": "new"})
    inside = txs.within(ADMIN, tx, dom.ds.find, ADMIN, idx, {"filter": cond("v", "Eq", "new")})
    assert sorted(r["id"] for r in inside) == sorted([old, new])
    assert dom.ids(idx, cond("v", "Eq", "new")) == []  # not committed yet
    txs.commit(ADMIN, tx)
    assert sorted(dom.ids(idx, cond("v", "Eq", "new"))) == sorted([old, new])
    assert dom.ids(idx, cond("v", "Eq", "old")) == []


def test_declaring_an_index_builds_it_and_undeclaring_or_dropping_removes_it(
        dom: Domain) -> None:
    dom.ds.create_collection(ADMIN, "later")
    made = [dom.ds.insert(ADMIN, "later", {"v": i % 2})["id"] for i in range(6)]
    assert dom.index_rows() == 0
    dom.ds.update_schema(ADMIN, "later", {"constraints": {
        "v": {"field_type": "Integer", "index": {"type": "hash"}}}})
    assert dom.index_rows() == 6
    assert dom.ids("later", cond("v", "Eq", 1)) == made[1::2]
    dom.ds.update_schema(ADMIN, "later", {"constraints": {"v": {"index": None}}})
    assert dom.index_rows() == 0
    assert dom.ids("later", cond("v", "Eq", 1)) == made[1::2]  # a scan again
    dom.ds.update_schema(ADMIN, "later", {"constraints": {"v": {"index": {"type": "btree"}}}})
    assert dom.index_rows() == 6
    dom.ds.drop_collection(ADMIN, "later")
    assert dom.index_rows() == 0


def test_an_unknown_index_type_is_refused(dom: Domain) -> None:
    with pytest.raises(ApiError) as err:
        dom.ds.create_collection(ADMIN, "bad", {"fields": {
            "v": {"field_type": "String", "index": {"type": "hsah"}}}})
    assert err.value.status == 400 and "hash" in err.value.message


# --------------------------------------------------------------------------- over TLS


def test_the_index_on_disk_reveals_no_value_and_no_cross_field_equality(api: Api) -> None:
    """A byte scan of the data dir finds no indexed value; tags repeat only per field."""
    marker = uuid.uuid4().hex
    names = [f"ix_{marker[:8]}_{n}" for n in ("a", "b")]
    schema = {"fields": {f: {"field_type": "String", "index": {"type": "hash"}}
                         for f in ("p", "q")}}
    for name in names:
        r = api.http.post(f"/api/collections/{name}", headers=api.admin, json=schema)
        assert r.status_code == 200, r.text
        for _ in range(2):
            r = api.http.post(f"/api/insert/{name}", headers=api.admin,
                              json={"p": f"SECRET{marker}", "q": f"SECRET{marker}"})
            assert r.status_code == 200, r.text
    found = api.http.post(f"/api/find/{names[0]}", headers=api.admin,
                          json={"filter": cond("p", "Eq", f"SECRET{marker}")})
    assert found.status_code == 200 and len(found.json()) == 2
    assert scan(api.info.data_dir, [f"SECRET{marker}".encode(), marker.encode()]) == []
    with sqlite3.connect(api.info.data_dir / DB_FILE) as db:
        rows = db.execute("SELECT cidx, fidx, tag FROM ds_index").fetchall()
    mine: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for cidx, fidx, tag in rows:
        mine.setdefault(tag, []).append((cidx, fidx))
    groups = [places for places in mine.values() if len(places) > 1]
    # 2 collections x 2 fields, each holding the value twice: 4 distinct tags, 2 rows each
    ours = [g for g in groups if len(g) == 2 and g[0] == g[1]]
    assert len(ours) >= 4
    assert all(len(set(g)) == 1 for g in groups)  # a tag never spans fields or collections


def test_a_bad_index_declaration_is_a_400_over_the_wire(api: Api) -> None:
    name = f"ix_{uuid.uuid4().hex[:10]}"
    r = api.http.post(f"/api/collections/{name}", headers=api.admin,
                      json={"fields": {"v": {"field_type": "String", "index": "hash"}}})
    assert_error(r, 400, "validation_error")
    assert api.http.post(f"/api/find/{name}", headers=api.admin, json={}).status_code == 404


def test_a_declared_index_that_was_never_built_is_not_trusted(dom: Domain) -> None:
    """A data dir from before indexes existed declares one with no rows: finds scan (right
    answers) until the next schema update builds it."""
    idx, _ = _pair(dom)
    made = [dom.ds.insert(ADMIN, idx, {"v": i % 2})["id"] for i in range(4)]
    with dom.storage.transaction() as conn:
        conn.execute("DELETE FROM ds_index")
        conn.execute("DELETE FROM ds_index_built")
    assert dom.ids(idx, cond("v", "Eq", 1)) == made[1::2]
    dom.ds.update_schema(ADMIN, idx, {"constraints": {"x": {"field_type": "String"}}})
    assert dom.index_rows() == 4
    assert dom.ids(idx, cond("v", "Eq", 1)) == made[1::2]
