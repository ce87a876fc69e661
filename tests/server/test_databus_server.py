"""DataBus domain, /api/bus routes and the /api/ws WebSocket (server side).

Changes are published straight into the ChangeFeed here (the DataStore routes publish the same
objects), so these tests pin the bus itself; tests/test_databus.py drives it end to end.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from mock_server.changes import Change, ChangeFeed
from mock_server.crypto import KeyRing
from mock_server.databus import DataBus
from mock_server.errors import ApiError
from mock_server.permissions import Scope
from mock_server.pytest_plugin import ServerInfo
from mock_server.state import AppState
from mock_server.storage import DB_FILE, Storage
from tests.server.conftest import Api, assert_error, recv_op

ADMIN = Scope.from_raw({}, is_admin=True, read_only=False)


def scope(perms: dict[str, Any]) -> Scope:
    return Scope.from_raw(perms, is_admin=False, read_only=False)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[tuple[DataBus, ChangeFeed, Storage, Clock]]:
    storage = Storage(tmp_path)
    feed = ChangeFeed()
    clock = Clock()
    yield DataBus(storage, KeyRing(os.urandom(32)), feed, clock=clock), feed, storage, clock
    storage.close()


def emit(feed: ChangeFeed, storage: Storage, collection: str, rid: str, op: str,
         record: dict[str, Any] | None) -> None:
    change = Change(collection, rid, op, record, "key_writer", time.time())  # type: ignore[arg-type]
    with storage.transaction() as conn:
        feed.publish_in_transaction([change], conn)
    feed.publish_committed([change])


# ------------------------------------------------------------------------------ domain


def test_patterns_and_record_filter_select_events(bus: Any) -> None:
    b, feed, st, _ = bus
    flt = {"type": "Condition", "content": {"field": "team", "operator": "Eq", "value": "a"}}
    b.subscribe("k1", ADMIN, "s", collections=["team_*"], filter=flt)
    emit(feed, st, "team_x", "r1", "insert", {"id": "r1", "team": "a"})
    emit(feed, st, "team_x", "r2", "insert", {"id": "r2", "team": "b"})  # filtered out
    emit(feed, st, "other", "r3", "insert", {"id": "r3", "team": "a"})  # not selected
    emit(feed, st, "team_y", "r4", "delete", None)  # deletes: no content to filter on
    events, more = b.poll("k1", ADMIN, "s", limit=10)
    assert [(e["record_id"], e["operation"]) for e in events] == [("r1", "insert"),
                                                                  ("r4", "delete")]
    assert events[0]["content"] == {"id": "r1", "team": "a"} and events[1]["content"] is None
    assert more is False


def test_unclaimed_changes_to_one_record_merge_into_the_latest(bus: Any) -> None:
    b, feed, st, _ = bus
    b.subscribe("k1", ADMIN, "s", collections=["c"])
    emit(feed, st, "c", "r1", "insert", {"id": "r1", "v": 1})
    emit(feed, st, "c", "r1", "update", {"id": "r1", "v": 2})
    [event], _ = b.poll("k1", ADMIN, "s")
    assert (event["operation"], event["content"]["v"]) == ("update", 2)
    # a claimed event is never merged into: the holder acks what it saw, the news comes next
    emit(feed, st, "c", "r1", "delete", None)
    assert b.ack("k1", ADMIN, "s", [event["key"]]) == [event["key"]]
    [after], _ = b.poll("k1", ADMIN, "s")
    assert after["operation"] == "delete"


def test_claims_expire_ack_removes_renew_extends_has_more(bus: Any) -> None:
    b, feed, st, clock = bus
    b.subscribe("k1", ADMIN, "s", collections=["c"])
    for i in range(3):
        emit(feed, st, "c", f"r{i}", "insert", {"id": f"r{i}"})
    first, more = b.poll("k1", ADMIN, "s", limit=2, claim_ttl=10)
    assert len(first) == 2 and more is True
    rest, more = b.poll("k1", ADMIN, "s", limit=2, claim_ttl=10)
    assert [e["record_id"] for e in rest] == ["r2"] and more is False
    assert b.poll("k1", ADMIN, "s")[0] == []  # all claimed
    assert b.renew("k1", ADMIN, "s", [first[0]["key"]], claim_ttl=100) == [first[0]["key"]]
    b.ack("k1", ADMIN, "s", [first[1]["key"]])
    clock.now += 11  # r1's and r2's claims lapse; r0's renewed one holds; r1 was acked
    again, _ = b.poll("k1", ADMIN, "s")
    assert [e["record_id"] for e in again] == ["r2"]
    assert b.size("k1", ADMIN, "s") == 2
    assert len(b.peek("k1", ADMIN, "s")) == 2  # peek sees claimed events, claims nothing


def test_events_and_subscriptions_expire(bus: Any) -> None:
    b, feed, st, clock = bus
    b.subscribe("k1", ADMIN, "s", collections=["c"], ttl=100, event_ttl=10)
    emit(feed, st, "c", "r1", "insert", {"id": "r1"})
    clock.now += 11
    assert b.poll("k1", ADMIN, "s") == ([], False)
    clock.now += 100
    with pytest.raises(ApiError) as err:
        b.get("k1", ADMIN, "s")
    assert err.value.status == 404
    # the name is free again, for anyone, and starts empty
    b.subscribe("k2", ADMIN, "s", collections=["c"])
    assert b.size("k2", ADMIN, "s") == 0


def test_field_rules_are_applied_with_the_scope_at_delivery(bus: Any) -> None:
    b, feed, st, _ = bus
    wide = scope({"c": ["read"], "bus:*": ["read", "write"]})
    b.subscribe("k1", wide, "s", collections=["c", "d*"])
    emit(feed, st, "c", "r1", "insert", {"id": "r1", "name": "n", "secret": "s3cr3t"})
    emit(feed, st, "d", "r2", "insert", {"id": "r2"})
    narrowed = scope({"c": {"read": True, "exclude_fields": ["secret"]},
                      "bus:*": ["read", "write"]})
    events, _ = b.poll("k1", narrowed, "s")
    assert [e["content"] for e in events] == [{"id": "r1", "name": "n"}]  # d: never readable
    assert b.size("k1", narrowed, "s") == 1  # r1 (claimed); the unreadable one was dropped


def test_names_are_per_key_and_the_bus_permission_table_holds(bus: Any) -> None:
    b, feed, st, _ = bus
    b.subscribe("k1", ADMIN, "s", collections=["c"])
    for call in (lambda: b.poll("k2", ADMIN, "s"), lambda: b.ack("k2", ADMIN, "s", ["x"]),
                 lambda: b.unsubscribe("k2", ADMIN, "s"), lambda: b.get("k2", ADMIN, "s"),
                 lambda: b.peek("k2", ADMIN, "s"), lambda: b.size("k2", ADMIN, "s")):
        with pytest.raises(ApiError) as err:  # the same answer as for a free name
            call()
        assert err.value.status == 404
    b.subscribe("k2", ADMIN, "s", collections=["d"])  # k2's own "s", not k1's
    emit(feed, st, "c", "r1", "insert", {"id": "r1"})
    assert (b.size("k1", ADMIN, "s"), b.size("k2", ADMIN, "s")) == (1, 0)
    assert b.get("k1", ADMIN, "s").collections == ("c",)
    with pytest.raises(ApiError) as err:
        b.subscribe("k3", scope({"c": ["read"]}), "t", collections=["c"])  # no bus:t
    assert err.value.status == 403
    with pytest.raises(ApiError) as err:  # may not subscribe to what it cannot read
        b.subscribe("k3", scope({"bus:*": ["read", "write"]}), "t", collections=["c"])
    assert err.value.status == 403
    looker = scope({"c": ["read"], "bus:*": ["read"]})  # READ looks, WRITE consumes
    with pytest.raises(ApiError) as err:
        b.subscribe("k4", looker, "t", collections=["c"])
    assert err.value.status == 403
    b.subscribe("k4", scope({"c": ["read"], "bus:*": ["read", "write"]}), "t",
                collections=["c"])
    emit(feed, st, "c", "r2", "insert", {"id": "r2"})
    assert [e["record_id"] for e in b.peek("k4", looker, "t")] == ["r2"]
    assert b.size("k4", looker, "t") == 1
    for call in (lambda: b.poll("k4", looker, "t"), lambda: b.ack("k4", looker, "t", ["x"]),
                 lambda: b.renew("k4", looker, "t", ["x"]),
                 lambda: b.unsubscribe("k4", looker, "t")):
        with pytest.raises(ApiError) as err:
            call()
        assert err.value.status == 403


def test_event_rows_commit_with_the_write_or_not_at_all(bus: Any) -> None:
    b, feed, st, _ = bus
    b.subscribe("k1", ADMIN, "s", collections=["c"])
    change = Change("c", "r1", "insert", {"id": "r1"}, "w", time.time())
    with pytest.raises(RuntimeError), st.transaction() as conn:
        feed.publish_in_transaction([change], conn)
        raise RuntimeError("the record write failed")
    assert b.size("k1", ADMIN, "s") == 0


def test_payloads_and_filters_are_encrypted_at_rest(bus: Any, tmp_path: Path) -> None:
    b, feed, st, _ = bus
    marker = "plainmarker" + secrets.token_hex(4)
    flt = {"type": "Condition", "content": {"field": "v", "operator": "Ne", "value": marker}}
    b.subscribe("k1", ADMIN, "s", collections=["c"], filter=flt)
    emit(feed, st, "c", "r1", "insert", {"id": "r1", "v": marker + "x"})
    st.conn.execute("PRAGMA wal_checkpoint(FULL)")
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith(DB_FILE))
    assert marker.encode() not in raw


# ------------------------------------------------------------------------------ HTTP routes


def publish(info: ServerInfo, collection: str, rid: str, record: dict[str, Any] | None,
            op: str = "insert") -> None:
    state: AppState | None = info.server.state
    assert state is not None
    emit(state.changes, state.storage, collection, rid, op, record)


def test_routes_poll_ack_renew_peek_size(api: Api) -> None:
    h = api.admin
    name = "routes_" + secrets.token_hex(4)
    coll = "bus_" + secrets.token_hex(4)
    r = api.http.put(f"/api/bus/subscriptions/{name}", json={"collections": [coll]}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["collections"] == [coll]
    assert name in [s["name"] for s in api.http.get("/api/bus/subscriptions", headers=h).json()]
    for i in range(3):
        publish(api.info, coll, f"r{i}", {"id": f"r{i}", "n": i})
    base = f"/api/bus/subscriptions/{name}"
    r = api.http.post(f"{base}/poll", params={"limit": 2, "claim_ttl": 30}, headers=h)
    body = r.json()
    assert body["has_more"] is True and len(body["events"]) == 2
    assert set(body["events"][0]) == {"key", "collection", "record_id", "operation", "content",
                                      "timestamp"}
    keys = [e["key"] for e in body["events"]]
    r = api.http.post(f"{base}/renew", json={"keys": keys[:1], "claim_ttl": 60}, headers=h)
    assert r.json() == {"renewed": keys[:1]}
    r = api.http.post(f"{base}/ack", json={"keys": [*keys, "not-a-key"]}, headers=h)
    assert r.json() == {"acked": keys}
    assert api.http.get(f"{base}/size", headers=h).json() == {"size": 1}
    assert len(api.http.get(f"{base}/peek", headers=h).json()["events"]) == 1
    assert api.http.delete(base, headers=h).status_code == 200
    assert_error(api.http.get(base, headers=h), 404, "not_found")


def test_routes_refuse_other_keys_and_bad_input(api: Api) -> None:
    name = "owned_" + secrets.token_hex(4)
    api.http.put(f"/api/bus/subscriptions/{name}", json={"collections": ["c"]},
                 headers=api.admin)
    other = api.headers(api.create_key("other", collection_permissions={
        "c": ["read"], "bus:*": ["read", "write"]})["api_key"])
    base = f"/api/bus/subscriptions/{name}"
    assert_error(api.http.post(f"{base}/poll", headers=other), 404, "not_found")
    assert_error(api.http.post(f"{base}/ack", json={"keys": ["x"]}, headers=other), 404)
    assert_error(api.http.delete(base, headers=other), 404)
    assert name not in [s["name"] for s in
                        api.http.get("/api/bus/subscriptions", headers=other).json()]
    h = api.admin
    bad_filter = {"collections": ["c"], "filter": {"type": "Nope", "content": {}}}
    assert_error(api.http.put(base, json=bad_filter, headers=h), 400)
    assert_error(api.http.put(base, json={"collections": ["blob:x"]}, headers=h), 400)
    assert_error(api.http.put(base, json={"collections": []}, headers=h), 400)
    assert_error(api.http.post(f"{base}/poll", params={"limit": 0}, headers=h), 400)
    assert_error(api.http.post(f"{base}/ack", json={"keys": "x"}, headers=h), 400)
    assert_error(api.http.post("/api/bus/subscriptions/nope_zz/poll", headers=h), 404)


# ------------------------------------------------------------------------------ WebSocket


def ws_url(info: ServerInfo) -> str:
    return info.url.replace("https://", "wss://") + "/api/ws"


@pytest.fixture
def ws_open(ekodb_server: ServerInfo) -> Iterator[Any]:
    opened: list[ClientConnection] = []
    ctx = ssl.create_default_context(cafile=str(ekodb_server.ca_bundle))
    # websockets' threaded sync client races on one SSL object under TLS 1.3 (a rare
    # handshake timeout, then a hang); ekoclient's blocking driver caps TLS 1.2 for the same
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2

    def open_ws(token: str) -> ClientConnection:
        ws = connect(ws_url(ekodb_server), ssl=ctx, open_timeout=10, close_timeout=2,
                     additional_headers={"Authorization": f"Bearer {token}"})
        ws.__enter__()  # websockets >= 17.1 warns unless used as a context manager
        opened.append(ws)
        return ws

    yield open_ws
    for ws in opened:
        ws.close()




def test_ws_refuses_bad_tokens_with_4401_before_anything_else(ws_open: Any) -> None:
    ws = ws_open("not-a-token")
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4401, "invalid or expired token")


def test_ws_pushes_projected_events_and_acks(api: Api, ws_open: Any) -> None:
    coll = "wsc_" + secrets.token_hex(4)
    key = api.create_key("sub", collection_permissions={
        coll: {"read": True, "exclude_fields": ["secret"]},
        "bus:*": ["read", "write"]})["api_key"]
    token = api.token(key)
    name = "ws_" + secrets.token_hex(4)
    r = api.http.put(f"/api/bus/subscriptions/{name}", json={"collections": [coll]},
                     headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    ws = ws_open(token)
    ws.send(json.dumps({"op": "subscribe", "subscription": name}))
    assert recv_op(ws, "subscribed")["subscription"] == name
    publish(api.info, coll, "r1", {"id": "r1", "name": "n", "secret": "hidden"})
    event = recv_op(ws, "event")["event"]
    assert event["content"] == {"id": "r1", "name": "n"}
    ws.send(json.dumps({"op": "ack", "keys": [event["key"], "foreign-key"]}))
    assert recv_op(ws, "acked")["keys"] == [event["key"]]
    ws.send(json.dumps({"op": "ping"}))
    recv_op(ws, "pong")
    size = api.http.get(f"/api/bus/subscriptions/{name}/size",
                        headers={"Authorization": f"Bearer {token}"}).json()
    assert size == {"size": 0}


def test_ws_unacked_events_return_on_reconnect(api: Api, ws_open: Any) -> None:
    coll = "wsr_" + secrets.token_hex(4)
    name = "wsr_" + secrets.token_hex(4)
    token = api.token(api.info.admin_key)
    api.http.put(f"/api/bus/subscriptions/{name}", json={"collections": [coll]},
                 headers={"Authorization": f"Bearer {token}"})
    publish(api.info, coll, "r1", {"id": "r1"})
    first = ws_open(token)
    first.send(json.dumps({"op": "subscribe", "subscription": name}))
    key = recv_op(first, "event")["event"]["key"]
    first.close()
    second = ws_open(token)
    second.send(json.dumps({"op": "subscribe", "subscription": name}))
    assert recv_op(second, "event")["event"]["key"] == key  # released on close, not lost


def test_ws_bad_frames_get_errors_and_oversized_ones_close(api: Api, ws_open: Any) -> None:
    token = api.token(api.info.admin_key)
    ws = ws_open(token)
    ws.send("{not json")
    assert recv_op(ws, "error")["code"] == "bad_request"
    ws.send(json.dumps({"op": "launch"}))
    assert recv_op(ws, "error")["code"] == "bad_request"
    ws.send(json.dumps({"op": "subscribe", "subscription": "does_not_exist_zz"}))
    err = recv_op(ws, "error")
    assert (err["code"], err["request"]) == ("not_found", "subscribe")
    ws.send(json.dumps({"op": "ping"}))
    recv_op(ws, "pong")  # still serving after all of that
    ws.send("x" * (65 * 1024))
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_ws_closes_with_4401_when_the_key_is_revoked(api: Api, ws_open: Any) -> None:
    new = api.create_key("doomed", collection_permissions={"bus:*": ["read"]})
    ws = ws_open(api.token(new["api_key"]))
    ws.send(json.dumps({"op": "ping"}))
    recv_op(ws, "pong")
    assert api.http.delete(f"/api/auth/keys/{new['key_id']}", headers=api.admin).status_code \
        == 200
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
