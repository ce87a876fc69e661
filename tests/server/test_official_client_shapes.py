"""Conformance: the exact request shapes ekoDB's official client 0.31.0 sends, replayed over
raw HTTP, for every route of ours that client uses (issue 15 item 0).

The official client serialises optional fields as explicit ``null`` (``bypass_cache``,
``select_fields``, ``exclude_fields`` in a find) and adds ``bypass_ripple`` to every batch
item; options travel as query parameters (``bypass_ripple``, ``bypass_cache``,
``transaction_id``). ``null`` means "not given"; unknown keys are still refused.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.server.conftest import Api, assert_error

H = dict[str, str]
OPTS = {"bypass_ripple": "false", "bypass_cache": "false"}


def _cond(field: str, op: str, value: Any) -> dict[str, Any]:
    return {"type": "Condition", "content": {"field": field, "operator": op, "value": value}}


@pytest.fixture
def h(api: Api) -> H:
    return api.admin


@pytest.fixture
def coll(api: Api, h: H) -> Iterator[str]:
    name = f"shape_{uuid.uuid4().hex[:10]}"
    assert api.http.post(f"/api/collections/{name}", headers=h).status_code == 200
    yield name
    api.http.delete(f"/api/collections/{name}", headers=h)


def _find(api: Api, h: H, coll: str, **extra: Any) -> list[dict[str, Any]]:
    """The official find body: explicit nulls, bypass_cache always present."""
    body = {"filter": None, "limit": 100, "bypass_cache": None, "select_fields": None,
            "exclude_fields": None, **extra}
    r = api.http.post(f"/api/find/{coll}", json=body, headers=h)
    assert r.status_code == 200, r.text
    records: list[dict[str, Any]] = r.json()
    return records


def test_single_record_routes(api: Api, h: H, coll: str) -> None:
    r = api.http.post(f"/api/insert/{coll}", params=OPTS, json={"name": "ann", "n": 1},
                      headers=h)
    assert r.status_code == 200, r.text
    rid = r.json()["id"]
    r = api.http.get(f"/api/find/{coll}/{rid}", params={"bypass_ripple": "true"}, headers=h)
    assert r.status_code == 200 and r.json()["name"] == "ann"
    r = api.http.put(f"/api/update/{coll}/{rid}", params=OPTS, json={"n": 2}, headers=h)
    assert r.status_code == 200 and r.json()["n"] == 2
    assert [x["n"] for x in _find(api, h, coll, filter=_cond("name", "Eq", "ann"))] == [2]
    assert _find(api, h, coll, bypass_cache=True, bypass_ripple=False, join=None,
                 transaction_id=None, sort=None, skip=None)[0]["id"] == rid
    assert _find(api, h, coll, select_fields=["n"]) == [{"id": rid, "n": 2}]
    r = api.http.delete(f"/api/delete/{coll}/{rid}", params={"bypass_ripple": "false"},
                        headers=h)
    assert r.status_code == 200
    assert _find(api, h, coll) == []


def test_batch_routes_with_bypass_ripple_per_item(api: Api, h: H, coll: str) -> None:
    r = api.http.post(f"/api/batch/insert/{coll}", headers=h, json={"inserts": [
        {"data": {"n": 1}, "bypass_ripple": None}, {"data": {"n": 2}, "bypass_ripple": False}]})
    assert r.status_code == 200, r.text
    ids = r.json()["successful"]
    assert len(ids) == 2 and r.json()["failed"] == []
    r = api.http.put(f"/api/batch/update/{coll}", headers=h, json={"updates": [
        {"id": ids[0], "data": {"n": 10}, "bypass_ripple": None},
        {"id": ids[1], "data": {"n": 20}, "bypass_ripple": True}]})
    assert r.status_code == 200 and r.json() == {"successful": ids, "failed": []}, r.text
    assert sorted(x["n"] for x in _find(api, h, coll)) == [10, 20]
    r = api.http.request("DELETE", f"/api/batch/delete/{coll}", headers=h, json={"deletes": [
        {"id": ids[0], "bypass_ripple": None}, {"id": ids[1], "bypass_ripple": None}]})
    assert r.status_code == 200 and r.json() == {"successful": ids, "failed": []}, r.text
    assert _find(api, h, coll) == []
    # ekoDB's examples also put bypass_ripple at the top of a batch body
    r = api.http.post(f"/api/batch/insert/{coll}", headers=h, json={
        "inserts": [{"data": {"n": 3}}], "bypass_ripple": False})
    assert r.status_code == 200 and len(r.json()["successful"]) == 1, r.text
    r = api.http.request("DELETE", f"/api/batch/delete/{coll}", headers=h, json={
        "filter": _cond("n", "Eq", 3), "bypass_ripple": None})
    assert r.status_code == 200 and len(r.json()["successful"]) == 1, r.text


def test_collection_and_health_routes(api: Api, h: H) -> None:
    name = f"shape_{uuid.uuid4().hex[:10]}"
    accept = {**h, "Accept": "application/json"}
    assert api.http.post(f"/api/collections/{name}", headers=accept).status_code == 200
    r = api.http.get("/api/collections", headers=accept)
    assert r.status_code == 200 and name in r.json()["collections"]
    assert api.http.delete(f"/api/collections/{name}", headers=accept).status_code == 200
    assert api.http.get("/api/health").status_code == 200


def test_trash_routes_without_a_body(api: Api, h: H, coll: str) -> None:
    ids = [api.http.post(f"/api/insert/{coll}", json={"n": i}, headers=h).json()["id"]
           for i in range(3)]
    for rid in ids:
        api.http.delete(f"/api/delete/{coll}/{rid}", headers=h)
    r = api.http.post(f"/api/trash/{coll}/{ids[0]}", headers=h)  # no body, no content type
    assert r.status_code == 200 and r.json()["restored"] is True, r.text
    r = api.http.post(f"/api/trash/{coll}", headers=h)
    assert r.status_code == 200 and r.json()["records_restored"] == 2, r.text
    assert sorted(x["n"] for x in _find(api, h, coll)) == [0, 1, 2]


def test_kv_routes(api: Api, h: H) -> None:
    p = f"shape{uuid.uuid4().hex[:8]}"
    assert api.http.post(f"/api/kv/set/{p}.a", json={"value": {"x": 1}}, headers=h
                         ).status_code == 200
    assert api.http.post(f"/api/kv/set/{p}.b", json={"value": "v", "ttl": "60"}, headers=h
                         ).status_code == 200
    assert api.http.get(f"/api/kv/get/{p}.a", headers=h).json() == {"value": {"x": 1}}
    assert api.http.get(f"/api/kv/get/{p}.zz", headers=h).status_code == 404
    r = api.http.post("/api/kv/batch/set", headers=h, json={
        "keys": [f"{p}.c", f"{p}.d"], "values": [{"n": 1}, {"n": 2}], "ttl": 3600})
    assert r.status_code == 200 and r.json() == [[f"{p}.c", True], [f"{p}.d", True]]
    r = api.http.post("/api/kv/batch/get", headers=h, json={"keys": [f"{p}.c", f"{p}.x"]})
    assert r.json() == [{"key": f"{p}.c", "value": {"n": 1}}]
    r = api.http.post("/api/kv/find", headers=h, json={"include_expired": False})
    assert {f"{p}.a", f"{p}.b", f"{p}.c", f"{p}.d"} <= {e["key"] for e in r.json()}
    r = api.http.post("/api/kv/find", headers=h, json={"pattern": f"{p}.*",
                                                        "include_expired": False})
    assert [e["key"] for e in r.json()] == [f"{p}.a", f"{p}.b", f"{p}.c", f"{p}.d"]
    r = api.http.request("DELETE", "/api/kv/batch/delete", headers=h,
                         json={"keys": [f"{p}.c", f"{p}.x"]})
    assert r.json() == [[f"{p}.c", True], [f"{p}.x", False]]
    assert api.http.delete(f"/api/kv/delete/{p}.a", headers=h).status_code == 200


def test_action_routes(api: Api, h: H, coll: str) -> None:
    rid = api.http.post(f"/api/insert/{coll}", json={"score": 100, "lives": 3},
                        headers=h).json()["id"]
    r = api.http.put(f"/api/update/{coll}/{rid}/action/increment", headers=h,
                     json={"field": "score", "value": 10})
    assert r.status_code == 200 and r.json()["score"] == 110
    r = api.http.put(f"/api/update/{coll}/{rid}/action/clear", headers=h,
                     json={"field": "lives", "value": None})
    assert r.json()["lives"] == 0
    r = api.http.put(f"/api/update/sequence/{coll}/{rid}", headers=h, json=[
        ["increment", "score", 10], ["decrement", "score", 1], ["push", "log", "hit"]])
    assert r.status_code == 200, r.text
    assert (r.json()["score"], r.json()["log"]) == (119, ["hit"])


# ------------------------------------------------------------------ still strict


def test_unknown_keys_and_wrong_types_are_still_refused(api: Api, h: H, coll: str) -> None:
    rid = api.http.post(f"/api/insert/{coll}", json={"n": 1}, headers=h).json()["id"]
    bad_finds: list[dict[str, Any]] = [
        {"bypass_cache": None, "nonsense": 1},
        {"bypass_cache": "yes"},
        {"bypass_ripple": 1},
        {"transaction_id": 5},
        {"join": {"collections": ["x"]}},
    ]
    for body in bad_finds:
        assert_error(api.http.post(f"/api/find/{coll}", json=body, headers=h), 400)
    bad_batches: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "insert", {"inserts": [{"data": {"n": 2}, "bypass_ripple": None, "x": 1}]}),
        ("POST", "insert", {"inserts": [{"data": {"n": 2}, "bypass_ripple": "no"}]}),
        ("PUT", "update", {"updates": [{"id": rid, "bypass_ripple": None}]}),
        ("PUT", "update", {"updates": [{"id": rid, "data": {"n": 5}, "extra": None}]}),
        ("DELETE", "delete", {"deletes": [{"ids": [rid]}]}),
        ("DELETE", "delete", {"deletes": [{"id": rid, "bypass_ripple": "x"}]}),
        ("DELETE", "delete", {"deletes": [rid]}),
        ("POST", "insert", {"inserts": [{"data": {"n": 2}}], "bypass_ripple": "no"}),
        ("DELETE", "delete", {"filter": None, "bypass_ripple": None}),
    ]
    for method, op, body in bad_batches:
        r = api.http.request(method, f"/api/batch/{op}/{coll}", json=body, headers=h)
        assert_error(r, 400)
    for params in ({"bypass_ripple": "maybe"}, {"bypass_cache": "2"}):
        assert_error(api.http.post(f"/api/insert/{coll}", params=params, json={"n": 3},
                                   headers=h), 400)
    assert [x["n"] for x in _find(api, h, coll)] == [1]  # nothing stored or changed
