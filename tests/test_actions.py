"""Atomic field actions, upsert, count, exists and distinct through the SDK, end to end."""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from ekoclient import AsyncClient, Authenticator, Client, where
from ekoclient.errors import (
    InvalidArgumentError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ValidationError,
)


@pytest.fixture
def coll(admin: Client) -> Iterator[str]:
    name = f"act_{uuid.uuid4().hex[:8]}"
    admin.datastore.create_collection(name)
    yield name
    admin.datastore.drop_collection(name)


def test_every_action(admin: Client, coll: str) -> None:
    ds = admin.datastore
    rid = ds.insert(coll, {"n": 10, "tags": ["a", "b", "a"], "s": "ab", "deep": {"x": 1}})["id"]
    assert ds.increment(coll, rid, "n")["n"] == 11
    assert ds.increment(coll, rid, "n", by=4)["n"] == 15
    assert ds.decrement(coll, rid, "n", by=5)["n"] == 10
    assert ds.multiply(coll, rid, "n", 3)["n"] == 30
    assert ds.divide(coll, rid, "n", 4)["n"] == 7.5
    assert ds.modulo(coll, rid, "deep.x", 1)["deep"] == {"x": 0}
    assert ds.increment(coll, rid, "deep.y", by=2)["deep"] == {"x": 0, "y": 2}
    assert ds.increment(coll, rid, "fresh")["fresh"] == 1  # a missing number counts as 0
    assert ds.push(coll, rid, "tags", "c")["tags"] == ["a", "b", "a", "c"]
    assert ds.pop(coll, rid, "tags")["tags"] == ["a", "b", "a"]
    assert ds.shift(coll, rid, "tags")["tags"] == ["b", "a"]
    assert ds.unshift(coll, rid, "tags", {"z": 1})["tags"] == [{"z": 1}, "b", "a"]
    assert ds.remove(coll, rid, "tags", "a")["tags"] == [{"z": 1}, "b"]
    assert ds.append(coll, rid, "s", "cd")["s"] == "abcd"
    assert ds.clear(coll, rid, "tags")["tags"] == []
    assert ds.clear(coll, rid, "s")["s"] == ""
    record = ds.apply(coll, rid, [("increment", "n", 2.5), ("push", "log", "hit"),
                                  ("clear", "deep")])
    assert (record["n"], record["log"], record["deep"]) == (10.0, ["hit"], {})
    assert ds.get(coll, rid) == record


def test_concurrent_increments_are_not_lost(admin: Client, coll: str) -> None:
    rid = admin.datastore.insert(coll, {"hits": 0})["id"]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: admin.datastore.increment(coll, rid, "hits"), range(64)))
    assert admin.datastore.get(coll, rid)["hits"] == 64


async def test_concurrent_increments_async(async_admin: AsyncClient) -> None:
    coll = f"act_{uuid.uuid4().hex[:8]}"
    ds = async_admin.datastore
    await ds.create_collection(coll)
    try:
        rid = (await ds.insert(coll, {"hits": 0}))["id"]
        await asyncio.gather(*(ds.increment(coll, rid, "hits") for _ in range(64)))
        assert (await ds.get(coll, rid))["hits"] == 64
        assert await ds.count(coll) == 1
    finally:
        await ds.drop_collection(coll)


def test_writable_fields_and_read_only_keys(admin: Client, coll: str) -> None:
    rid = admin.datastore.insert(coll, {"score": 1, "balance": 100})["id"]
    auth = Authenticator(admin)
    limited = auth.using_credentials(admin.admin.create_key("act-lim", collection_permissions={
        coll: {"read": True, "write": True, "writable_fields": ["score"]}}).api_key)
    reader = auth.using_credentials(admin.admin.create_key(
        "act-ro", read_only=True, collection_permissions={coll: ["read", "write"]}).api_key)
    other = auth.using_credentials(admin.admin.create_key("act-other", collection_permissions={
        "elsewhere": ["read", "write"]}).api_key)
    assert limited.datastore.increment(coll, rid, "score")["score"] == 2
    for attempt in (lambda: limited.datastore.increment(coll, rid, "balance", by=1000),
                    lambda: limited.datastore.apply(coll, rid, [("increment", "score", 1),
                                                                ("clear", "balance")]),
                    lambda: reader.datastore.increment(coll, rid, "score"),
                    lambda: other.datastore.increment(coll, rid, "score"),
                    lambda: limited.datastore.upsert(coll, rid, {"balance": 0})):
        with pytest.raises(PermissionDeniedError):
            attempt()
    assert admin.datastore.get(coll, rid) == {"id": rid, "score": 2, "balance": 100}


