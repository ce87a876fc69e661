"""Authorization over the wire (issue 13, items 4-8 and 11): field rules through arrays on
every channel, deletes under field rules, the queue permission table, delegated admins,
idempotent replays and per-key DataBus names. Real server, real TLS sockets."""

from __future__ import annotations

import json
import secrets
import ssl
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from mock_server.pytest_plugin import ServerInfo
from tests.server.conftest import Api, assert_error, recv_op

H = dict[str, str]


def key(api: Api, permissions: dict[str, Any], **extra: Any) -> H:
    """Bearer headers of a fresh key with these collection permissions."""
    return api.headers(api.create_key("authz", collection_permissions=permissions,
                                      **extra)["api_key"])


def collection(api: Api) -> str:
    name = f"az_{uuid.uuid4().hex[:10]}"
    r = api.http.post(f"/api/collections/{name}", headers=api.admin)
    assert r.status_code == 200, r.text
    return name


def insert(api: Api, coll: str, record: dict[str, Any], h: H | None = None) -> str:
    r = api.http.post(f"/api/insert/{coll}", json=record, headers=h or api.admin)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def get(api: Api, coll: str, rid: str, h: H | None = None) -> dict[str, Any]:
    r = api.http.get(f"/api/find/{coll}/{rid}", headers=h or api.admin)
    assert r.status_code == 200, r.text
    record: dict[str, Any] = r.json()
    return record


# --------------------------------------------------------------- 4: field rules in arrays

ORDER = {"customer": "ann", "items": [{"sku": "a", "qty": 1, "secret": "s-one"},
                                      {"sku": "b", "qty": 2, "secret": "s-two",
                                       "parts": [{"secret": "s-deep", "n": 1}]},
                                      "note"]}


def hidden(value: Any) -> bool:
    """True when no secret of ORDER appears anywhere in ``value``."""
    text = json.dumps(value)
    return "s-one" not in text and "s-two" not in text and "s-deep" not in text


@pytest.fixture
def ws_open(ekodb_server: ServerInfo) -> Iterator[Any]:
    opened: list[ClientConnection] = []
    ctx = ssl.create_default_context(cafile=str(ekodb_server.ca_bundle))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # as in test_databus_server (sync client)
    url = ekodb_server.url.replace("https://", "wss://") + "/api/ws"

    def open_ws(h: H) -> ClientConnection:
        ws = connect(url, ssl=ctx, open_timeout=10, close_timeout=2, additional_headers=h)
        ws.__enter__()
        opened.append(ws)
        return ws

    yield open_ws
    for ws in opened:
        ws.close()




def test_exclude_inside_arrays_holds_on_get_find_and_write_answers(api: Api) -> None:
    coll = collection(api)
    rid = insert(api, coll, ORDER)
    h = key(api, {coll: {"read": True, "write": True,
                         "exclude_fields": ["items.secret", "items.parts.secret"]}})
    seen = get(api, coll, rid, h)
    assert hidden(seen)
    assert seen["items"][0] == {"sku": "a", "qty": 1}
    assert seen["items"][1]["parts"] == [{"n": 1}]
    assert seen["items"][2] == "note"  # exclusion keeps what it does not name
    found = api.http.post(f"/api/find/{coll}", json={}, headers=h).json()
    assert len(found) == 1 and hidden(found)
    updated = api.http.put(f"/api/update/{coll}/{rid}", json={"customer": "bob"}, headers=h)
    assert updated.status_code == 200 and hidden(updated.json())
    # the secrets are still stored: only this key's view hides them
    assert get(api, coll, rid)["items"][0]["secret"] == "s-one"


def test_request_exclude_and_select_reach_into_arrays_too(api: Api) -> None:
    coll = collection(api)
    rid = insert(api, coll, ORDER)
    r = api.http.get(f"/api/find/{coll}/{rid}", headers=api.admin,
                     params={"exclude_fields": "items.secret,items.parts.secret"})
    assert hidden(r.json())
    r = api.http.post(f"/api/find/{coll}", headers=api.admin,
                      json={"select_fields": ["items.sku"]})
    assert r.json() == [{"id": rid, "items": [{"sku": "a"}, {"sku": "b"}]}]


