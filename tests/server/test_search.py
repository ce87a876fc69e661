"""``POST /api/search/{c}`` on the reference server over TLS: ranking, vectors, hybrid, field
rules (hidden fields never matched, scored or returned), isolation, bad input, freshness."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from mock_server.search import edit_distance, parse_request, stem
from tests.server.conftest import Api, assert_error
from tests.server.test_encryption_at_rest import scan

H = dict[str, str]


@pytest.fixture
def coll(api: Api) -> Iterator[str]:
    name = "srch_" + uuid.uuid4().hex[:10]
    assert api.http.post(f"/api/collections/{name}", headers=api.admin).status_code == 200
    yield name
    api.http.delete(f"/api/collections/{name}", headers=api.admin)


def insert(api: Api, coll: str, record: dict[str, Any], h: H | None = None) -> str:
    r = api.http.post(f"/api/insert/{coll}", json=record, headers=h or api.admin)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def search(api: Api, coll: str, body: Any, h: H | None = None) -> list[dict[str, Any]]:
    r = api.http.post(f"/api/search/{coll}", json=body, headers=h or api.admin)
    assert r.status_code == 200, r.text
    data = r.json()
    assert set(data) == {"results", "total", "execution_time_ms"}
    return list(data["results"])


def titles(hits: list[dict[str, Any]]) -> list[str]:
    return [h["record"]["title"] for h in hits]


# ------------------------------------------------------------------------------ text


def test_text_search_ranks_by_relevance_and_names_matched_fields(api: Api, coll: str) -> None:
    insert(api, coll, {"title": "Cooking pasta", "body": "boil water, add salt"})
    insert(api, coll, {"title": "Pasta pasta pasta", "body": "a love letter to pasta"})
    insert(api, coll, {"title": "Gardening", "body": "tomatoes and basil for pasta sauce"})
    insert(api, coll, {"title": "Unrelated", "body": "nothing here"})
    hits = search(api, coll, {"query": "pasta"})
    assert titles(hits) == ["Pasta pasta pasta", "Cooking pasta", "Gardening"]
    assert hits[0]["score"] == 1.0 and hits[0]["score"] > hits[1]["score"] > hits[2]["score"]
    assert hits[0]["matched_fields"] == ["body", "title"]
    assert hits[2]["matched_fields"] == ["body"]


def test_field_weights_and_field_restriction_change_the_order(api: Api, coll: str) -> None:
    insert(api, coll, {"title": "engineer", "bio": "writes about gardens"})
    insert(api, coll, {"title": "gardener", "bio": "engineer engineer engineer at heart"})
    plain = search(api, coll, {"query": "engineer"})
    assert titles(plain)[0] == "gardener"
    weighted = search(api, coll, {"query": "engineer", "weights": {"title": 10, "bio": 1}})
    assert titles(weighted)[0] == "engineer"
    # ekoDB's string forms of fields and weights are accepted too
    only_title = search(api, coll, {"query": "engineer", "fields": "title",
                                    "weights": "title:2.0"})
    assert titles(only_title) == ["engineer"]
    assert only_title[0]["matched_fields"] == ["title"]


def test_fuzzy_stemming_case_and_min_score(api: Api, coll: str) -> None:
    insert(api, coll, {"title": "Senior Engineer", "bio": "running cloud systems"})
    insert(api, coll, {"title": "senior designer", "bio": "runs workshops"})
    assert search(api, coll, {"query": "enginer"}) == []
    fuzzy = search(api, coll, {"query": "enginer", "fuzzy": True})
    assert titles(fuzzy) == ["Senior Engineer"]
    stemmed = search(api, coll, {"query": "run", "fields": ["bio"]})
    assert sorted(titles(stemmed)) == ["Senior Engineer", "senior designer"]
    no_stem = search(api, coll, {"query": "run", "fields": ["bio"], "enable_stemming": False})
    assert no_stem == []
    exact_case = search(api, coll, {"query": "Senior", "case_sensitive": True})
    assert titles(exact_case) == ["Senior Engineer"]
    both = search(api, coll, {"query": "senior engineer"})
    assert titles(both)[0] == "Senior Engineer"
    assert titles(search(api, coll, {"query": "senior engineer", "min_score": 0.99})) == [
        "Senior Engineer"]


def test_nested_and_array_strings_are_searchable_by_path(api: Api, coll: str) -> None:
    insert(api, coll, {"title": "a", "tags": ["red", "blue"], "meta": {"note": "shiny"}})
    assert search(api, coll, {"query": "blue"})[0]["matched_fields"] == ["tags"]
    assert search(api, coll, {"query": "shiny"})[0]["matched_fields"] == ["meta.note"]
    assert search(api, coll, {"query": "shiny", "fields": ["meta"]})[0]["matched_fields"] == [
        "meta.note"]


def test_limit_total_filter_and_projection(api: Api, coll: str) -> None:
    for i in range(5):
        insert(api, coll, {"title": f"t{i}", "body": "common word", "team": "a" if i % 2 else "b",
                           "n": i})
    r = api.http.post(f"/api/search/{coll}", json={"query": "common", "limit": 2},
                      headers=api.admin)
    assert r.json()["total"] == 5 and len(r.json()["results"]) == 2
    flt = {"type": "Condition", "content": {"field": "team", "operator": "Eq", "value": "a"}}
    hits = search(api, coll, {"query": "common", "filters": flt,
                              "select_fields": ["title"]})
    assert sorted(titles(hits)) == ["t1", "t3"]
    assert all(set(h["record"]) == {"id", "title"} for h in hits)


def test_index_follows_inserts_updates_and_deletes(api: Api, coll: str) -> None:
    rid = insert(api, coll, {"title": "alpha"})
    assert titles(search(api, coll, {"query": "alpha"})) == ["alpha"]
    api.http.put(f"/api/update/{coll}/{rid}", json={"title": "beta"}, headers=api.admin)
    assert search(api, coll, {"query": "alpha"}) == []
    assert titles(search(api, coll, {"query": "beta"})) == ["beta"]
    api.http.delete(f"/api/delete/{coll}/{rid}", headers=api.admin)
    assert search(api, coll, {"query": "beta"}) == []


# ------------------------------------------------------------------------------ vectors


def test_vector_search_by_metric_with_k_and_threshold(api: Api, coll: str) -> None:
    insert(api, coll, {"title": "x", "embedding": [1.0, 0.0]})
    insert(api, coll, {"title": "diag", "embedding": {"type": "Vector", "value": [1.0, 1.0]}})
    insert(api, coll, {"title": "y", "embedding": [0.0, 3.0]})
    insert(api, coll, {"title": "wrong dims", "embedding": [1.0, 0.0, 0.0]})
    insert(api, coll, {"title": "no vector"})
    cos = search(api, coll, {"vector": [1.0, 0.1]})
    assert titles(cos) == ["x", "diag", "y"]
    assert cos[0]["matched_fields"] == ["embedding"]
    assert cos[0]["score"] == pytest.approx(1 / (1.01 ** 0.5))
    dot = search(api, coll, {"query": "", "vector": [0.0, 1.0], "vector_metric": "dotproduct"})
    assert titles(dot) == ["y", "diag", "x"] and dot[0]["score"] == 3.0
    euc = search(api, coll, {"vector": [0.9, 0.9], "vector_metric": "euclidean", "vector_k": 1})
    assert titles(euc) == ["diag"]
    near = search(api, coll, {"vector": [1.0, 0.0], "vector_threshold": 0.5})
    assert titles(near) == ["x", "diag"]


def test_hybrid_weights_move_the_ranking(api: Api, coll: str) -> None:
    insert(api, coll, {"title": "machine learning intro", "embedding": [0.0, 1.0]})
    insert(api, coll, {"title": "cooking", "embedding": [1.0, 0.0]})
    body = {"query": "machine learning", "vector": [1.0, 0.0]}
    assert titles(search(api, coll, {**body, "text_weight": 0.9, "vector_weight": 0.1}))[0] \
        == "machine learning intro"
    vec_heavy = search(api, coll, {**body, "text_weight": 0.1, "vector_weight": 0.9})
    assert titles(vec_heavy)[0] == "cooking"
    assert vec_heavy[1]["matched_fields"] == ["embedding", "title"]


def test_hybrid_scores_a_text_hit_with_its_vector_even_outside_vector_k(api: Api,
                                                                        coll: str) -> None:
    insert(api, coll, {"title": "tomato", "embedding": [0.6, 0.8]})
    insert(api, coll, {"title": "other", "embedding": [1.0, 0.0]})
    hits = search(api, coll, {"query": "tomato", "vector": [1.0, 0.0], "vector_k": 1})
    assert titles(hits) == ["tomato", "other"]
    # 0.5 * text 1.0 + 0.5 * cosine 0.6 scaled to (0.6 + 1) / 2
    assert hits[0]["score"] == pytest.approx(0.9) and hits[1]["score"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------ field rules


@pytest.fixture
def restricted(api: Api, coll: str) -> H:
    key = api.create_key(collection_permissions={
        coll: {"read": True, "exclude_fields": ["secret", "emb_hidden"]}})
    return api.headers(key["api_key"])


def test_hidden_fields_are_never_matched_scored_or_returned(api: Api, coll: str,
                                                           restricted: H) -> None:
    insert(api, coll, {"title": "apple", "secret": "apple apple apple banana"})
    insert(api, coll, {"title": "apple"})
    # the admin sees the secret's extra matches in the score...
    admin = search(api, coll, {"query": "apple"})
    assert admin[0]["score"] > admin[1]["score"]
    # ...the restricted key does not: equal scores, no 'secret' anywhere
    hits = search(api, coll, {"query": "apple"}, restricted)
    assert [h["score"] for h in hits] == [1.0, 1.0]
    assert all(h["matched_fields"] == ["title"] and "secret" not in h["record"] for h in hits)
    assert search(api, coll, {"query": "banana"}, restricted) == []
    assert search(api, coll, {"query": "banana", "fuzzy": True}, restricted) == []
    # a key limited by select_fields is held to them just the same
    only_title = api.headers(api.create_key(collection_permissions={
        coll: {"read": True, "select_fields": ["title"]}})["api_key"])
    assert [h["score"] for h in search(api, coll, {"query": "apple"}, only_title)] == [1.0, 1.0]
    assert search(api, coll, {"query": "banana"}, only_title) == []


def test_a_member_hidden_inside_an_array_is_never_matched_or_returned(api: Api,
                                                                      coll: str) -> None:
    insert(api, coll, {"title": "order", "items": [{"sku": "lamp", "secret": "zebra"},
                                                   {"sku": "desk", "secret": "zebra"}]})
    h = api.headers(api.create_key(collection_permissions={
        coll: {"read": True, "exclude_fields": ["items.secret"]}})["api_key"])
    assert search(api, coll, {"query": "zebra"}, h) == []
    assert search(api, coll, {"query": "zebra", "fuzzy": True}, h) == []
    hits = search(api, coll, {"query": "lamp"}, h)
    assert [item for hit in hits for item in hit["record"]["items"]] == [
        {"sku": "lamp"}, {"sku": "desk"}]
    assert search(api, coll, {"query": "zebra"})  # the admin finds it: the rule is the cause


def test_naming_a_hidden_field_is_refused(api: Api, coll: str, restricted: H) -> None:
    insert(api, coll, {"title": "t", "secret": "s", "emb_hidden": [1.0, 0.0]})
    url = f"/api/search/{coll}"
    flt = {"type": "Condition", "content": {"field": "secret", "operator": "Eq", "value": "s"}}
    for body in ({"query": "s", "fields": ["secret"]},
                 {"query": "s", "weights": {"secret": 2}},
                 {"query": "t", "filters": flt},
                 {"vector": [1.0, 0.0], "vector_field": "emb_hidden"}):
        assert_error(api.http.post(url, json=body, headers=restricted), 403, "forbidden")


def test_isolation_write_only_and_read_only_keys(api: Api, coll: str) -> None:
    insert(api, coll, {"title": "apple"})
    other = api.headers(api.create_key(collection_permissions={"other_*": ["read"]})["api_key"])
    write_only = api.headers(api.create_key(collection_permissions={coll: ["write"]})["api_key"])
    read_only = api.headers(api.create_key(read_only=True,
                                           collection_permissions={coll: ["read"]})["api_key"])
    for h in (other, write_only):
        assert_error(api.http.post(f"/api/search/{coll}", json={"query": "apple"}, headers=h),
                     403, "forbidden")
    assert titles(search(api, coll, {"query": "apple"}, read_only)) == ["apple"]


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("body", [
    [], "apple", {}, {"query": ""}, {"query": 3}, {"query": "a", "nope": 1},
    {"query": "a", "limit": 0}, {"query": "a", "limit": 100000}, {"query": "a", "limit": True},
    {"vector": []}, {"vector": ["x"]}, {"vector": [1.0], "vector_metric": "manhattan"},
    {"query": "a", "weights": {"title": -1}}, {"query": "a", "weights": "title"},
    {"query": "a", "fields": [""]}, {"query": "a", "fields": 7},
    {"query": "a", "language": "klingon"}, {"query": "a", "max_edit_distance": 9},
    {"query": "a", "filters": {"type": "Nope"}},
    {"query": "a", "filters": {}, "filter": {}},
    {"query": "a", "vector": [1.0], "text_weight": 0, "vector_weight": 0},
    {"query": "a", "text_weight": 2},
])
def test_bad_bodies_get_400_and_the_server_keeps_serving(api: Api, coll: str, body: Any) -> None:
    assert_error(api.http.post(f"/api/search/{coll}", json=body, headers=api.admin), 400)
    insert(api, coll, {"title": "still here"})
    assert titles(search(api, coll, {"query": "still"})) == ["still here"]


def test_a_dropped_collection_leaves_no_index_behind(api: Api) -> None:
    name = "srch_drop_" + uuid.uuid4().hex[:8]
    api.http.post(f"/api/collections/{name}", headers=api.admin)
    insert(api, name, {"title": "gone soon"})
    search(api, name, {"query": "gone"})
    state = api.info.server.state
    assert state is not None and name in state.search.indexed()
    api.http.delete(f"/api/collections/{name}", headers=api.admin)
    assert_error(api.http.post(f"/api/search/{name}", json={"query": "gone"},
                               headers=api.admin), 404, "collection_not_found")
    assert name not in state.search.indexed()


def test_unknown_collection_and_bad_names(api: Api) -> None:
    assert_error(api.http.post("/api/search/srch_missing_zz", json={"query": "a"},
                               headers=api.admin), 404, "collection_not_found")
    assert_error(api.http.post("/api/search/a:b", json={"query": "a"}, headers=api.admin), 400)
    r = api.http.post("/api/search/x", content=b"{", headers={**api.admin,
                                                             "Content-Type": "application/json"})
    assert_error(r, 400)


def test_official_client_body_shape_is_accepted(api: Api, coll: str) -> None:
    insert(api, coll, {"title": "Rust Programming", "category": "programming"})
    body = {"query": "rust", "fields": "title,category", "fuzzy": None, "bypass_ripple": None,
            "bypass_cache": True, "limit": None, "language": "english", "min_score": 0.0}
    assert titles(search(api, coll, body)) == ["Rust Programming"]


def test_search_leaves_no_plaintext_on_disk(api: Api, coll: str) -> None:
    word = "zyxsearchneedle" + uuid.uuid4().hex[:6]
    insert(api, coll, {"title": word})
    assert titles(search(api, coll, {"query": word})) == [word]
    assert scan(api.info.data_dir, [word.encode()]) == []


# ------------------------------------------------------------------------------ unit


def test_analysis_helpers() -> None:
    assert [stem(w) for w in ("running", "runs", "parties", "walked")] == [
        "run", "run", "party", "walk"]
    assert edit_distance("enginer", "engineer", 2) == 1
    assert edit_distance("abc", "xyz", 1) == 2
    req = parse_request({"query": "Hello, hello World", "weights": "title:2,body:0.5"})
    assert req.terms == ["hello", "world"] and req.weights == {"title": 2.0, "body": 0.5}


def test_index_sees_writes_made_by_another_process_on_the_same_data(tmp_path: Any) -> None:
    """Two AppStates on one data dir stand in for two server processes: the searching one
    never hears of the other's writes through its ChangeFeed, yet its results are current."""
    from mock_server.config import ServerConfig
    from mock_server.permissions import Scope
    from mock_server.state import AppState

    class Admin:
        key_id, label = "k", "admin"
        scope = Scope(is_admin=True, read_only=False, rules={})

    one = AppState.open(ServerConfig(data_dir=tmp_path), environ={})
    two = AppState.open(ServerConfig(data_dir=tmp_path), environ={})
    try:
        one.datastore.create_collection(Admin(), "c")
        rid = two.datastore.insert(Admin(), "c", {"title": "first"})["id"]
        hits = one.search.search(Admin(), "c", {"query": "first"})["results"]
        assert [h["record"]["id"] for h in hits] == [rid]
        two.datastore.update(Admin(), "c", rid, {"title": "second"})
        assert one.search.search(Admin(), "c", {"query": "first"})["results"] == []
        assert one.search.search(Admin(), "c", {"query": "second"})["total"] == 1
        two.datastore.delete(Admin(), "c", rid)
        assert one.search.search(Admin(), "c", {"query": "second"})["total"] == 0
    finally:
        one.close()
        two.close()
