"""ekoDB's live change feeds on the reference server over TLS: ``GET /api/subscribe/{c}``
(Server-Sent Events) and ``Subscribe`` / ``MutationNotification`` on ``/api/ws``, with field
rules applied, permissions checked and bad input refused."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection

from tests.server.conftest import Api, assert_error
from tests.server.test_databus_server import ws_open  # noqa: F401 - fixture

H = dict[str, str]


@pytest.fixture
def coll(api: Api) -> Iterator[str]:
    name = "feed_" + uuid.uuid4().hex[:10]
    assert api.http.post(f"/api/collections/{name}", headers=api.admin).status_code == 200
    yield name
    api.http.delete(f"/api/collections/{name}", headers=api.admin)


class Sse:
    """Reads events from one open SSE response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.iter_lines()

    def next(self, timeout: float = 10) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout
        event, data = "message", ""
        for line in self.lines:
            assert time.monotonic() < deadline, "no event in time"
            if line.startswith(":"):
                continue
            if line == "":
                if data:
                    return event, json.loads(data)
                continue
            name, _, value = line.partition(": ")
            if name == "event":
                event = value
            elif name == "data":
                data += value
        raise AssertionError("stream ended")

    def mutation(self) -> dict[str, Any]:
        event, data = self.next()
        assert event == "mutation", (event, data)
        return dict(data)


