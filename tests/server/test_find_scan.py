"""A find reads only what its page needs: without a sort it stops at the page (plus one
record, so ``has_more`` stays exact) and a cursor starts the scan right after it; pages
stay exact when records come and go between them. Domain-level (no HTTP) where records
opened are counted, over TLS end to end for paging."""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mock_server import actions as actions_module
from mock_server.actions import RecordActions
from mock_server.audit import AuditLog
from mock_server.changes import ChangeFeed
from mock_server.crypto import KeyRing, aad
from mock_server.datastore import INLINE_ROW_BYTES, DataStore, TooLargeInline, _RecordCipher
from mock_server.errors import ApiError
from mock_server.storage import Storage
from mock_server.transactions import Transactions
from tests.server.conftest import ADMIN, Api


def cond(field: str, op: str, value: Any) -> dict[str, Any]:
    return {"type": "Condition", "content": {"field": field, "operator": op, "value": value}}


@dataclass
class Domain:
    ds: DataStore
    storage: Storage
    opened: list[bytes]

    def fill(self, collection: str, n: int, start: int = 0) -> list[str]:
        """Records ``{"n": i, "team": "a"|"b"}`` (even ``i``: team a); their ids."""
        ids: list[str] = []
        for first in range(start, start + n, 500):
            ids += self.ds.batch_insert(ADMIN, collection, {"inserts": [
                {"data": {"n": i, "team": "ab"[i % 2]}}
                for i in range(first, min(start + n, first + 500))]})["successful"]
        return ids


@pytest.fixture
def dom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Domain]:
    storage = Storage(tmp_path)
    storage.conn.execute("PRAGMA synchronous=OFF")  # these tests are about answers, not fsync
    ring = KeyRing(os.urandom(32))
    ds = DataStore(storage, ring, AuditLog(storage, ring), ChangeFeed(), max_batch=500)
    ds.create_collection(ADMIN, "c")
    domain = Domain(ds, storage, [])
    real = ds._open_row

    def counting(collection: str, ridx: bytes, rid: bytes, data: bytes) -> dict[str, Any]:
        domain.opened.append(ridx)
        return real(collection, ridx, rid, data)

    monkeypatch.setattr(ds, "_open_row", counting)
    yield domain
    storage.close()


def test_a_page_without_sort_opens_only_the_records_it_needs(dom: Domain) -> None:
    dom.fill("c", 1000)
    page = dom.ds.find_page(ADMIN, "c", {"filter": cond("team", "Eq", "a"), "limit": 10})
    assert [r["n"] for r in page.records] == list(range(0, 20, 2))  # the first ten, in order
    assert page.has_more and page.next_cursor is not None
    assert len(dom.opened) == 21  # through the 11th match (has_more), not all 1,000
    dom.opened.clear()
    nxt = dom.ds.find_page(ADMIN, "c", {"filter": cond("team", "Eq", "a"), "limit": 10,
                                        "cursor": page.next_cursor})
    assert [r["n"] for r in nxt.records] == list(range(20, 40, 2))
    assert len(dom.opened) == 22  # n = 19..40: it starts right after the cursor (n = 18)


def test_has_more_is_exact_at_the_last_page(dom: Domain) -> None:
    dom.fill("c", 40)  # 20 matches
    exact = dom.ds.find_page(ADMIN, "c", {"filter": cond("team", "Eq", "b"), "limit": 20})
    assert [r["n"] for r in exact.records] == list(range(1, 40, 2))
    assert not exact.has_more and exact.next_cursor is None
    short = dom.ds.find_page(ADMIN, "c", {"filter": cond("team", "Eq", "b"), "limit": 19})
    assert short.has_more and short.next_cursor is not None
    skipped = dom.ds.find_page(ADMIN, "c", {"filter": cond("team", "Eq", "b"), "limit": 5,
                                            "skip": 15})
    assert [r["n"] for r in skipped.records] == [31, 33, 35, 37, 39] and not skipped.has_more
    beyond = dom.ds.find_page(ADMIN, "c", {"filter": cond("team", "Eq", "b"), "skip": 20})
    assert beyond.records == [] and not beyond.has_more


def test_cursor_pages_see_every_record_once_while_records_come_and_go(dom: Domain) -> None:
    ids = dom.fill("c", 30)
    seen: list[int] = []
    body: dict[str, Any] = {"limit": 7}
    rounds = 0
    while True:
        page = dom.ds.find_page(ADMIN, "c", body)
        seen += [r["n"] for r in page.records]
        if rounds == 0:  # between pages: one record not seen yet goes, two new come
            dom.ds.delete(ADMIN, "c", ids[20])
            dom.fill("c", 2, start=100)
        rounds += 1
        if not page.has_more:
            break
        body = {"limit": 7, "cursor": page.next_cursor}
    assert seen == [n for n in range(30) if n != 20] + [100, 101]


