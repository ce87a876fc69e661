"""Queue and DedupQueue over HTTP (SPEC §4.4): claims, stale ids, dedup, move, purge, limits."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from mock_server.queues import MAX_MESSAGE_BYTES
from tests.server.conftest import Api, assert_error


class Q:
    """One fresh queue name and helpers speaking raw HTTP to it."""

    def __init__(self, api: Api, kind: str = "queue", headers: dict[str, str] | None = None
                 ) -> None:
        self.api = api
        self.kind = kind
        self.name = "q" + uuid.uuid4().hex[:12]
        self.auth = headers if headers is not None else api.admin

    def url(self, suffix: str = "", name: str | None = None) -> str:
        return f"/api/{self.kind}/{name or self.name}{suffix}"

    def post(self, suffix: str, body: Any = None, **params: Any) -> httpx.Response:
        kwargs: dict[str, Any] = {"params": params, "headers": self.auth}
        if body is not None:
            kwargs["json"] = body
        return self.api.http.post(self.url(suffix), **kwargs)

    def send(self, *messages: Any) -> list[str]:
        r = self.post("/sendbatch", list(messages))
        assert r.status_code == 200, r.text
        return list(r.json()["ids"])

    def poll(self, claim_ttl: float = 30, limit: int = 10) -> list[dict[str, Any]]:
        r = self.post("/poll", claim_ttl=claim_ttl, limit=limit)
        assert r.status_code == 200, r.text
        return list(r.json())

    def ack(self, *ids: str) -> dict[str, Any]:
        r = self.post("/ack", {"ids": list(ids)})
        assert r.status_code == 200, r.text
        return dict(r.json())

    def renew(self, *ids: str, claim_ttl: float = 30) -> dict[str, Any]:
        r = self.post("/renew", {"ids": list(ids), "claim_ttl": claim_ttl})
        assert r.status_code == 200, r.text
        return dict(r.json())

    def get(self, suffix: str, **params: Any) -> Any:
        r = self.api.http.get(self.url(suffix), params=params, headers=self.auth)
        assert r.status_code == 200, r.text
        return r.json()

    def counts(self) -> tuple[int, int]:
        return self.get("/size")["size"], self.get("/claimcount")["count"]


@pytest.fixture
def q(api: Api) -> Q:
    return Q(api)


@pytest.fixture
def dq(api: Api) -> Q:
    return Q(api, "dedupq")


def payloads(messages: list[dict[str, Any]]) -> list[Any]:
    return [m["payload"] for m in messages]


# ------------------------------------------------------------------------- basics


def test_send_poll_ack_round_trip(q: Q) -> None:
    r = q.post("/send", {"job": 1})
    assert r.status_code == 200 and isinstance(r.json()["id"], str)
    q.send("two", None, [3])
    got = q.poll(limit=10)
    assert sorted(map(str, payloads(got))) == sorted(map(str, [{"job": 1}, "two", None, [3]]))
    assert q.counts() == (4, 4)  # size counts claimed messages until they are acked
    assert q.ack(*(m["id"] for m in got)) == {"acked": [m["id"] for m in got], "stale": []}
    assert q.counts() == (0, 0)
    assert q.poll() == []


def test_queues_need_no_creation_and_are_independent(api: Api) -> None:
    a, b = Q(api), Q(api)
    a.send(1)
    assert b.counts() == (0, 0) and b.poll() == []
    assert Q(api, "dedupq").counts() == (0, 0)


def test_poll_limit_and_claims_hide_messages(q: Q) -> None:
    q.send(*range(5))
    first = q.poll(limit=3)
    assert len(first) == 3
    second = q.poll(limit=10)
    assert len(second) == 2
    assert not {m["id"] for m in first} & {m["id"] for m in second}
    assert q.poll() == []


def test_claim_expiry_redelivers_with_a_new_claim(q: Q) -> None:
    q.send("x")
    (first,) = q.poll(claim_ttl=0.3)
    assert q.poll() == []
    time.sleep(0.4)
    (again,) = q.poll(claim_ttl=30)
    assert again["payload"] == "x" and again["id"] != first["id"]


def test_renew_keeps_a_message_hidden_past_its_first_ttl(q: Q) -> None:
    q.send("slow")
    (m,) = q.poll(claim_ttl=0.5)
    assert q.renew(m["id"], claim_ttl=2) == {"renewed": [m["id"]], "stale": []}
    time.sleep(0.7)
    assert q.poll() == []
    assert q.counts() == (1, 1)


def test_renew_never_shortens_a_claim_and_zero_releases_it(q: Q) -> None:
    q.send("x")
    (m,) = q.poll(claim_ttl=30)
    q.renew(m["id"], claim_ttl=0.01)
    time.sleep(0.05)
    assert q.poll() == []  # still claimed for ~30 s
    assert q.renew(m["id"], claim_ttl=0)["renewed"] == [m["id"]]
    (again,) = q.poll()
    assert again["payload"] == "x"
    # the released claim's id is stale now: it cannot ack the new claim
    assert q.ack(m["id"]) == {"acked": [], "stale": [m["id"]]}
    assert q.counts() == (1, 1)


def test_stale_ack_and_renew_do_not_touch_another_consumers_claim(q: Q) -> None:
    q.send("job")
    (old,) = q.poll(claim_ttl=0.2)
    time.sleep(0.3)
    (new,) = q.poll(claim_ttl=30)
    assert q.renew(old["id"], claim_ttl=0) == {"renewed": [], "stale": [old["id"]]}
    assert q.ack(old["id"]) == {"acked": [], "stale": [old["id"]]}
    assert q.counts() == (1, 1)  # the new claim is intact
    assert q.ack(new["id"])["acked"] == [new["id"]]
    assert q.counts() == (0, 0)


def test_late_ack_succeeds_when_nobody_reclaimed(q: Q) -> None:
    q.send("job")
    (m,) = q.poll(claim_ttl=0.1)
    time.sleep(0.2)
    assert q.ack(m["id"])["acked"] == [m["id"]]
    assert q.counts() == (0, 0)


def test_ack_twice_reports_stale(q: Q) -> None:
    q.send("job")
    (m,) = q.poll()
    q.ack(m["id"])
    assert q.ack(m["id"]) == {"acked": [], "stale": [m["id"]]}


def test_peek_shows_claimed_messages_and_claims_nothing(q: Q) -> None:
    q.send("a", "b")
    q.poll(limit=1)
    peeked = q.get("/peek", limit=10)
    assert sorted(payloads(peeked)) == ["a", "b"]
    assert q.counts() == (2, 1)
    assert len(q.get("/peek", limit=1)) == 1


def test_ack_with_a_peek_id_deletes_the_message(q: Q) -> None:
    q.send("poison")
    (m,) = q.get("/peek")
    q.poll()
    assert q.ack(m["id"])["acked"] == [m["id"]]
    assert q.counts() == (0, 0)
    assert_error(q.post("/renew", {"ids": [m["id"]], "claim_ttl": 5}), 400)


def test_unclaimall_makes_claimed_messages_visible(q: Q) -> None:
    q.send(1, 2, 3)
    old = q.poll(limit=2)
    r = q.post("/unclaimall")
    assert r.json() == {"unclaimed": 2}
    assert q.counts() == (3, 0)
    assert len(q.poll(limit=10)) == 3
    assert q.ack(old[0]["id"])["stale"] == [old[0]["id"]]


def test_a_repeated_send_with_one_idempotency_key_stores_one_message(q: Q) -> None:
    headers = {**q.auth, "Idempotency-Key": uuid.uuid4().hex}
    first = q.api.http.post(q.url("/send"), json={"n": 1}, headers=headers)
    again = q.api.http.post(q.url("/send"), json={"n": 1}, headers=headers)
    assert first.json() == again.json()
    assert q.counts() == (1, 0)


# ------------------------------------------------------------------------- dedup


def test_dedupq_collapses_identical_messages_at_poll_but_peek_shows_them(dq: Q) -> None:
    dq.send({"a": 1, "b": 2}, {"b": 2, "a": 1}, {"a": 1, "b": 2}, {"a": 2})
    assert len(dq.get("/peek", limit=10)) == 4
    assert dq.counts() == (4, 0)
    got = dq.poll(limit=10)
    assert sorted(map(str, payloads(got))) == sorted(map(str, [{"a": 1, "b": 2}, {"a": 2}]))
    assert dq.counts() == (2, 2)
    dq.ack(*(m["id"] for m in got))
    assert dq.counts() == (0, 0)


def test_dedupq_copy_sent_after_a_poll_is_delivered_again(dq: Q) -> None:
    dq.send("same", "same")
    (first,) = dq.poll(limit=10)
    dq.send("same")  # sent while the first one is claimed: a new round
    (second,) = dq.poll(limit=10)
    assert second["payload"] == "same" and second["id"] != first["id"]


def test_dedupq_redelivers_the_collapsed_message_if_not_acked(dq: Q) -> None:
    dq.send("x", "x", "x")
    dq.poll(claim_ttl=0.2)
    time.sleep(0.3)
    assert payloads(dq.poll(limit=10)) == ["x"]
    assert dq.counts() == (1, 1)


def test_plain_queue_keeps_identical_messages(q: Q) -> None:
    q.send("x", "x")
    assert payloads(q.poll(limit=10)) == ["x", "x"]


# ------------------------------------------------------------------------- move / purge


def test_move_takes_unclaimed_messages_only(api: Api, q: Q) -> None:
    dest = Q(api)
    q.send(1, 2, 3)
    (claimed,) = q.poll(limit=1)
    r = api.http.post("/api/queue/_move", params={"from": q.name, "to": dest.name},
                      headers=q.auth)
    assert r.json() == {"moved": 2}
    assert q.counts() == (1, 1) and dest.counts() == (2, 0)
    moved = dest.poll(limit=10)
    assert sorted(payloads(moved)) == sorted({1, 2, 3} - {claimed["payload"]})
    assert dest.ack(*(m["id"] for m in moved))["acked"]


def test_move_into_a_dedupq_collapses_there(api: Api) -> None:
    src, dst = Q(api, "dedupq"), Q(api, "dedupq")
    src.send("z", "z")
    r = api.http.post("/api/dedupq/_move", params={"from": src.name, "to": dst.name},
                      headers=src.auth)
    assert r.json() == {"moved": 2}
    assert payloads(dst.poll(limit=10)) == ["z"]


def test_move_to_itself_is_refused(api: Api, q: Q) -> None:
    q.send(1)
    r = api.http.post("/api/queue/_move", params={"from": q.name, "to": q.name},
                      headers=q.auth)
    assert_error(r, 400)
    assert q.counts() == (1, 0)


def test_purge_deletes_claimed_and_unclaimed(api: Api, q: Q) -> None:
    q.send(1, 2)
    q.poll(limit=1)
    r = api.http.delete(q.url(), headers=q.auth)
    assert r.json() == {"purged": 2}
    assert q.counts() == (0, 0)


# ------------------------------------------------------------------------- permissions


def scoped(api: Api, permissions: dict[str, Any]) -> dict[str, str]:
    return api.headers(api.create_key("queue-test", collection_permissions=permissions)
                       ["api_key"])


def test_read_level_looks_but_cannot_consume_or_change(api: Api, q: Q) -> None:
    reader = Q(api, headers=scoped(api, {f"queue:{q.name}": ["read"]}))
    reader.name = q.name
    q.send("m")
    (peeked,) = api.http.get(q.url("/peek"), headers=reader.auth).json()
    assert api.http.get(q.url("/size"), headers=reader.auth).json() == {"size": 1}
    assert api.http.get(q.url("/claimcount"), headers=reader.auth).json() == {"count": 0}
    assert_error(reader.post("/send", "nope"), 403, "forbidden")
    assert_error(reader.post("/poll"), 403, "forbidden")
    assert_error(reader.post("/ack", {"ids": [peeked["id"]]}), 403, "forbidden")
    assert_error(reader.post("/unclaimall"), 403, "forbidden")
    assert_error(api.http.delete(q.url(), headers=reader.auth), 403)
    assert q.counts() == (1, 0)


def test_write_level_sends_and_consumes_but_cannot_look(api: Api, q: Q) -> None:
    writer = Q(api, headers=scoped(api, {f"queue:{q.name}": ["write"]}))
    writer.name = q.name
    assert writer.post("/send", "ok").status_code == 200
    for resp in (api.http.get(q.url("/peek"), headers=writer.auth),
                 api.http.get(q.url("/size"), headers=writer.auth),
                 api.http.get(q.url("/claimcount"), headers=writer.auth)):
        assert_error(resp, 403)
    (m,) = writer.poll()
    assert q.counts() == (1, 1)
    assert writer.post("/unclaimall").json() == {"unclaimed": 1}
    (m,) = writer.poll()
    assert writer.renew(m["id"])["renewed"] == [m["id"]]
    assert writer.ack(m["id"])["acked"] == [m["id"]]
    assert q.counts() == (0, 0)


def test_queue_and_dedupq_permissions_are_separate(api: Api, q: Q) -> None:
    headers = scoped(api, {f"queue:{q.name}": ["read", "write"]})
    assert api.http.post(q.url("/send"), json=1, headers=headers).status_code == 200
    r = api.http.post(f"/api/dedupq/{q.name}/send", json=1, headers=headers)
    assert_error(r, 403)
    other = api.http.post(f"/api/queue/{q.name}x/send", json=1, headers=headers)
    assert_error(other, 403)


def test_purge_needs_the_write_level(api: Api, q: Q) -> None:
    q.send(1)
    q.send(2)
    reader = scoped(api, {f"queue:{q.name}": ["read"]})
    assert_error(api.http.delete(q.url(), headers=reader), 403)
    rw = scoped(api, {f"queue:{q.name}": ["write"]})
    assert api.http.delete(q.url(), headers=rw).json() == {"purged": 2}


def test_move_needs_write_on_both_queues(api: Api, q: Q) -> None:
    dest = Q(api)
    q.send(1)
    params = {"from": q.name, "to": dest.name}
    for perms in ({f"queue:{q.name}": ["read"]}, {f"queue:{dest.name}": ["write"]},
                  {f"queue:{q.name}": ["read"], f"queue:{dest.name}": ["write"]},
                  {f"queue:{q.name}": ["write"], f"queue:{dest.name}": ["read"]}):
        r = api.http.post("/api/queue/_move", params=params, headers=scoped(api, perms))
        assert_error(r, 403)
    assert q.counts() == (1, 0)
    ok = scoped(api, {f"queue:{q.name}": ["write"], f"queue:{dest.name}": ["write"]})
    assert api.http.post("/api/queue/_move", params=params, headers=ok).json() == {"moved": 1}


def test_no_token_is_401(api: Api, q: Q) -> None:
    assert_error(api.http.post(q.url("/send"), json=1), 401)


# ------------------------------------------------------------------------- bad inputs


def test_oversize_message_is_413_and_nothing_is_stored(q: Q) -> None:
    big = "x" * MAX_MESSAGE_BYTES
    assert_error(q.post("/send", big), 413, "payload_too_large")
    assert_error(q.post("/sendbatch", ["ok", big]), 413, "payload_too_large")
    assert q.counts() == (0, 0)


def test_oversize_batch_is_413_and_nothing_is_stored(q: Q) -> None:
    assert_error(q.post("/sendbatch", list(range(1001))), 413, "batch_too_large")
    assert q.counts() == (0, 0)


@pytest.mark.parametrize("name", ["bad name", "a:b", "x" * 129, "%2E%2E", "*"])
def test_bad_queue_names_are_400(api: Api, name: str) -> None:
    r = api.http.post(f"/api/queue/{name}/send", json=1, headers=api.admin)
    assert r.status_code in (400, 404), r.text
    assert_error(r, r.status_code)


@pytest.mark.parametrize("kind", ["queue", "dedupq"])
def test_names_starting_with_underscore_are_refused_so_move_never_collides(
        api: Api, kind: str) -> None:
    """``DELETE /api/queue/_move`` would purge a queue named ``_move``: such names are the
    routes' own, refused for every operation."""
    for method, path in (("POST", "/_move/send"), ("POST", "/_x/send"), ("DELETE", "/_move"),
                         ("GET", "/_move/size")):
        r = api.http.request(method, f"/api/{kind}{path}", json=1, headers=api.admin)
        err = assert_error(r, 400, "validation_error")
        assert "'_'" in err["message"]
    r = api.http.post(f"/api/{kind}/_move", params={"from": "_a", "to": "ok"},
                      headers=api.admin)
    assert_error(r, 400, "validation_error")


