"""Record TTL and the trash, end to end through the SDK and raw HTTP (issue 15 item 6)."""

from __future__ import annotations

import secrets
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from ekoclient import Authenticator, Client, where
from ekoclient.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def coll(admin: Client) -> Iterator[str]:
    name = f"trash_{uuid.uuid4().hex[:8]}"
    admin.datastore.create_collection(name)
    yield name
    admin.datastore.drop_collection(name)


def _gone(client: Client, coll: str, rid: str) -> bool:
    try:
        client.datastore.get(coll, rid)
    except NotFoundError:
        return True
    return False


def test_record_with_ttl_disappears_and_emits_delete_event(admin: Client, coll: str) -> None:
    sub = f"ttl_{secrets.token_hex(4)}"
    admin.databus.subscribe(sub, collections=[coll])
    try:
        short = admin.datastore.insert(coll, {"n": 1}, ttl=1.0)
        keep = admin.datastore.insert(coll, {"n": 2})
        assert "ttl" not in short and admin.datastore.get(coll, short["id"]) == short
        eventually(lambda: _gone(admin, coll, short["id"]))
        assert admin.datastore.find(coll) == [keep]
        events: list[Any] = []

        def saw_delete() -> bool:
            events.extend(admin.databus.poll(sub, limit=10).events)
            return any(e.operation == "delete" for e in events)

        eventually(saw_delete)
        deletes = [e.record_id for e in events if e.operation == "delete"]
        assert deletes == [short["id"]]  # the kept record was not touched
        with pytest.raises(NotFoundError):  # expiry means gone: not in the trash
            admin.datastore.restore(coll, short["id"])
    finally:
        admin.databus.unsubscribe(sub)


def test_ttl_in_ekodb_body_shape_and_bad_ttl(admin: Client, coll: str,
                                             ekodb_server: Any) -> None:
    tls = ssl.create_default_context(cafile=ekodb_server.ca_bundle)
    with httpx.Client(base_url=ekodb_server.url, verify=tls) as http:
        token = http.post("/api/auth/token", json={"api_key": ekodb_server.admin_key}).json()
        h = {"Authorization": f"Bearer {token['token']}"}
        r = http.post(f"/api/insert/{coll}", json={"n": 1, "ttl": "1h"}, headers=h)
        assert r.status_code == 200 and r.json() == {"id": r.json()["id"], "n": 1}
        for body, params in (({"n": 2, "ttl": "soon"}, {}), ({"n": 2, "ttl": -1}, {}),
                             ({"n": 2, "ttl": 5}, {"ttl": "5"}), ({"n": 2}, {"ttl": "0"})):
            bad = http.post(f"/api/insert/{coll}", json=body, params=params, headers=h)
            assert bad.status_code == 400, bad.text
    assert [r["n"] for r in admin.datastore.find(coll)] == [1]
    with pytest.raises(ValidationError):
        admin.datastore.insert(coll, {"ttl": "whenever"})


def test_deleted_records_are_restorable(admin: Client, coll: str) -> None:
    ds = admin.datastore
    one = ds.insert(coll, {"name": "ann", "deep": {"x": [1, 2]}})
    ds.delete(coll, one["id"])
    assert ds.restore(coll, one["id"]) is True
    assert ds.get(coll, one["id"]) == one
    with pytest.raises(NotFoundError):  # restored once; nothing left to restore
        ds.restore(coll, one["id"])
    with pytest.raises(NotFoundError):
        ds.restore(coll, "never-existed")
    ids = ds.batch_insert(coll, [{"n": i} for i in range(3)]).successful
    ds.batch_delete(coll, ids[:2])
    ds.batch_delete(coll, filter=where("n").eq(2))
    assert ds.count(coll) == 1
    assert ds.restore_all(coll) == 3
    assert ds.count(coll) == 4
    assert ds.restore_all(coll) == 0


def test_restore_is_permission_checked(admin: Client, coll: str) -> None:
    ds = admin.datastore
    rid = ds.insert(coll, {"a": 1, "secret": "s"})["id"]
    ds.delete(coll, rid)
    auth = Authenticator(admin)
    reader = auth.using_credentials(admin.admin.create_key(
        "trash-ro", read_only=True, collection_permissions={coll: ["read", "write"]}).api_key)
    partial = auth.using_credentials(admin.admin.create_key("trash-part", collection_permissions={
        coll: {"read": True, "write": True, "writable_fields": ["a"]}}).api_key)
    stranger = auth.using_credentials(admin.admin.create_key(
        "trash-other", collection_permissions={"elsewhere": ["read", "write"]}).api_key)
    for attempt in (lambda: reader.datastore.restore(coll, rid),
                    lambda: partial.datastore.restore(coll, rid),
                    lambda: partial.datastore.restore_all(coll),
                    lambda: stranger.datastore.restore(coll, rid),
                    lambda: stranger.datastore.restore_all(coll)):
        with pytest.raises(PermissionDeniedError):
            attempt()
    assert _gone(admin, coll, rid)
    assert ds.restore(coll, rid) and ds.get(coll, rid)["secret"] == "s"