def test_a_sorted_page_still_sees_every_match(dom: Domain) -> None:
    dom.fill("c", 300)
    page = dom.ds.find_page(ADMIN, "c", {"filter": cond("team", "Eq", "a"), "limit": 3,
                                         "sort": [{"field": "n", "ascending": False}]})
    assert [r["n"] for r in page.records] == [298, 296, 294] and page.has_more
    nxt = dom.ds.find_page(ADMIN, "c", {"filter": cond("team", "Eq", "a"), "limit": 3,
                                        "sort": [{"field": "n", "ascending": False}],
                                        "cursor": page.next_cursor})
    assert [r["n"] for r in nxt.records] == [292, 290, 288]


def test_filters_on_id_stop_early_too(dom: Domain) -> None:
    ids = dom.fill("c", 200)
    one = dom.ds.find_page(ADMIN, "c", {"filter": cond("id", "Eq", ids[5]), "limit": 1})
    assert [r["n"] for r in one.records] == [5]
    assert not one.has_more or one.next_cursor is not None
    some = dom.ds.find_page(ADMIN, "c", {"filter": cond("id", "In", [ids[150], ids[3]])})
    assert [r["n"] for r in some.records] == [3, 150] and not some.has_more
    others = dom.ds.find_page(ADMIN, "c", {"filter": cond("id", "Ne", ids[0]), "limit": 2})
    assert [r["n"] for r in others.records] == [1, 2] and others.has_more


def test_a_find_that_stops_early_leaves_no_read_snapshot_open(dom: Domain) -> None:
    """An unfinished statement would pin its WAL snapshot: the WAL could not be reset."""
    dom.fill("c", 300)
    page = dom.ds.find_page(ADMIN, "c", {"filter": cond("team", "Eq", "a"), "limit": 2})
    assert page.has_more
    assert _wal_resettable(dom.storage)


def test_a_transaction_pages_over_its_own_writes(dom: Domain) -> None:
    dom.fill("c", 10)
    txs = Transactions(dom.storage, KeyRing(os.urandom(32)), dom.ds)
    txid = txs.begin(ADMIN, {})["transaction_id"]
    txs.within(ADMIN, txid, dom.ds.insert, ADMIN, "c", {"n": 50, "team": "a"})
    first = txs.within(ADMIN, txid, dom.ds.find_page, ADMIN, "c",
                       {"filter": cond("team", "Eq", "a"), "limit": 4})
    rest = txs.within(ADMIN, txid, dom.ds.find_page, ADMIN, "c",
                      {"filter": cond("team", "Eq", "a"), "limit": 4,
                       "cursor": first.next_cursor})
    assert [r["n"] for r in first.records + rest.records] == [0, 2, 4, 6, 8, 50]
    assert first.has_more and not rest.has_more
    # outside the transaction its insert is not there
    assert [r["n"] for r in dom.ds.find(ADMIN, "c", {"filter": cond("n", "Eq", 50)})] == []


def test_an_inline_find_answers_cheap_pages_and_refuses_the_rest(dom: Domain) -> None:
    """``inline_limit`` (an event loop's caller): the same page when it fits, else
    TooLargeInline with nothing left open, before reading when it cannot fit."""
    dom.fill("c", 300)
    cheap = {"filter": cond("team", "Eq", "a"), "limit": 10}
    budget = 21 * INLINE_ROW_BYTES  # the 21 small records this page opens
    assert dom.ds.find_page(ADMIN, "c", cheap, inline_limit=budget) == \
        dom.ds.find_page(ADMIN, "c", cheap)
    dom.opened.clear()
    with pytest.raises(TooLargeInline):
        dom.ds.find_page(ADMIN, "c", cheap, inline_limit=budget - 1)
    assert len(dom.opened) == 20  # it stopped at the budget
    assert _wal_resettable(dom.storage)
    dom.opened.clear()
    sorted_page = {**cheap, "sort": [{"field": "n"}]}
    with pytest.raises(TooLargeInline):  # a sort reads every match: refused up front
        dom.ds.find_page(ADMIN, "c", sorted_page, inline_limit=10**9)
    assert dom.opened == []
    big = dom.ds.insert(ADMIN, "c", {"team": "big", "blob": "x" * 5000})["id"]
    with pytest.raises(TooLargeInline):  # a record larger than what is left
        dom.ds.find_page(ADMIN, "c", {"filter": cond("id", "Eq", big)},
                         inline_limit=301 * INLINE_ROW_BYTES)
    assert [r["id"] for r in dom.ds.find_page(
        ADMIN, "c", {"filter": cond("id", "Eq", big)}).records] == [big]