@contextmanager
def sse(api: Api, coll: str, h: H, **params: str) -> Iterator[Sse]:
    timeout = httpx.Timeout(10, read=10)
    with api.http.stream("GET", f"/api/subscribe/{coll}", params=params, headers=h,
                         timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        stream = Sse(r)
        event, data = stream.next()
        assert event == "subscribed" and data["collection"] == coll
        yield stream


def test_sse_delivers_inserts_updates_and_deletes_through_field_rules(api: Api,
                                                                        coll: str) -> None:
    key = api.create_key(read_only=True, collection_permissions={
        coll: {"read": True, "exclude_fields": ["secret"]}})
    h = api.headers(key["api_key"])
    with sse(api, coll, h) as feed:
        r = api.http.post(f"/api/insert/{coll}", json={"name": "a", "secret": "s3cr3t"},
                          headers=api.admin)
        rid = r.json()["id"]
        ins = feed.mutation()
        assert ins["event"] == "insert" and ins["record_ids"] == [rid]
        assert ins["records"] == [{"id": rid, "name": "a"}]
        assert ins["collection"] == coll and ins["timestamp"].endswith("Z")
        api.http.put(f"/api/update/{coll}/{rid}", json={"name": "b", "secret": "x"},
                     headers=api.admin)
        upd = feed.mutation()
        assert upd["event"] == "update" and upd["records"] == [{"id": rid, "name": "b"}]
        api.http.delete(f"/api/delete/{coll}/{rid}", headers=api.admin)
        dele = feed.mutation()
        assert dele["event"] == "delete" and dele["record_ids"] == [rid]
        assert "records" not in dele


def test_sse_batch_is_one_notification_and_filter_selects_records(api: Api, coll: str) -> None:
    with sse(api, coll, api.admin, filter_field="team", filter_value="a") as feed:
        body = {"inserts": [{"data": {"team": "a", "n": 1}}, {"data": {"team": "b", "n": 2}},
                            {"data": {"team": "a", "n": 3}}]}
        api.http.post(f"/api/batch/insert/{coll}", json=body, headers=api.admin)
        note = feed.mutation()
        assert note["event"] == "insert" and [r["n"] for r in note["records"]] == [1, 3]
        assert len(note["record_ids"]) == 2


def test_sse_refuses_what_find_would_refuse(api: Api, coll: str) -> None:
    no_read = api.headers(api.create_key(collection_permissions={coll: ["write"]})["api_key"])
    hidden = api.headers(api.create_key(collection_permissions={
        coll: {"read": True, "exclude_fields": ["secret"]}})["api_key"])
    assert_error(api.http.get(f"/api/subscribe/{coll}", headers=no_read), 403)
    assert_error(api.http.get(f"/api/subscribe/{coll}", headers=hidden,
                              params={"filter_field": "secret", "filter_value": "x"}), 403)
    assert_error(api.http.get(f"/api/subscribe/{coll}", headers=api.admin,
                              params={"filter_field": "team"}), 400)
    assert_error(api.http.get(f"/api/subscribe/{coll}", headers=api.admin,
                              params={"filter_field": "a..b", "filter_value": "x"}), 400)
    assert_error(api.http.get("/api/subscribe/feed_missing_zz", headers=api.admin), 404)
    assert_error(api.http.get(f"/api/subscribe/{coll}"), 401)


def test_sse_stream_ends_with_an_error_when_the_key_is_revoked(api: Api, coll: str) -> None:
    key = api.create_key(collection_permissions={coll: ["read"]})
    h = api.headers(key["api_key"])
    with sse(api, coll, h) as feed:
        r = api.http.delete(f"/api/auth/keys/{key['key_id']}", headers=api.admin)
        assert r.status_code == 200, r.text
        event, data = feed.next()
        assert event == "error" and data["code"] in ("unauthorized", "invalid_token"), data


def test_sse_stream_outlives_an_edit_that_keeps_the_keys_rights(api: Api, coll: str) -> None:
    """A relabel bumps the key's version (its tokens stop working) but revokes nothing: the
    feed keeps delivering across several re-checks (one per second)."""
    key = api.create_key(collection_permissions={coll: ["read"]})
    with sse(api, coll, api.headers(key["api_key"])) as feed:
        r = api.http.put(f"/api/auth/keys/{key['key_id']}", headers=api.admin,
                         json={"label": "relabelled"})
        assert r.status_code == 200, r.text
        edited = time.monotonic()
        while time.monotonic() - edited < 2.5:  # past at least two re-checks
            rid = api.http.post(f"/api/insert/{coll}", json={"n": 1},
                                headers=api.admin).json()["id"]
            assert feed.mutation()["record_ids"] == [rid]


@pytest.mark.parametrize("change", ["narrow", "rotate"])
def test_sse_stream_ends_when_the_key_loses_read_or_is_rotated(api: Api, coll: str,
                                                               change: str) -> None:
    key = api.create_key(collection_permissions={coll: ["read"]})
    with sse(api, coll, api.headers(key["api_key"])) as feed:
        if change == "narrow":
            r = api.http.put(f"/api/auth/keys/{key['key_id']}", headers=api.admin,
                             json={"collection_permissions": {"other": ["read"]}})
        else:
            r = api.http.post(f"/api/auth/keys/{key['key_id']}/rotate", headers=api.admin)
        assert r.status_code == 200, r.text
        event, data = feed.next()
        assert event == "error", (event, data)
        assert data["code"] == ("forbidden" if change == "narrow" else "unauthorized"), data


def test_sse_feeds_per_key_are_capped_and_released(ekodb_server_factory: Any) -> None:
    info = ekodb_server_factory(ws_max_sockets_per_key=2)
    api = Api(info)
    try:
        name = "feed_" + uuid.uuid4().hex[:10]
        assert api.http.post(f"/api/collections/{name}", headers=api.admin).status_code == 200
        key = api.create_key(collection_permissions={name: ["read"]})
        h = api.headers(key["api_key"])
        with sse(api, name, h), sse(api, name, h):
            err = assert_error(api.http.get(f"/api/subscribe/{name}", headers=h), 429,
                               "too_many_feeds")
            assert "at most 2" in err["message"]
            with sse(api, name, api.admin):  # another key's feeds are its own
                pass
        for _ in range(3):  # refused subscribes hold nothing
            assert_error(api.http.get(f"/api/subscribe/{name}", headers=h,
                                      params={"filter_field": "x"}), 400)
        deadline = time.monotonic() + 10
        while True:  # both closed: the server releases them when it notices
            try:
                with sse(api, name, h), sse(api, name, h):
                    break
            except AssertionError:
                assert time.monotonic() < deadline, "closed feeds never released"
                time.sleep(0.1)
    finally:
        api.close()


# ------------------------------------------------------------------------------ WebSocket


def recv_type(ws: ClientConnection, kind: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        if frame.get("type") == kind:
            return dict(frame)
        assert frame.get("op") == "heartbeat" or frame.get("type") is None, frame


def test_ws_subscribe_receives_projected_mutation_notifications(
        api: Api, coll: str, ws_open: Any) -> None:  # noqa: F811
    key = api.create_key(collection_permissions={
        coll: {"read": True, "exclude_fields": ["secret"]}})
    ws = ws_open(api.token(key["api_key"]))
    ws.send(json.dumps({"type": "Subscribe", "messageId": "m1",
                        "payload": {"collection": coll}}))
    ok = recv_type(ws, "Success")
    assert ok["messageId"] == "m1" and ok["payload"]["data"]["collection"] == coll
    assert ok["payload"]["data"]["subscription_id"].startswith("sub_")
    rid = api.http.post(f"/api/insert/{coll}", json={"name": "a", "secret": "s"},
                        headers=api.admin).json()["id"]
    note = recv_type(ws, "MutationNotification")["payload"]
    assert note["event"] == "insert" and note["records"] == [{"id": rid, "name": "a"}]
    api.http.put(f"/api/update/{coll}/{rid}", json={"name": "b"}, headers=api.admin)
    assert recv_type(ws, "MutationNotification")["payload"]["records"] == [
        {"id": rid, "name": "b"}]
    api.http.delete(f"/api/delete/{coll}/{rid}", headers=api.admin)
    dele = recv_type(ws, "MutationNotification")["payload"]
    assert dele["event"] == "delete" and dele["record_ids"] == [rid]
    ws.send(json.dumps({"type": "Unsubscribe", "messageId": "m2",
                        "payload": {"collection": coll}}))
    assert recv_type(ws, "Success")["payload"]["data"]["unsubscribed"] == coll
    gone = api.http.post(f"/api/insert/{coll}", json={"name": "unseen"},
                         headers=api.admin).json()["id"]
    ws.send(json.dumps({"type": "Subscribe", "payload": {"collection": coll}}))
    recv_type(ws, "Success")
    seen = api.http.post(f"/api/insert/{coll}", json={"name": "seen"},
                         headers=api.admin).json()["id"]
    # nothing was delivered for the write made while unsubscribed
    assert recv_type(ws, "MutationNotification")["payload"]["record_ids"] == [seen]
    assert gone != seen


def test_ws_subscribe_errors_name_the_problem(api: Api, coll: str,
                                              ws_open: Any) -> None:  # noqa: F811
    no_read = api.create_key(collection_permissions={coll: ["write"]})
    ws = ws_open(api.token(no_read["api_key"]))
    ws.send(json.dumps({"type": "Subscribe", "messageId": "a", "payload": {"collection": coll}}))
    err = recv_type(ws, "Error")
    assert err["code"] == 403 and err["messageId"] == "a"
    ws.send(json.dumps({"type": "Subscribe", "messageId": "b",
                        "payload": {"collection": "feed_missing_zz"}}))
    assert recv_type(ws, "Error")["code"] in (403, 404)
    ws.send(json.dumps({"type": "ChatSend", "payload": {}}))
    assert recv_type(ws, "Error")["code"] == 400
    ws.send(json.dumps({"type": "Subscribe"}))
    assert recv_type(ws, "Error")["code"] == 400
    admin_ws = ws_open(api.token(api.info.admin_key))
    admin_ws.send(json.dumps({"type": "Subscribe", "messageId": "c",
                              "payload": {"collection": "feed_missing_zz"}}))
    assert recv_type(admin_ws, "Error")["code"] == 404
    # the DataBus op protocol still works on the same socket
    admin_ws.send(json.dumps({"op": "ping"}))
    frame = json.loads(admin_ws.recv(timeout=10))
    while frame.get("op") == "heartbeat":
        frame = json.loads(admin_ws.recv(timeout=10))
    assert frame == {"op": "pong"}


def _wait_for(predicate: Any, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def test_feeds_are_released_when_clients_go_away(api: Api, coll: str,
                                                 ws_open: Any) -> None:  # noqa: F811
    state = api.info.server.state
    assert state is not None
    with sse(api, coll, api.admin):
        assert state.realtime.open_count() >= 1
        ws = ws_open(api.token(api.info.admin_key))
        ws.send(json.dumps({"type": "Subscribe", "payload": {"collection": coll}}))
        recv_type(ws, "Success")
        assert state.realtime.open_count() >= 2
        ws.close()
    assert _wait_for(lambda: state.realtime.open_count() == 0)