def test_select_inside_arrays_keeps_only_the_selected_members(api: Api) -> None:
    coll = collection(api)
    rid = insert(api, coll, ORDER)
    h = key(api, {coll: {"read": True, "select_fields": ["customer", "items.sku"]}})
    assert get(api, coll, rid, h) == {"id": rid, "customer": "ann",
                                      "items": [{"sku": "a"}, {"sku": "b"}]}
    r = api.http.post(f"/api/find/{coll}", json={"filter": {"type": "Condition", "content": {
        "field": "items.secret", "operator": "Eq", "value": "s-one"}}}, headers=h)
    assert_error(r, 403, "forbidden")


def test_exclude_inside_arrays_holds_on_databus_poll_and_websocket(api: Api,
                                                                   ws_open: Any) -> None:
    coll = collection(api)
    h = key(api, {coll: {"read": True, "exclude_fields": ["items.secret",
                                                          "items.parts.secret"]},
                  "bus:*": ["read", "write"]})
    polled, pushed = "az_poll_" + secrets.token_hex(4), "az_push_" + secrets.token_hex(4)
    for name in (polled, pushed):
        r = api.http.put(f"/api/bus/subscriptions/{name}", json={"collections": [coll]},
                         headers=h)
        assert r.status_code == 200, r.text
    ws = ws_open(h)
    ws.send(json.dumps({"op": "subscribe", "subscription": pushed}))
    recv_op(ws, "subscribed")
    insert(api, coll, ORDER)
    event = recv_op(ws, "event")["event"]
    assert event["content"]["customer"] == "ann" and hidden(event)
    r = api.http.post(f"/api/bus/subscriptions/{polled}/poll", headers=h)
    (event,) = r.json()["events"]
    assert event["content"]["items"][0] == {"sku": "a", "qty": 1} and hidden(event)
    peeked = api.http.get(f"/api/bus/subscriptions/{polled}/peek", headers=h).json()
    assert peeked["events"] and hidden(peeked)


def test_writing_a_hidden_member_of_an_array_is_refused_without_echoing_values(
        api: Api) -> None:
    coll = collection(api)
    rid = insert(api, coll, ORDER)
    h = key(api, {coll: {"read": True, "write": True, "exclude_fields": ["items.secret"]}})
    bad = {"items": [{"sku": "a", "qty": 1, "secret": "guess-value"}]}
    err = assert_error(api.http.put(f"/api/update/{coll}/{rid}", json=bad, headers=h), 403)
    assert "items.secret" in err["message"]
    assert "guess-value" not in err["message"] and hidden(err)
    # replacing the array would drop the members it cannot see: refused too
    r = api.http.put(f"/api/update/{coll}/{rid}", json={"items": [{"sku": "a"}]}, headers=h)
    assert_error(r, 403)
    batch = api.http.put(f"/api/batch/update/{coll}", headers=h,
                         json={"updates": [{"id": rid, "data": bad}]}).json()
    assert batch["successful"] == [] and hidden(batch) and "guess-value" not in str(batch)
    assert get(api, coll, rid)["items"][0]["secret"] == "s-one"