def test_an_inline_find_is_refused_for_index_lookups_and_transactions(dom: Domain) -> None:
    dom.ds.create_collection(ADMIN, "idx", {"fields": {
        "v": {"field_type": "Integer", "index": {"type": "hash"}}}})
    dom.ds.insert(ADMIN, "idx", {"v": 1})
    with pytest.raises(TooLargeInline):  # an index lookup reads its candidates at once
        dom.ds.find_page(ADMIN, "idx", {"filter": cond("v", "Eq", 1)}, inline_limit=10**9)
    unindexed = dom.ds.find_page(ADMIN, "idx", {"filter": cond("w", "Eq", 1)},
                                 inline_limit=10**9)
    assert unindexed.records == []
    txs = Transactions(dom.storage, KeyRing(os.urandom(32)), dom.ds)
    txid = txs.begin(ADMIN, {})["transaction_id"]
    with pytest.raises(TooLargeInline):
        txs.within(ADMIN, txid, dom.ds.find_page, ADMIN, "idx", {}, inline_limit=10**9)


def _wal_resettable(storage: Storage) -> bool:
    other = sqlite3.connect(storage.path, timeout=0)
    try:
        return bool(other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0)
    finally:
        other.close()


def test_count_and_distinct_read_as_they_go_and_end_their_scan(
        dom: Domain, monkeypatch: pytest.MonkeyPatch) -> None:
    dom.fill("c", 300)
    actions = RecordActions(dom.ds)
    assert actions.count(ADMIN, "c", {"filter": cond("team", "Eq", "a")}) == 150
    assert actions.distinct(ADMIN, "c", "team", None) == ["a", "b"]
    monkeypatch.setattr(actions_module, "MAX_DISTINCT", 5)
    with pytest.raises(ApiError, match="distinct values"):  # stops early, mid-scan
        actions.distinct(ADMIN, "c", "n", None)
    assert _wal_resettable(dom.storage)


def test_a_refused_write_ends_its_scan_while_the_error_is_still_held(dom: Domain) -> None:
    """A unique check or a schema change that stops at a violating record ends its scan at
    once, even while the exception (and its traceback) lives on in the caller: an open scan
    pins its WAL snapshot, so the log could not be checkpointed meanwhile."""
    dom.fill("c", 200)
    with pytest.raises(ApiError) as violation:
        dom.ds.update_schema(ADMIN, "c", {"constraints": {
            "team": {"field_type": "string", "unique": True}}})
    assert violation.value.status == 409 and _wal_resettable(dom.storage)
    dom.ds.update_schema(ADMIN, "c", {"constraints": {
        "n": {"field_type": "integer", "unique": True}}})
    with pytest.raises(ApiError) as duplicate:
        dom.ds.insert(ADMIN, "c", {"n": 150, "team": "a"})
    assert duplicate.value.code == "unique_violation" and _wal_resettable(dom.storage)


@pytest.mark.parametrize("record_id", ["plain-id_1", "with|bar", "back\\slash", "|\\|"])
def test_the_record_cipher_binds_exactly_what_aad_binds(record_id: str) -> None:
    """Records sealed before the per-collection cipher existed must still open."""
    cipher = _RecordCipher(KeyRing(os.urandom(32)).aead("datastore", "c|x"), "c|x")
    assert cipher.body_aad(record_id) == aad("record", "c|x", record_id)
    assert cipher.id_aad(b"\x01\xff") == aad("record-id", "c|x", "01ff")


def test_cursor_paging_over_tls_with_inserts_between_pages(api: Api) -> None:
    h = api.admin
    name = f"scan_{uuid.uuid4().hex[:10]}"
    assert api.http.post(f"/api/collections/{name}", headers=h).status_code == 200

    def insert(values: range) -> None:
        r = api.http.post(f"/api/batch/insert/{name}", headers=h,
                          json={"inserts": [{"data": {"n": i, "even": i % 2 == 0}}
                                            for i in values]})
        assert r.status_code == 200 and not r.json()["failed"], r.text

    insert(range(60))
    flt = cond("even", "Eq", True)
    seen: list[int] = []
    body: dict[str, Any] = {"filter": flt, "limit": 8}
    for page_no in range(20):
        r = api.http.post(f"/api/find/{name}", headers=h, json=body)
        assert r.status_code == 200, r.text
        seen += [rec["n"] for rec in r.json()]
        if page_no == 1:
            insert(range(60, 64))
        if r.headers["x-has-more"] != "true":
            assert "x-next-cursor" not in r.headers
            break
        body = {"filter": flt, "limit": 8, "cursor": r.headers["x-next-cursor"]}
    assert seen == list(range(0, 64, 2))