def test_bad_move_names_are_400(api: Api) -> None:
    r = api.http.post("/api/queue/_move", params={"from": "a:b", "to": "ok"},
                      headers=api.admin)
    assert_error(r, 400)


@pytest.mark.parametrize("params", [{"claim_ttl": -1}, {"claim_ttl": 0}, {"limit": -1},
                                    {"limit": 0}, {"limit": 1001}, {"claim_ttl": "soon"},
                                    {"claim_ttl": 86401}])
def test_bad_poll_parameters_are_400_and_claim_nothing(q: Q, params: dict[str, Any]) -> None:
    q.send(1)
    assert_error(q.post("/poll", **params), 400, "validation_error")
    assert q.counts() == (1, 0)
    assert_error(q.api.http.get(q.url("/peek"), params={"limit": -1}, headers=q.auth), 400)


@pytest.mark.parametrize("body", [{"ids": "abc"}, {"ids": [1]}, {"id": []}, [1],
                                  {"ids": [], "extra": 1}])
def test_malformed_ack_bodies_are_400(q: Q, body: Any) -> None:
    assert_error(q.post("/ack", body), 400)


def test_unknown_or_foreign_ids_are_400_and_nothing_is_acked(api: Api, q: Q) -> None:
    other = Q(api)
    other.send("theirs")
    (theirs,) = other.poll()
    q.send("mine")
    (mine,) = q.poll()
    forged = mine["id"][:-1] + ("B" if mine["id"].endswith("A") else "A")  # always differs
    for ids in (["nope"], [mine["id"], "nope"], [theirs["id"]], [forged]):
        assert_error(q.post("/ack", {"ids": ids}), 400, "unknown_id")
        assert_error(q.post("/renew", {"ids": ids, "claim_ttl": 0}), 400, "unknown_id")
    assert q.counts() == (1, 1) and other.counts() == (1, 1)


