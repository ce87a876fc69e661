"""DataStore transactions through the SDK, against the reference server (SPEC §3.1)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from ekoclient import AsyncAuthenticator, AsyncClient, Authenticator, Client
from ekoclient.errors import (
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)


@pytest.fixture
def coll(admin: Client) -> Iterator[str]:
    name = f"tx_{uuid.uuid4().hex[:8]}"
    admin.datastore.create_collection(name)
    yield name
    admin.datastore.drop_collection(name)


def test_with_block_commits_and_writes_are_invisible_until_then(admin: Client,
                                                                 coll: str) -> None:
    keep = admin.datastore.insert(coll, {"n": 0})
    with admin.datastore.transaction() as tx:
        new = tx.insert(coll, {"n": 1})
        tx.update(coll, keep["id"], {"n": 10})
        # read-your-writes inside, nothing outside
        assert tx.get(coll, new["id"]) == new
        assert sorted(r["n"] for r in tx.find(coll)) == [1, 10]
        with pytest.raises(NotFoundError):
            admin.datastore.get(coll, new["id"])
        assert admin.datastore.get(coll, keep["id"])["n"] == 0
    assert admin.datastore.get(coll, new["id"]) == new
    assert admin.datastore.get(coll, keep["id"])["n"] == 10


def test_an_exception_rolls_everything_back(admin: Client, coll: str) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), admin.datastore.transaction() as tx:
        tx.batch_insert(coll, [{"n": 1}, {"n": 2}])
        raise Boom
    assert admin.datastore.find(coll) == []
    assert tx.status()["status"] == "rolled_back"


def test_a_conflicting_write_makes_commit_fail_and_applies_nothing(admin: Client,
                                                                   coll: str) -> None:
    a = admin.datastore.insert(coll, {"balance": 100})
    b = admin.datastore.insert(coll, {"balance": 0})
    with pytest.raises(ConflictError) as err, admin.datastore.transaction() as tx:
        tx.update(coll, a["id"], {"balance": 50})
        tx.update(coll, b["id"], {"balance": 50})
        admin.datastore.update(coll, a["id"], {"balance": 99})  # someone else, meanwhile
    assert err.value.status == 409 and a["id"] in err.value.message
    assert b["id"] not in err.value.message
    assert admin.datastore.get(coll, a["id"])["balance"] == 99
    assert admin.datastore.get(coll, b["id"])["balance"] == 0


def test_savepoints(admin: Client, coll: str) -> None:
    with admin.datastore.transaction() as tx:
        first = tx.insert(coll, {"n": 1})
        tx.savepoint("after_first")
        tx.insert(coll, {"n": 2})
        tx.rollback_to("after_first")
        assert [r["n"] for r in tx.find(coll)] == [1]
        tx.savepoint("again")
        tx.insert(coll, {"n": 3})
        tx.release("again")
        with pytest.raises(NotFoundError):
            tx.rollback_to("again")
        with pytest.raises(ValidationError):
            tx.savepoint("no spaces")
    assert sorted(r["n"] for r in admin.datastore.find(coll)) == [1, 3]
    assert admin.datastore.get(coll, first["id"])["n"] == 1


def test_explicit_commit_and_rollback_end_it_once(admin: Client, coll: str) -> None:
    with admin.datastore.transaction(isolation_level="Serializable") as tx:
        tx.insert(coll, {"n": 1})
        assert tx.commit()["status"] == "committed"
    assert tx.commit()["status"] == "committed"  # idempotent
    with admin.datastore.transaction() as tx2:
        tx2.insert(coll, {"n": 2})
        tx2.rollback()
    assert [r["n"] for r in admin.datastore.find(coll)] == [1]
    with pytest.raises(ConflictError):
        tx.rollback()  # committed is final


def test_a_transaction_belongs_to_its_key(ekodb_server: Any, admin: Client, coll: str) -> None:
    keys = [admin.admin.create_key(f"tx{i}", collection_permissions={coll: ["read", "write"]})
            for i in range(2)]
    auth = Authenticator(admin)
    one, two = (auth.using_credentials(k.api_key) for k in keys)
    with one.datastore.transaction() as tx:
        tx.insert(coll, {"by": "one"})
        stolen = two.datastore.transaction()
        stolen._id, stolen._state = tx.id, "active"  # another key using the same id
        with pytest.raises(NotFoundError):
            stolen.insert(coll, {"by": "two"})
        with pytest.raises(NotFoundError):
            stolen.commit()
    assert [r["by"] for r in admin.datastore.find(coll)] == ["one"]


def test_read_only_key_and_field_rules_apply_inside(admin: Client, coll: str) -> None:
    ro = admin.admin.create_key("ro", read_only=True,
                                collection_permissions={coll: ["read", "write"]})
    narrow = admin.admin.create_key("narrow", collection_permissions={coll: {
        "read": True, "write": True, "writable_fields": ["name"],
        "exclude_fields": ["secret"]}})
    stored = admin.datastore.insert(coll, {"name": "a", "secret": "s3"})
    auth = Authenticator(admin)
    with auth.using_credentials(ro.api_key).datastore.transaction() as tx:
        with pytest.raises(PermissionDeniedError):
            tx.insert(coll, {"name": "x"})
        assert tx.get(coll, stored["id"]) == stored
    with auth.using_credentials(narrow.api_key).datastore.transaction() as tx:
        with pytest.raises(PermissionDeniedError):
            tx.update(coll, stored["id"], {"secret": "stolen"})
        assert tx.update(coll, stored["id"], {"name": "b"}) == {"id": stored["id"], "name": "b"}
        assert tx.find(coll) == [{"id": stored["id"], "name": "b"}]
    assert admin.datastore.get(coll, stored["id"]) == {**stored, "name": "b"}


def test_databus_events_only_at_commit(admin: Client, coll: str) -> None:
    sub = f"s_{uuid.uuid4().hex[:8]}"
    admin.databus.subscribe(sub, collections=[coll])
    try:
        with admin.datastore.transaction() as tx:
            rec = tx.insert(coll, {"n": 1})
            tx.update(coll, rec["id"], {"n": 2})
            assert admin.databus.size(sub) == 0
        events = admin.databus.poll(sub, limit=10).events
        assert [(e.record_id, e.operation, e.content) for e in events] == [
            (rec["id"], "insert", {"id": rec["id"], "n": 2})]
    finally:
        admin.databus.unsubscribe(sub)


def test_concurrent_transactions_on_one_record_one_wins(admin: Client, coll: str) -> None:
    rec = admin.datastore.insert(coll, {"n": 0})
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def bump() -> None:
        try:
            with admin.datastore.transaction() as tx:
                n = tx.get(coll, rec["id"])["n"]
                tx.update(coll, rec["id"], {"n": n + 1})
                barrier.wait(timeout=30)  # every transaction read 0 before any commits
        except ConflictError:
            outcomes.append("conflict")
        else:
            outcomes.append("ok")

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["conflict"] * 3 + ["ok"]
    assert admin.datastore.get(coll, rec["id"])["n"] == 1  # no lost update


def test_transaction_id_needs_a_begin(admin: Client) -> None:
    tx = admin.datastore.transaction()
    with pytest.raises(InvalidArgumentError):
        tx.insert("whatever", {"a": 1})
    chaotic = admin.datastore.transaction(isolation_level="Chaotic")
    with pytest.raises(ValidationError), chaotic:
        pass


async def test_async_with_commits_and_rolls_back(async_admin: AsyncClient, admin: Client,
                                                 coll: str) -> None:
    async with async_admin.datastore.transaction() as tx:
        rec = await tx.insert(coll, {"n": 1})
        assert await tx.get(coll, rec["id"]) == rec
    assert (await async_admin.datastore.get(coll, rec["id"]))["n"] == 1
    with pytest.raises(RuntimeError):
        async with async_admin.datastore.transaction() as tx2:
            await tx2.update(coll, rec["id"], {"n": 2})
            raise RuntimeError("abort")
    assert (await async_admin.datastore.get(coll, rec["id"]))["n"] == 1
    key = admin.admin.create_key("atx", collection_permissions={coll: ["read", "write"]})
    view = AsyncAuthenticator(async_admin).using_credentials(key.api_key)
    async with view.datastore.transaction() as tx3:
        await tx3.delete(coll, rec["id"])
        assert await tx3.find(coll) == []
    assert await async_admin.datastore.find(coll) == []