def test_restore_replays_once_and_emits_insert(admin: Client, coll: str,
                                               ekodb_server: Any) -> None:
    rid = admin.datastore.insert(coll, {"n": 1})["id"]
    admin.datastore.delete(coll, rid)
    tls = ssl.create_default_context(cafile=ekodb_server.ca_bundle)
    with httpx.Client(base_url=ekodb_server.url, verify=tls) as http:
        token = http.post("/api/auth/token", json={"api_key": ekodb_server.admin_key}).json()
        h = {"Authorization": f"Bearer {token['token']}", "Idempotency-Key": uuid.uuid4().hex}
        answers = [http.post(f"/api/trash/{coll}/{rid}", headers=h) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json() == answers[1].json() == {"restored": True, "id": rid}
    assert admin.datastore.count(coll) == 1


def test_trash_retention_and_recreated_collection(ekodb_server_factory: Any) -> None:
    info = ekodb_server_factory(trash_retention=0.3, sweep_interval=0.05)
    with Client(base_url=info.url, api_key=info.admin_key, ca_bundle=info.ca_bundle) as c:
        ds = c.datastore
        ds.create_collection("t")
        rid = ds.insert("t", {"n": 1})["id"]
        ds.delete("t", rid)
        conn = info.server.state.storage.conn
        eventually(lambda: conn.execute("SELECT COUNT(*) FROM ds_trash").fetchone()[0] == 0)
        with pytest.raises(NotFoundError):
            ds.restore("t", rid)
    info = ekodb_server_factory()
    with Client(base_url=info.url, api_key=info.admin_key, ca_bundle=info.ca_bundle) as c:
        ds = c.datastore
        ds.create_collection("t")
        ds.delete("t", ds.insert("t", {"n": 1})["id"])
        ds.drop_collection("t")
        ds.create_collection("t")
        assert ds.restore_all("t") == 0  # a dropped collection's trash never comes back


def test_an_id_reused_after_delete_does_not_inherit_the_ttl(admin: Client, coll: str) -> None:
    ds = admin.datastore
    rid = ds.insert(coll, {"n": 1}, ttl=2)["id"]
    ds.delete(coll, rid)
    ds.upsert(coll, rid, {"n": 2})
    sentinel = ds.insert(coll, {"n": 3}, ttl=2)["id"]  # due after the first one
    eventually(lambda: _gone(admin, coll, sentinel))
    assert ds.get(coll, rid) == {"id": rid, "n": 2}


async def test_async_ttl_and_restore(async_admin: Any) -> None:
    ds = async_admin.datastore
    coll = f"trash_{uuid.uuid4().hex[:8]}"
    await ds.create_collection(coll)
    try:
        rid = (await ds.insert(coll, {"n": 1}, ttl=3600))["id"]
        await ds.delete(coll, rid)
        assert await ds.restore(coll, rid) is True
        await ds.batch_delete(coll, [rid])
        assert await ds.restore_all(coll) == 1
        assert await ds.get(coll, rid) == {"id": rid, "n": 1}
    finally:
        await ds.drop_collection(coll)


# ------------------------------------------------------------------ restore and the schema


@pytest.fixture
def unique_emails(admin: Client) -> Iterator[str]:
    name = f"trash_{uuid.uuid4().hex[:8]}"
    admin.datastore.create_collection(name, schema={"fields": {
        "email": {"field_type": "string", "required": True, "unique": True}}})
    yield name
    admin.datastore.drop_collection(name)


def test_restore_refuses_a_record_that_breaks_unique(admin: Client, unique_emails: str) -> None:
    old = admin.datastore.insert(unique_emails, {"email": "x@y"})
    admin.datastore.delete(unique_emails, old["id"])
    admin.datastore.insert(unique_emails, {"email": "x@y"})
    with pytest.raises(ValidationError, match="email"):
        admin.datastore.restore(unique_emails, old["id"])
    assert [r["email"] for r in admin.datastore.find(unique_emails)] == ["x@y"]


def test_restore_all_is_refused_whole_when_one_record_breaks_unique(
        admin: Client, unique_emails: str) -> None:
    clash = admin.datastore.insert(unique_emails, {"email": "x@y"})
    fine = admin.datastore.insert(unique_emails, {"email": "z@y"})
    admin.datastore.delete(unique_emails, clash["id"])
    admin.datastore.delete(unique_emails, fine["id"])
    admin.datastore.insert(unique_emails, {"email": "x@y"})
    with pytest.raises(ValidationError, match="email"):
        admin.datastore.restore_all(unique_emails)
    assert [r["email"] for r in admin.datastore.find(unique_emails)] == ["x@y"]
    admin.datastore.restore(unique_emails, fine["id"])  # still in the trash, restorable alone
    assert sorted(r["email"] for r in admin.datastore.find(unique_emails)) == ["x@y", "z@y"]


def test_restore_checks_a_schema_made_stricter_since_the_delete(admin: Client,
                                                                coll: str) -> None:
    rid = admin.datastore.insert(coll, {"n": 1})["id"]
    admin.datastore.delete(coll, rid)
    admin.datastore.update_schema(coll, {"email": {"field_type": "string", "required": True}})
    with pytest.raises(ValidationError, match="email"):
        admin.datastore.restore(coll, rid)
    assert admin.datastore.find(coll) == []


def test_restore_fills_defaults_added_since_the_delete(admin: Client, coll: str) -> None:
    rid = admin.datastore.insert(coll, {"n": 1})["id"]
    admin.datastore.delete(coll, rid)
    admin.datastore.update_schema(coll, {"tier": {"field_type": "string", "default": "free"}})
    admin.datastore.restore(coll, rid)
    assert admin.datastore.get(coll, rid) == {"id": rid, "n": 1, "tier": "free"}


# ------------------------------------------------------------------ the TTL sweeper


def test_sweeper_never_deletes_a_record_made_again_under_the_expired_id(
        tmp_path: Any) -> None:
    """expire_due reads the due rows, then deletes each in its own transaction: a record
    deleted and made again under the same id (upsert, no TTL) in between must survive."""
    from mock_server.config import ServerConfig
    from mock_server.permissions import Scope
    from mock_server.state import AppState
    from mock_server.trash import RecordTtl, _System

    state = AppState.open(ServerConfig(data_dir=tmp_path, sweep_interval=0), {})
    try:
        now = [time.time()]
        ttl = RecordTtl(state.datastore, state.storage, state.keyring, clock=lambda: now[0])
        user = _System("k_user", "user", Scope(is_admin=True, read_only=False, rules={}))
        state.datastore.create_collection(user, "c")
        now[0] = time.time() + 1  # scheduled after the collection was made (real clock)
        first = ttl.insert(user, "c", {"n": 1}, "5")["id"]
        victim = ttl.insert(user, "c", {"n": 2}, "6")["id"]
        now[0] += 10
        real_delete = state.datastore.delete

        def delete(caller: Any, collection: Any, record_id: Any) -> str:
            if record_id == first:  # meanwhile a user replaces the other record
                real_delete(user, "c", victim)
                state.datastore.upsert(user, "c", victim, {"n": 3})
            return real_delete(caller, collection, record_id)

        state.datastore.delete = delete  # type: ignore[method-assign]
        try:
            assert ttl.expire_due() == 1
        finally:
            state.datastore.delete = real_delete  # type: ignore[method-assign]
        assert state.datastore.get(user, "c", victim) == {"id": victim, "n": 3}
        assert ttl.expire_due() == 0  # nothing left scheduled for the new record
    finally:
        state.close()


# ------------------------------------------------------------------ TTLs the SDK sends


@pytest.mark.parametrize(("ttl", "wire"), [(90, "90s"), (2.0, "2s"), (1.5, "1500ms"),
                                           (0.001, "1ms"), (0.0015, "2ms")])
def test_ttl_is_sent_in_a_form_the_server_parses(ttl: float, wire: str) -> None:
    from ekoclient._services.actions import ttl_wire
    from mock_server.kv import parse_ttl

    assert ttl_wire(ttl) == wire
    assert parse_ttl(wire) == pytest.approx(float(wire.removesuffix("ms")) / 1000
                                            if wire.endswith("ms") else ttl)


def test_a_fractional_ttl_is_accepted_and_a_sub_millisecond_one_refused(admin: Client,
                                                                         coll: str) -> None:
    rid = admin.datastore.insert(coll, {"n": 1}, ttl=0.25)["id"]
    eventually(lambda: _gone(admin, coll, rid))
    for tiny in (0.00001, 1e-9):
        with pytest.raises(InvalidArgumentError, match="at least 1 ms"):
            admin.datastore.insert(coll, {"n": 2}, ttl=tiny)
    with pytest.raises(InvalidArgumentError, match="positive"):
        admin.datastore.insert(coll, {"n": 3}, ttl=float("inf"))
    assert admin.datastore.find(coll) == []