def test_actions_on_a_hidden_field_are_refused_before_computing(admin: Client,
                                                                coll: str) -> None:
    """A key that may not read ``salary`` learns nothing from actions' answers: a range
    error computed on the hidden value (multiply by 2**k) would reveal it bit by bit."""
    rid = admin.datastore.insert(coll, {"salary": 1000, "name": "a"})["id"]
    blind = Authenticator(admin).using_credentials(admin.admin.create_key(
        "act-blind", collection_permissions={
            coll: {"read": True, "write": True, "exclude_fields": ["salary"]}}).api_key)
    for k in (53, 54):  # 1000 * 2**53 fits in 64 bits, 1000 * 2**54 does not
        with pytest.raises(PermissionDeniedError, match="salary"):
            blind.datastore.apply(coll, rid, [("multiply", "salary", 2**k),
                                              ("divide", "salary", 2**k)])
    for attempt in (lambda: blind.datastore.increment(coll, rid, "salary"),
                    lambda: blind.datastore.append(coll, rid, "salary", "x"),
                    lambda: blind.datastore.clear(coll, rid, "salary")):
        with pytest.raises(PermissionDeniedError, match="salary"):
            attempt()
    assert blind.datastore.append(coll, rid, "name", "b") == {"id": rid, "name": "ab"}
    assert admin.datastore.get(coll, rid) == {"id": rid, "salary": 1000, "name": "ab"}


def test_bad_actions_change_nothing(admin: Client, coll: str) -> None:
    ds = admin.datastore
    rid = ds.insert(coll, {"n": 1, "s": "x", "tags": []})["id"]
    for attempt in (lambda: ds.increment(coll, rid, "s"),
                    lambda: ds.divide(coll, rid, "n", 0),
                    lambda: ds.multiply(coll, rid, "n", 2**63),
                    lambda: ds.push(coll, rid, "s", 1),
                    lambda: ds.increment(coll, rid, "id"),
                    lambda: ds.increment(coll, rid, "_sys"),
                    lambda: ds.increment(coll, rid, "a..b"),
                    lambda: ds.apply(coll, rid, [("increment", "n", 1), ("bogus", "n", 1)]),
                    lambda: ds.apply(coll, rid, [("increment", "n", 1), ("append", "n", "x")]),
                    lambda: ds.apply(coll, rid, [("push", "t", 1), ("push", "t.x", 1)])):
        with pytest.raises(ValidationError):
            attempt()
    with pytest.raises(PayloadTooLargeError):
        ds.apply(coll, rid, [("increment", "n", 1)] * 101)
    with pytest.raises(NotFoundError):
        ds.increment(coll, "no-such-record", "n")
    with pytest.raises(InvalidArgumentError):
        ds.increment(coll, rid, "n", by="2")  # type: ignore[arg-type]
    assert ds.get(coll, rid) == {"id": rid, "n": 1, "s": "x", "tags": []}


def test_retried_action_applies_once(admin: Client, coll: str, ekodb_server: Any) -> None:
    rid = admin.datastore.insert(coll, {"n": 0})["id"]
    tls = ssl.create_default_context(cafile=ekodb_server.ca_bundle)
    with httpx.Client(base_url=ekodb_server.url, verify=tls) as http:
        token = http.post("/api/auth/token", json={"api_key": ekodb_server.admin_key}).json()
        h = {"Authorization": f"Bearer {token['token']}", "Idempotency-Key": uuid.uuid4().hex}
        for _ in range(3):
            r = http.put(f"/api/update/{coll}/{rid}/action/increment", headers=h,
                         json={"field": "n", "value": 5})
            assert r.status_code == 200 and r.json()["n"] == 5
    assert admin.datastore.get(coll, rid)["n"] == 5


