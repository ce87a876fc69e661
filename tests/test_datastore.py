"""DataStore through the SDK: CRUD, queries, batches, and isolation between tenants' keys."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from ekoclient import AsyncAuthenticator, AsyncClient, Authenticator, Client, where
from ekoclient.errors import (
    InvalidArgumentError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ValidationError,
)

from .sdk_helpers import metric


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def users(admin: Client) -> Iterator[str]:
    name = _name("users")
    admin.datastore.create_collection(name)
    yield name
    admin.datastore.drop_collection(name)


class User(BaseModel):
    id: str
    name: str
    age: int


def test_crud_round_trip(admin: Client, users: str) -> None:
    stored = admin.datastore.insert(users, {"name": "ann", "age": 31})
    assert stored["name"] == "ann" and isinstance(stored["id"], str)
    assert admin.datastore.get(users, stored["id"]) == stored
    updated = admin.datastore.update(users, stored["id"], {"age": 32})
    assert updated == {**stored, "age": 32}
    admin.datastore.delete(users, stored["id"])
    with pytest.raises(NotFoundError):
        admin.datastore.get(users, stored["id"])


def test_find_with_filter_sort_and_paging(admin: Client, users: str) -> None:
    admin.datastore.batch_insert(users, [{"name": f"u{i}", "age": i, "team": "ab"[i % 2]}
                                         for i in range(30)])
    found = admin.datastore.find(users, where("age").gte(10) & where("team").eq("a"),
                                 sort=[("age", False)], limit=5, skip=1)
    assert [r["age"] for r in found] == [26, 24, 22, 20, 18]
    everyone = list(admin.datastore.iter_find(users, sort=["age"], page_size=7))
    assert [r["age"] for r in everyone] == list(range(30))
    capped = list(admin.datastore.iter_find(users, page_size=4, limit=10))
    assert len(capped) == 10


def test_select_and_exclude_fields(admin: Client, users: str) -> None:
    rec = admin.datastore.insert(users, {"name": "b", "age": 5, "extra": {"x": 1, "y": 2}})
    only = admin.datastore.get(users, rec["id"], select_fields=["name"])
    assert set(only) == {"id", "name"}
    without = admin.datastore.find(users, where("name").eq("b"), exclude_fields=["extra.y"])
    assert without[0]["extra"] == {"x": 1}


def test_model_parsing(admin: Client, users: str) -> None:
    rec = admin.datastore.insert(users, {"name": "m", "age": 40})
    user = admin.datastore.get(users, rec["id"], model=User)
    assert isinstance(user, User) and user.age == 40
    [again] = admin.datastore.find(users, where("name").eq("m"), model=User)
    assert again == user


def test_batch_results_report_each_item(admin: Client, users: str) -> None:
    result = admin.datastore.batch_insert(users, [{"name": "a", "age": 1},
                                                  {"name": "b", "age": 2}])
    assert len(result.successful) == 2 and result.failed == []
    ghost = "x" * 22
    upd = admin.datastore.batch_update(users, {result.successful[0]: {"age": 10},
                                               ghost: {"age": 11}})
    assert upd.successful == [result.successful[0]]
    assert len(upd.failed) == 1 and upd.failed[0].code
    deleted = admin.datastore.batch_delete(users, [result.successful[1], ghost])
    assert deleted.successful == [result.successful[1]]
    assert admin.datastore.get(users, result.successful[0])["age"] == 10


def test_gdpr_erasure_leaves_nothing_behind_and_is_audited(admin: Client) -> None:
    people, events = _name("people"), _name("events")
    admin.datastore.create_collection(people)
    admin.datastore.create_collection(events)
    try:
        person = admin.datastore.insert(people, {"email": "ann@example.com"})
        other = admin.datastore.insert(people, {"email": "bob@example.com"})
        admin.datastore.batch_insert(events, [{"user_id": person["id"], "n": i}
                                              for i in range(5)])
        admin.datastore.insert(events, {"user_id": other["id"], "n": 99})
        admin.datastore.delete(people, person["id"])
        erased = admin.datastore.batch_delete(events, filter=where("user_id").eq(person["id"]))
        assert len(erased.successful) == 5
        assert admin.datastore.find(events, where("user_id").eq(person["id"])) == []
        assert len(admin.datastore.find(events)) == 1
        with pytest.raises(NotFoundError):
            admin.datastore.get(people, person["id"])
        audit = admin.admin.audit_log(limit=1000)
        deletes = [r for r in audit if r.target_id == person["id"]]
        assert deletes, "the hard delete must leave an audit record"
        assert all("ann@example.com" not in r.model_dump_json() for r in audit)
    finally:
        admin.datastore.drop_collection(people)
        admin.datastore.drop_collection(events)


# --- Isolation matrix: several tenants through one Authenticator -------------------------

@pytest.fixture
def tenants(admin: Client) -> Iterator[dict[str, Any]]:
    run = uuid.uuid4().hex[:6]
    names = {"orders": f"orders_{run}", "staff": f"staff_{run}",
             "team_a": f"team_a_x{run}", "team_b": f"team_b_x{run}"}
    for n in names.values():
        admin.datastore.create_collection(n)
    staff_rec = admin.datastore.insert(names["staff"], {
        "name": "Ada", "salary": 1, "address": {"city": "Leeds", "street": "Row"}})
    order_rec = admin.datastore.insert(names["orders"], {"item": "lamp"})
    team_b_rec = admin.datastore.insert(names["team_b"], {"title": "b's"})
    keys = {
        "sales": admin.admin.create_key("sales", collection_permissions={
            names["orders"]: ["read", "write"]}),
        "viewer": admin.admin.create_key("viewer", read_only=True, collection_permissions={
            names["staff"]: {"read": True, "exclude_fields": ["salary", "address.street"]}}),
        "team_a": admin.admin.create_key("team", collection_permissions={
            "team_a_*": {"read": True, "write": True, "writable_fields": ["title", "done"]}}),
    }
    auth = Authenticator(admin)
    yield {"names": names, "staff": staff_rec, "order": order_rec, "team_b": team_b_rec,
           "view": {k: auth.using_credentials(v.api_key) for k, v in keys.items()}}
    for v in keys.values():
        admin.admin.delete_key(v.key_id)
    for n in names.values():
        admin.datastore.drop_collection(n)


def test_keys_only_reach_their_own_collections(tenants: dict[str, Any]) -> None:
    n, view = tenants["names"], tenants["view"]
    assert view["sales"].datastore.get(n["orders"], tenants["order"]["id"])["item"] == "lamp"
    for who, collection in [("sales", n["staff"]), ("viewer", n["orders"]),
                            ("team_a", n["orders"]), ("team_a", n["team_b"])]:
        with pytest.raises(PermissionDeniedError):
            view[who].datastore.find(collection)


def test_an_id_from_another_collection_is_not_found(tenants: dict[str, Any]) -> None:
    n, view = tenants["names"], tenants["view"]
    with pytest.raises(NotFoundError):
        view["sales"].datastore.get(n["orders"], tenants["staff"]["id"])


def test_read_only_key_reads_projected_and_cannot_write(tenants: dict[str, Any]) -> None:
    n, viewer = tenants["names"], tenants["view"]["viewer"]
    [rec] = viewer.datastore.find(n["staff"])
    assert rec == {"id": tenants["staff"]["id"], "name": "Ada", "address": {"city": "Leeds"}}
    assert viewer.datastore.get(n["staff"], rec["id"]) == rec
    with pytest.raises(PermissionDeniedError):
        viewer.datastore.insert(n["staff"], {"name": "Eve"})
    with pytest.raises(PermissionDeniedError):
        viewer.datastore.update(n["staff"], rec["id"], {"name": "Eve"})
    with pytest.raises(PermissionDeniedError):
        viewer.datastore.delete(n["staff"], rec["id"])


@pytest.mark.parametrize("field", ["salary", "address.street", "address"])
def test_filtering_or_sorting_on_a_hidden_field_is_refused(tenants: dict[str, Any],
                                                           field: str) -> None:
    n, viewer = tenants["names"], tenants["view"]["viewer"]
    with pytest.raises(PermissionDeniedError):
        viewer.datastore.find(n["staff"], where(field).eq(1))
    with pytest.raises(PermissionDeniedError):
        viewer.datastore.find(n["staff"], sort=[field])


def test_pattern_key_writes_only_writable_fields(tenants: dict[str, Any],
                                                 admin: Client) -> None:
    n, team = tenants["names"], tenants["view"]["team_a"]
    task = team.datastore.insert(n["team_a"], {"title": "t", "done": False})
    assert team.datastore.update(n["team_a"], task["id"], {"done": True})["done"] is True
    for bad in ({"owner": "m"}, {"title": "x", "owner": "m"}, {"meta": {"deep": 1}}):
        with pytest.raises(PermissionDeniedError):
            team.datastore.update(n["team_a"], task["id"], bad)
    assert admin.datastore.get(n["team_a"], task["id"]) == {**task, "done": True}


# --- Bad input through the SDK: a clear typed error, nothing stored ----------------------

@pytest.mark.parametrize(
    ("filter_", "error"),
    [({"type": "Condition", "content": {"field": "age", "operator": "Gtx", "value": 1}},
      ValidationError),
     ({"type": "Condition", "content": {"field": "age", "operator": "In", "value": 3}},
      ValidationError),
     ({"type": "Logical", "content": {"operator": "Xor", "expressions": []}}, ValidationError),
     ({"type": "Condition"}, ValidationError)],
)
def test_malformed_filters_are_refused(admin: Client, users: str, filter_: dict[str, Any],
                                       error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        admin.datastore.find(users, filter_)
    assert info.value.message  # type: ignore[attr-defined]


@pytest.mark.parametrize("limit", [-1, 0, 10**9])
def test_absurd_limits_are_refused_before_sending(admin: Client, users: str,
                                                  limit: int) -> None:
    with pytest.raises(InvalidArgumentError, match="limit"):
        admin.datastore.find(users, limit=limit)


@pytest.mark.parametrize("record", [{"id": "mine"}, {"_created": 1}])
def test_system_fields_in_a_write_are_refused(admin: Client, users: str,
                                              record: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        admin.datastore.insert(users, {"name": "x", **record})
    assert admin.datastore.find(users) == []


def test_tampered_id_is_not_found(admin: Client, users: str) -> None:
    rec = admin.datastore.insert(users, {"name": "t"})
    tampered = rec["id"][:-1] + ("A" if rec["id"][-1] != "A" else "B")
    with pytest.raises(NotFoundError):
        admin.datastore.get(users, tampered)


def test_an_oversize_batch_stores_nothing(admin: Client, users: str) -> None:
    with pytest.raises((PayloadTooLargeError, ValidationError)):
        admin.datastore.batch_insert(users, [{"n": i} for i in range(10_000)])
    assert admin.datastore.find(users) == []


def test_non_json_values_are_refused_before_sending(admin: Client, users: str) -> None:
    with pytest.raises(InvalidArgumentError):
        admin.datastore.insert(users, {"x": float("nan")})
    with pytest.raises(InvalidArgumentError):
        admin.datastore.insert(users, {"x": object()})
    with pytest.raises(InvalidArgumentError):
        admin.datastore.insert("", {"x": 1})


# --- One pool for many keys --------------------------------------------------------------

async def test_2000_views_open_no_more_connections_than_the_pool(
        ekodb_server: Any, admin: Client) -> None:
    collection = _name("pooled")
    admin.datastore.create_collection(collection)
    keys = [admin.admin.create_key(f"pool{i}", collection_permissions={
        collection: ["read"]}).api_key for i in range(100)]
    limit = 8
    # 2000 calls queue for 8 connections: on a busy machine the last ones wait longer than
    # the default max_elapsed (30 s), which bounds the whole call, queueing included
    async with AsyncClient(base_url=ekodb_server.url, ca_bundle=ekodb_server.ca_bundle,
                           pool={"max_connections": limit, "max_keepalive": limit},
                           retry={"max_elapsed": 300}) as client:
        auth = AsyncAuthenticator(client)
        views = [auth.using_credentials(keys[i % len(keys)]) for i in range(2000)]
        before = metric(ekodb_server, "ekodb_connections_opened_total")
        results = await asyncio.gather(*(v.datastore.find(collection) for v in views))
        opened = metric(ekodb_server, "ekodb_connections_opened_total") - before
    assert results == [[]] * 2000
    # The metrics reads themselves open one connection each.
    assert 1 <= opened <= limit + 2
    admin.datastore.drop_collection(collection)


def test_views_are_safe_to_share_across_threads(admin: Client, users: str) -> None:
    key = admin.admin.create_key("threads", collection_permissions={users: ["read", "write"]})
    view = Authenticator(admin).using_credentials(key.api_key)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(5):
                view.datastore.insert(users, {"t": n, "i": i})
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(list(admin.datastore.iter_find(users))) == 80


async def test_async_datastore_round_trip(async_admin: AsyncClient) -> None:
    name = _name("async")
    await async_admin.datastore.create_collection(name)
    rec = await async_admin.datastore.insert(name, {"v": 1})
    assert (await async_admin.datastore.get(name, rec["id"]))["v"] == 1
    seen = [r async for r in async_admin.datastore.iter_find(name, page_size=1)]
    assert seen == [rec]
    assert name in await async_admin.datastore.list_collections()
    await async_admin.datastore.drop_collection(name)