def test_negative_renew_ttl_is_400(q: Q) -> None:
    q.send(1)
    (m,) = q.poll()
    assert_error(q.post("/renew", {"ids": [m["id"]], "claim_ttl": -1}), 400)
    assert q.counts() == (1, 1)


@pytest.mark.parametrize("raw,ctype,status", [
    (b"{", "application/json", 400),
    (b"", "application/json", 400),
    (b'{"a":1,"a":2}', "application/json", 400),
    (b"NaN", "application/json", 400),
    (b"[" * 100 + b"]" * 100, "application/json", 400),
    (b'"text"', "text/plain", 415),
])
def test_malformed_send_bodies_are_refused(q: Q, raw: bytes, ctype: str, status: int) -> None:
    for suffix in ("/send", "/sendbatch"):
        r = q.api.http.post(q.url(suffix), content=raw,
                            headers={**q.auth, "Content-Type": ctype})
        assert_error(r, status)
    assert q.counts() == (0, 0)


def test_sendbatch_needs_a_list(q: Q) -> None:
    assert_error(q.post("/sendbatch", {"not": "a list"}), 400)
    assert q.counts() == (0, 0)


# ------------------------------------------------------------------------- at rest


def test_payloads_are_encrypted_at_rest(api: Api, q: Q) -> None:
    marker = "plaintext-marker-" + uuid.uuid4().hex
    q.send({"secret": marker})
    data_dir = api.info.data_dir
    for path in data_dir.rglob("*"):
        if path.is_file():
            assert marker.encode() not in path.read_bytes(), path