def test_an_action_named_in_a_transaction_is_refused_not_applied(admin: Client, coll: str,
                                                                 ekodb_server: Any) -> None:
    rid = admin.datastore.insert(coll, {"n": 0})["id"]
    tls = ssl.create_default_context(cafile=ekodb_server.ca_bundle)
    with httpx.Client(base_url=ekodb_server.url, verify=tls) as http:
        token = http.post("/api/auth/token", json={"api_key": ekodb_server.admin_key}).json()
        h = {"Authorization": f"Bearer {token['token']}"}
        txid = http.post("/api/transactions", headers=h, json={}).json()["transaction_id"]
        r = http.put(f"/api/update/{coll}/{rid}/action/increment", headers=h,
                     params={"transaction_id": txid}, json={"field": "n", "value": 5})
        assert r.status_code == 400 and "transaction" in r.json()["error"]["message"]
        http.post(f"/api/transactions/{txid}/rollback", headers=h)
    assert admin.datastore.get(coll, rid)["n"] == 0


def test_upsert_is_atomic(admin: Client, coll: str) -> None:
    ds = admin.datastore
    first = ds.upsert(coll, "user-1", {"name": "ann", "visits": 1})
    assert first == {"id": "user-1", "name": "ann", "visits": 1}
    assert ds.upsert(coll, "user-1", {"visits": 2}) == {"id": "user-1", "name": "ann",
                                                        "visits": 2}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: ds.upsert(coll, "racy", {"n": i}), range(16)))
    assert ds.count(coll, where("id").eq("racy")) == 1
    with pytest.raises(ValidationError):
        ds.upsert(coll, "bad id!", {"n": 1})
    with pytest.raises(ValidationError):
        ds.upsert(coll, "x", {"id": "other"})
    assert not ds.exists(coll, "x")


class Profile(BaseModel):
    name: str
    visits: int


def test_upsert_takes_a_pydantic_model_like_insert(admin: Client, coll: str) -> None:
    ds = admin.datastore
    assert ds.upsert(coll, "p-1", Profile(name="ann", visits=1)) == {
        "id": "p-1", "name": "ann", "visits": 1}
    assert ds.upsert(coll, "p-1", Profile(name="ann", visits=2))["visits"] == 2
    with pytest.raises(InvalidArgumentError, match="pydantic model"):
        ds.upsert(coll, "p-2", 42)  # type: ignore[arg-type]
    assert not ds.exists(coll, "p-2")


def test_count_exists_distinct(admin: Client, coll: str) -> None:
    ds = admin.datastore
    ds.batch_insert(coll, [{"team": t, "age": a} for t, a in
                           [("a", 30), ("b", 40), ("a", 50), ("c", 30)]])
    rid = ds.insert(coll, {"age": 60})["id"]
    assert ds.count(coll) == 5
    assert ds.count(coll, where("age").gte(40)) == 3
    assert ds.exists(coll, rid) and not ds.exists(coll, "nope")
    assert ds.distinct(coll, "team") == ["a", "b", "c"]
    assert ds.distinct(coll, "team", where("age").eq(30)) == ["a", "c"]
    assert sorted(ds.distinct(coll, "age")) == [30, 40, 50, 60]


def test_count_and_distinct_do_not_reveal_hidden_fields(admin: Client, coll: str) -> None:
    admin.datastore.batch_insert(coll, [{"name": "x", "salary": 100}, {"name": "y",
                                                                        "salary": 200}])
    view = Authenticator(admin).using_credentials(admin.admin.create_key(
        "act-hidden", collection_permissions={coll: {
            "read": True, "exclude_fields": ["salary"]}}).api_key)
    assert view.datastore.count(coll) == 2
    assert view.datastore.distinct(coll, "name") == ["x", "y"]
    for attempt in (lambda: view.datastore.distinct(coll, "salary"),
                    lambda: view.datastore.count(coll, where("salary").gt(150)),
                    lambda: view.datastore.distinct(coll, "name", where("salary").gt(150))):
        with pytest.raises(PermissionDeniedError):
            attempt()
    blind = Authenticator(admin).using_credentials(admin.admin.create_key(
        "act-blind", collection_permissions={"other": ["read"]}).api_key)
    with pytest.raises(PermissionDeniedError):
        blind.datastore.count(coll)
    with pytest.raises(PermissionDeniedError):
        blind.datastore.exists(coll, "x")