def test_writable_fields_through_arrays_allow_exactly_those_members(api: Api) -> None:
    coll = collection(api)
    rid = insert(api, coll, {"items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}]})
    h = key(api, {coll: {"read": True, "write": True, "writable_fields": ["items.qty"]}})
    ok = {"items": [{"sku": "a", "qty": 5}, {"sku": "b", "qty": 2}]}
    r = api.http.put(f"/api/update/{coll}/{rid}", json=ok, headers=h)
    assert r.status_code == 200, r.text
    assert get(api, coll, rid)["items"] == ok["items"]
    for bad in ({"items": [{"sku": "HACK", "qty": 5}, {"sku": "b", "qty": 2}]},  # other member
                {"items": [{"sku": "a", "qty": 5}]},  # drops an element
                {"items": [{"sku": "b", "qty": 2}, {"sku": "a", "qty": 5}]},  # reorders
                {"items": [{"sku": "a", "qty": 5, "extra": 1}, {"sku": "b", "qty": 2}]}):
        assert_error(api.http.put(f"/api/update/{coll}/{rid}", json=bad, headers=h), 403)
    assert get(api, coll, rid)["items"] == ok["items"]
    # an insert may create the writable members only
    assert insert(api, coll, {"items": [{"qty": 1}]}, h)
    r = api.http.post(f"/api/insert/{coll}", json={"items": [{"qty": 1, "sku": "x"}]}, headers=h)
    assert_error(r, 403)


def test_field_names_inside_arrays_must_be_addressable(api: Api) -> None:
    coll = collection(api)
    r = api.http.post(f"/api/insert/{coll}", json={"items": [{"a.b": 1}]}, headers=api.admin)
    err = assert_error(r, 400, "validation_error")
    assert "items.a.b" in err["message"]


# --------------------------------------------------------------- 5: deletes

def delete_via(api: Api, path: int, coll: str, rid: str, h: H) -> httpx.Response:
    """One of the ways to delete one record: 0 by id, 1 batch by ids, 2 batch by filter,
    3 by id inside a transaction (committed when the delete itself was accepted)."""
    if path == 0:
        return api.http.delete(f"/api/delete/{coll}/{rid}", headers=h)
    if path == 3:
        tx = api.http.post("/api/transactions", headers=h, json={})
        assert tx.status_code == 200, tx.text
        txid = tx.json()["transaction_id"]
        resp = api.http.delete(f"/api/delete/{coll}/{rid}", headers=h,
                               params={"transaction_id": txid})
        if resp.status_code == 200:
            done = api.http.post(f"/api/transactions/{txid}/commit", headers=h)
            assert done.status_code == 200, done.text
        return resp
    body: dict[str, Any] = {"deletes": [{"id": rid}]} if path == 1 else {"filter": {
        "type": "Condition", "content": {"field": "name", "operator": "Eq", "value": "keep"}}}
    return api.http.request("DELETE", f"/api/batch/delete/{coll}", headers=h, json=body)


@pytest.mark.parametrize("rule", [
    {"read": True, "write": True, "writable_fields": ["name"]},
    {"read": True, "write": True, "exclude_fields": ["ssn"]},
    {"read": True, "write": True, "select_fields": ["name"]},
], ids=["writable_fields", "exclude_fields", "select_fields"])
def test_field_restricted_keys_cannot_delete_on_any_path(api: Api, rule: dict[str, Any]
                                                         ) -> None:
    coll = collection(api)
    rid = insert(api, coll, {"name": "keep", "ssn": "123"})
    h = key(api, {coll: rule})
    for path in range(4):
        err = assert_error(delete_via(api, path, coll, rid, h), 403, "forbidden")
        assert "delete" in err["message"]
    assert get(api, coll, rid)["name"] == "keep"


@pytest.mark.parametrize("rule", [["read", "write"], ["admin"],
                                  {"admin": True, "writable_fields": ["name"]}],
                         ids=["read-write", "admin", "admin-with-field-rules"])
def test_unrestricted_write_or_admin_level_may_delete(api: Api, rule: Any) -> None:
    coll = collection(api)
    h = key(api, {coll: rule})
    for i in range(4):  # each path deletes its own record
        rid = insert(api, coll, {"name": "keep"})
        resp = delete_via(api, i, coll, rid, h)
        assert resp.status_code == 200, (i, resp.text)
        expected = {"deleted": rid} if i in (0, 3) else {"successful": [rid], "failed": []}
        assert resp.json() == expected
        assert_error(api.http.get(f"/api/find/{coll}/{rid}", headers=api.admin), 404)


# --------------------------------------------------------------- 6: queue permission table

@pytest.mark.parametrize("kind", ["queue", "dedupq"])
@pytest.mark.parametrize("levels", [["read"], "read_only_key"])
def test_a_reading_key_cannot_empty_or_release_a_queue(api: Api, kind: str,
                                                       levels: Any) -> None:
    q = "azq_" + uuid.uuid4().hex[:10]
    dest = q + "_to"
    base = f"/api/{kind}/{q}"
    r = api.http.post(f"{base}/sendbatch", json=["a", "b", "c"], headers=api.admin)
    assert r.status_code == 200, r.text
    (claimed,) = api.http.post(f"{base}/poll", params={"limit": 1}, headers=api.admin).json()
    perms = {f"{kind}:*": ["read"] if levels == ["read"] else ["read", "write"]}
    h = key(api, perms, read_only=levels == "read_only_key")
    peeked = api.http.get(f"{base}/peek", headers=h).json()
    assert len(peeked) == 3  # looking is allowed: peek, size, claimcount
    assert api.http.get(f"{base}/size", headers=h).json() == {"size": 3}
    assert api.http.get(f"{base}/claimcount", headers=h).json() == {"count": 1}
    ids = [m["id"] for m in peeked]
    for resp in (api.http.post(f"{base}/ack", json={"ids": ids}, headers=h),
                 api.http.post(f"{base}/poll", headers=h),
                 api.http.post(f"{base}/renew", json={"ids": [claimed["id"]]}, headers=h),
                 api.http.post(f"{base}/unclaimall", headers=h),
                 api.http.post(f"{base}/send", json="x", headers=h),
                 api.http.delete(base, headers=h),
                 api.http.post(f"/api/{kind}/_move", params={"from": q, "to": dest}, headers=h)):
        err = assert_error(resp, 403, "forbidden")
        assert "write" in err["message"]
    assert api.http.get(f"{base}/size", headers=api.admin).json() == {"size": 3}
    assert api.http.get(f"{base}/claimcount", headers=api.admin).json() == {"count": 1}


def test_the_same_table_holds_on_the_databus(api: Api, ws_open: Any) -> None:
    coll = collection(api)
    new = api.create_key("bus", collection_permissions={coll: ["read"],
                                                        "bus:*": ["read", "write"]})
    h = api.headers(new["api_key"])
    name = "az_tbl_" + secrets.token_hex(4)
    base = f"/api/bus/subscriptions/{name}"
    assert api.http.put(base, json={"collections": [coll]}, headers=h).status_code == 200
    insert(api, coll, {"v": 1})
    # narrowed to looking only: the subscription stays, consuming it does not
    r = api.http.put(f"/api/auth/keys/{new['key_id']}", headers=api.admin, json={
        "collection_permissions": {coll: ["read"], "bus:*": ["read"]}})
    assert r.status_code == 200, r.text
    h = api.headers(new["api_key"])  # the change revoked the key's tokens
    (event,) = api.http.get(f"{base}/peek", headers=h).json()["events"]
    assert api.http.get(f"{base}/size", headers=h).json() == {"size": 1}
    assert api.http.get(base, headers=h).status_code == 200
    for resp in (api.http.post(f"{base}/poll", headers=h),
                 api.http.post(f"{base}/ack", json={"keys": [event["key"]]}, headers=h),
                 api.http.post(f"{base}/renew", json={"keys": [event["key"]]}, headers=h),
                 api.http.delete(base, headers=h),
                 api.http.put(base, json={"collections": [coll]}, headers=h)):
        assert_error(resp, 403, "forbidden")
    ws = ws_open(h)  # a push claims events, as a poll does
    ws.send(json.dumps({"op": "subscribe", "subscription": name}))
    err = recv_op(ws, "error")
    assert (err["code"], err["request"]) == ("forbidden", "subscribe")
    assert api.http.get(f"{base}/size", headers=h).json() == {"size": 1}


# --------------------------------------------------------------- 11: DataBus names per key

def test_subscription_names_are_per_key_no_oracle_no_squatting(api: Api) -> None:
    coll = collection(api)
    perms = {coll: ["read"], "bus:*": ["read", "write"]}
    ann, bob = key(api, perms), key(api, perms)
    name = "az_jobs_" + secrets.token_hex(4)
    base = f"/api/bus/subscriptions/{name}"
    assert api.http.put(base, json={"collections": [coll]}, headers=ann).status_code == 200
    free = f"/api/bus/subscriptions/az_free_{secrets.token_hex(4)}"
    # another key's name and a free name answer the same
    for taken, unused in ((api.http.get(base, headers=bob), api.http.get(free, headers=bob)),
                          (api.http.post(f"{base}/poll", headers=bob),
                           api.http.post(f"{free}/poll", headers=bob))):
        assert_error(taken, 404, "not_found")
        assert_error(unused, 404, "not_found")
        assert taken.json()["error"]["message"] == unused.json()["error"]["message"]
    # and nobody can squat a name: bob gets a subscription of his own by that name
    r = api.http.put(base, json={"collections": [coll], "ttl": 60}, headers=bob)
    assert r.status_code == 200, r.text
    insert(api, coll, {"v": 1})
    for h in (ann, bob):
        assert api.http.get(f"{base}/size", headers=h).json() == {"size": 1}
        assert [s["name"] for s in api.http.get("/api/bus/subscriptions", headers=h).json()
                if s["name"] == name] == [name]
    assert api.http.delete(base, headers=bob).status_code == 200
    assert api.http.get(f"{base}/size", headers=ann).json() == {"size": 1}  # ann's untouched


# --------------------------------------------------------------- 8: replays re-check the caller

def replayable(h: H) -> H:
    return {**h, "Idempotency-Key": "az-" + uuid.uuid4().hex}


def test_a_replay_to_a_revoked_or_rotated_key_is_refused(api: Api) -> None:
    for action in ("delete", "rotate"):
        minter = api.create_key("minter", is_admin=True)
        h = replayable(api.headers(minter["api_key"]))
        body = {"label": "child-" + action}
        first = api.http.post("/api/auth/register", json=body, headers=h)
        assert first.status_code == 200, first.text
        again = api.http.post("/api/auth/register", json=body, headers=h)
        assert again.headers.get("idempotent-replayed") == "true"  # still the same caller
        if action == "delete":
            r = api.http.delete(f"/api/auth/keys/{minter['key_id']}", headers=api.admin)
        else:
            r = api.http.post(f"/api/auth/keys/{minter['key_id']}/rotate", headers=api.admin)
        assert r.status_code == 200, r.text
        replay = api.http.post("/api/auth/register", json=body, headers=h)
        assert_error(replay, 401, "unauthorized")
        assert first.json()["api_key"] not in replay.text
        # nor does the key learn anything about its stored answers (a reuse is 409 otherwise)
        reuse = api.http.post("/api/auth/register", json={"label": "other"}, headers=h)
        assert_error(reuse, 401, "unauthorized")


def test_a_replay_never_hands_out_a_secret_that_was_revoked_or_rotated(api: Api) -> None:
    h = replayable(api.admin)
    body = {"label": "replayed-secret"}
    first = api.http.post("/api/auth/register", json=body, headers=h).json()
    assert api.http.post("/api/auth/register", json=body, headers=h).json() == first
    r = api.http.post(f"/api/auth/keys/{first['key_id']}/rotate", headers=api.admin)
    assert r.status_code == 200, r.text
    replay = api.http.post("/api/auth/register", json=body, headers=h)
    assert_error(replay, 409, "secret_revoked")
    assert first["api_key"] not in replay.text
    # the same for a rotation's own answer once the key is deleted
    h2 = replayable(api.admin)
    rotated = api.http.post(f"/api/auth/keys/{first['key_id']}/rotate", headers=h2).json()
    assert api.http.delete(f"/api/auth/keys/{first['key_id']}",
                           headers=api.admin).status_code == 200
    replay = api.http.post(f"/api/auth/keys/{first['key_id']}/rotate", headers=h2)
    assert_error(replay, 409, "secret_revoked")
    assert rotated["api_key"] not in replay.text


def test_a_record_that_looks_like_a_key_is_replayed_as_it_is(api: Api) -> None:
    coll = collection(api)
    h = replayable(api.admin)
    record = {"api_key": "eko_test_not_a_real_one", "key_id": "key_x"}
    first = api.http.post(f"/api/insert/{coll}", json=record, headers=h)
    again = api.http.post(f"/api/insert/{coll}", json=record, headers=h)
    assert again.status_code == 200 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"


def test_replays_count_against_the_rate_limit_and_are_audited(api: Api) -> None:
    coll = collection(api)
    # the token exchange is the key's first request of the minute: 3 inserts fit in 4
    new = api.create_key("limited", rate_limit=4, collection_permissions={coll: ["write"]})
    token = api.token(new["api_key"])
    h = replayable({"Authorization": f"Bearer {token}"})
    answers = [api.http.post(f"/api/insert/{coll}", json={"v": 1}, headers=h)
               for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert [r.headers.get("idempotent-replayed") for r in answers[:3]] == [None, "true", "true"]
    assert answers[3].headers["retry-after"]
    audit = api.http.get("/api/audit", headers=api.admin, params={
        "key_id": new["key_id"], "operation": "request.replayed"}).json()["records"]
    assert len(audit) == 2
    assert audit[0]["resource"] == f"/api/insert/{coll}"


def test_a_replay_from_outside_the_allowlist_is_refused(ekodb_server_factory: Any) -> None:
    info = ekodb_server_factory(trusted_proxies=["127.0.0.1/32"], failed_auth_limit=1000)
    other = Api(info)
    try:
        coll = collection(other)
        new = other.create_key("fenced", allowed_ips=["10.0.0.0/8"],
                               collection_permissions={coll: ["write"]})
        inside = {"X-Forwarded-For": "10.1.2.3"}
        r = other.http.post("/api/auth/token", json={"api_key": new["api_key"]}, headers=inside)
        h = replayable({"Authorization": f"Bearer {r.json()['token']}"})
        assert other.http.post(f"/api/insert/{coll}", json={"v": 1},
                               headers={**h, **inside}).status_code == 200
        replay = other.http.post(f"/api/insert/{coll}", json={"v": 1},
                                 headers={**h, "X-Forwarded-For": "192.168.7.7"})
        assert_error(replay, 403, "forbidden")
        assert "idempotent-replayed" not in replay.headers
    finally:
        other.close()


# --------------------------------------------------------------- 7: delegated admins

def mint(api: Api, h: H, label: str, **body: Any) -> httpx.Response:
    return api.http.post("/api/auth/register", headers=h, json={"label": label, **body})


def test_a_minted_key_never_exceeds_its_minter(api: Api) -> None:
    team = api.create_key("team-admin", tier="developer", allowed_ips=["127.0.0.0/8"],
                          collection_permissions={"team_*": ["admin"]})
    h = api.headers(team["api_key"])
    narrow = {"collection_permissions": {"team_x": ["read"]}}
    for body, what in (({"tier": "enterprise_standard"}, "tier"),
                       ({"rate_limit": 10**8}, "rate limit"),
                       ({"allowed_ips": ["10.0.0.0/8"]}, "allowed_ips"),
                       ({"collection_permissions": {"other": ["read"]}}, "permissions"),
                       ({"is_admin": True}, "is_admin")):
        err = assert_error(mint(api, h, "too-much", **{**narrow, **body}), 403, "forbidden")
        assert what in err["message"]
    child = mint(api, h, "within", tier="free", **narrow)
    assert child.status_code == 200, child.text
    info = next(k for k in api.http.get("/api/auth/keys", headers=api.admin).json()
                if k["key_id"] == child.json()["key_id"])
    assert (info["tier"], info["allowed_ips"], info["created_by"]) == (
        "free", ["127.0.0.0/8"], team["key_id"])
    # a minter with its own per-key limit hands at most that down
    slow = api.create_key("slow-admin", rate_limit=5, collection_permissions={
        "team_*": ["admin"]})
    sh = api.headers(slow["api_key"])
    assert_error(mint(api, sh, "faster", rate_limit=6, **narrow), 403)
    inherited = mint(api, sh, "inherits", **narrow).json()
    mine = next(k for k in api.http.get("/api/auth/keys", headers=sh).json()
                if k["key_id"] == inherited["key_id"])
    assert mine["rate_limit"] == 5


def test_a_delegated_admin_lists_and_revokes_only_the_keys_under_it(api: Api) -> None:
    team = api.create_key("team-admin", collection_permissions={"team_*": ["admin"]})
    h = api.headers(team["api_key"])
    sub = mint(api, h, "sub-admin", collection_permissions={"team_a_*": ["admin"]}).json()
    grand = mint(api, api.headers(sub["api_key"]), "grandchild",
                 collection_permissions={"team_a_x": ["read"]}).json()
    leaf = mint(api, h, "leaf", collection_permissions={"team_b": ["read"]}).json()
    stranger = api.create_key("stranger", collection_permissions={"team_b": ["read"]})
    listed = api.http.get("/api/auth/keys", headers=h)
    assert listed.status_code == 200, listed.text
    assert {k["key_id"] for k in listed.json()} == {sub["key_id"], grand["key_id"],
                                                    leaf["key_id"]}
    assert stranger["api_key"] not in listed.text and leaf["api_key"] not in listed.text
    # someone else's key (or its own) is 404, like a key that does not exist
    for target in (stranger["key_id"], team["key_id"], "key_" + "0" * 24):
        assert_error(api.http.delete(f"/api/auth/keys/{target}", headers=h), 404)
        assert_error(api.http.post(f"/api/auth/keys/{target}/rotate", headers=h), 404)
    assert api.headers(stranger["api_key"])  # untouched
    rotated = api.http.post(f"/api/auth/keys/{leaf['key_id']}/rotate", headers=h)
    assert rotated.status_code == 200 and rotated.json()["api_key"] != leaf["api_key"]
    leaf_h = api.headers(rotated.json()["api_key"])
    assert api.http.delete(f"/api/auth/keys/{leaf['key_id']}", headers=h).status_code == 200
    assert_error(api.http.get("/api/auth/permissions", headers=leaf_h), 401)


def test_deleting_a_minter_revokes_every_key_minted_under_it(api: Api) -> None:
    team = api.create_key("team-admin", collection_permissions={"team_*": ["admin"]})
    h = api.headers(team["api_key"])
    sub = mint(api, h, "sub-admin", collection_permissions={"team_a_*": ["admin"]}).json()
    grand = mint(api, api.headers(sub["api_key"]), "grandchild",
                 collection_permissions={"team_a_x": ["read"]}).json()
    tokens = [(k["api_key"], api.headers(k["api_key"])) for k in (sub, grand)]
    assert api.http.delete(f"/api/auth/keys/{team['key_id']}",
                           headers=api.admin).status_code == 200
    for secret, kh in tokens:
        assert_error(api.http.get("/api/auth/permissions", headers=kh), 401)
        assert_error(api.http.post("/api/auth/token", json={"api_key": secret}), 401)
    remaining = {k["key_id"] for k in api.http.get("/api/auth/keys", headers=api.admin).json()}
    assert not remaining & {team["key_id"], sub["key_id"], grand["key_id"]}
    audit = api.http.get("/api/audit", headers=api.admin, params={
        "operation": "key.deleted", "limit": 1000}).json()["records"]
    (entry,) = [a for a in audit if a["target_id"] == team["key_id"]]
    assert set(entry["details"]["revoked_with_it"]) == {sub["key_id"], grand["key_id"]}


def test_an_admin_change_never_leaves_a_minted_key_beyond_its_minter(api: Api) -> None:
    team = api.create_key("team-admin", collection_permissions={"team_*": ["admin"]})
    made = mint(api, api.headers(team["api_key"]), "kid",
                collection_permissions={"team_x": ["read"]}).json()
    wider = api.http.put(f"/api/auth/keys/{made['key_id']}", headers=api.admin,
                         json={"collection_permissions": {"other": ["read"]}})
    assert_error(wider, 409, "minted_key_exceeds")
    demote = api.http.put(f"/api/auth/keys/{team['key_id']}", headers=api.admin,
                          json={"collection_permissions": {"team_y": ["read"]}})
    err = assert_error(demote, 409, "minted_key_exceeds")
    assert made["key_id"] in err["message"]
    perms = api.http.get("/api/auth/permissions", headers=api.headers(made["api_key"])).json()
    assert perms["collection_permissions"] == {"team_x": {"read": True}}  # unchanged
    ok = api.http.put(f"/api/auth/keys/{made['key_id']}", headers=api.admin,
                      json={"label": "renamed", "tier": "free"})
    assert ok.status_code == 200, ok.text
