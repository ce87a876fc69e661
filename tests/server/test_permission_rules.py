"""Unit tests of the authorization domain added for issue 13 (no HTTP): field rules through
arrays (``project_record``, writes judged by their diff), the delete rule, the queue
operation table, delegated-admin bounds and the key tree."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mock_server.config import TIER_LIMITS
from mock_server.crypto import KeyRing
from mock_server.delegation import Child, check_mint, exceeds
from mock_server.errors import ApiError
from mock_server.idempotency import Replay
from mock_server.keys import KeyStore
from mock_server.permissions import (
    QUEUE_OPERATIONS,
    Level,
    PermissionDenied,
    Scope,
    project_record,
)
from mock_server.ratelimit import effective_limit
from mock_server.state import _minted_secret
from mock_server.storage import Storage

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def scoped(raw: Any, *, read_only: bool = False) -> Scope:
    return Scope.from_raw(raw, is_admin=False, read_only=read_only)


SEGMENTS = ["a", "b", "s"]
leaves = st.one_of(st.integers(0, 3), st.text("xy", max_size=2), st.none())
values = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(SEGMENTS), inner, max_size=3)),
    max_leaves=14,
)
records = st.dictionaries(st.sampled_from(SEGMENTS), values, max_size=3)
paths = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3).map(".".join)


def reachable(value: Any, prefix: str = "") -> set[str]:
    """Every dotted path present in ``value``, with arrays transparent."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, child in value.items():
            path = prefix + key
            found.add(path)
            found |= reachable(child, path + ".")
    elif isinstance(value, list):
        for item in value:
            found |= reachable(item, prefix)
    return found


# --------------------------------------------------------------------------- projection

def test_exclude_reaches_into_arrays_and_nested_arrays() -> None:
    record = {"id": "1", "items": [{"s": 1, "a": 2}, 7, [{"s": 3, "b": 4}], {"a": {"s": 5}}]}
    assert project_record(record, None, ["items.s", "items.a.s"]) == {
        "id": "1", "items": [{"a": 2}, 7, [{"b": 4}], {"a": {}}]}


def test_select_inside_arrays_keeps_only_object_and_array_elements() -> None:
    record = {"id": "1", "items": [{"s": 1, "a": 2}, 7, [{"a": 3}], {"b": 1}], "x": 1}
    assert project_record(record, ["items.a"]) == {
        "id": "1", "items": [{"a": 2}, [{"a": 3}], {}]}


def test_a_selected_ancestor_wins_over_its_descendant() -> None:
    record = {"a": {"b": 1, "c": 2}}
    assert project_record(record, ["a.b", "a"]) == {"a": {"b": 1, "c": 2}}


def test_projection_copies() -> None:
    record = {"items": [{"a": [1]}]}
    out = project_record(record, ["items.a"])
    out["items"][0]["a"].append(2)
    assert record == {"items": [{"a": [1]}]}


@FAST
@given(records, st.lists(paths, min_size=1, max_size=3))
def test_an_excluded_path_is_never_reachable(record: dict[str, Any], excluded: list[str]
                                             ) -> None:
    scope = scoped({"c": {"read": True, "exclude_fields": excluded}})
    assert not reachable(scope.project("c", record)) & set(excluded)


@FAST
@given(records, st.lists(paths, max_size=3))
def test_selection_reaches_only_selected_paths_and_their_ancestors(
        record: dict[str, Any], selected: list[str]) -> None:
    out = project_record(record, selected)
    for path in reachable(out):
        assert any(s == path or path.startswith(s + ".") or s.startswith(path + ".")
                   for s in selected), path


# --------------------------------------------------------------------------- writes

ARRAY_RULE = {"c": {"read": True, "write": True, "writable_fields": ["items.qty"]}}
STORED = {"id": "r", "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}]}


@pytest.mark.parametrize(("items", "bad"), [
    ([{"sku": "a", "qty": 9}, {"sku": "b", "qty": 2}], []),
    ([{"sku": "z", "qty": 9}, {"sku": "b", "qty": 2}], ["items.sku"]),
    ([{"sku": "a", "qty": 9}], ["items"]),  # another length
    ([{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2, "x": 1}], ["items.x"]),
    ([{"sku": "a", "qty": True}, {"sku": "b", "qty": 2}], []),  # qty may change type
    ([{"sku": "a", "qty": 1}, {"qty": 2}], ["items.sku"]),  # removing a member
])
def test_array_writes_are_judged_by_what_they_change(items: Any, bad: list[str]) -> None:
    assert scoped(ARRAY_RULE).forbidden_writes("c", {"items": items}, STORED) == bad


def test_without_the_stored_record_an_array_write_is_judged_by_what_it_mentions() -> None:
    assert scoped(ARRAY_RULE).forbidden_writes("c", {"items": [{"qty": 1}]}) == []
    assert scoped(ARRAY_RULE).forbidden_writes("c", {"items": [{"qty": 1, "sku": "a"}]}) == [
        "items.sku"]
    assert scoped(ARRAY_RULE).forbidden_writes("c", {"items": []}) == ["items"]


def test_a_json_type_change_with_an_equal_python_value_is_a_change() -> None:
    rule = {"c": {"read": True, "write": True, "writable_fields": ["items.qty"]}}
    current = {"items": [{"flag": 1, "qty": 1}]}
    assert scoped(rule).forbidden_writes("c", {"items": [{"flag": True, "qty": 1}]},
                                         current) == ["items.flag"]


HIDDEN_RULE = {"c": {"read": True, "write": True, "exclude_fields": ["items.s"],
                     "writable_fields": ["items.a"]}}


@FAST
@given(st.lists(st.fixed_dictionaries({"a": leaves, "s": leaves}), min_size=1, max_size=3),
       st.lists(leaves, min_size=1, max_size=3), st.data())
def test_the_verdict_on_an_array_write_never_depends_on_hidden_values(
        stored: list[dict[str, Any]], other_hidden: list[Any], data: Any) -> None:
    twin = [{**item, "s": other_hidden[i % len(other_hidden)]} for i, item in enumerate(stored)]
    new = data.draw(st.lists(st.fixed_dictionaries({"a": leaves}), min_size=1, max_size=3))
    scope = scoped(HIDDEN_RULE)
    assert scope.forbidden_writes("c", {"items": new}, {"items": stored}) == \
        scope.forbidden_writes("c", {"items": new}, {"items": twin})


def test_an_array_holding_hidden_members_cannot_be_replaced() -> None:
    scope = scoped(HIDDEN_RULE)
    current = {"items": [{"a": 1, "s": "x"}]}
    assert scope.forbidden_writes("c", {"items": [{"a": 2}]}, current) == ["items"]
    assert scope.forbidden_writes("c", {"items": [{"a": 2, "s": "x"}]}, current) == [
        "items", "items.s"]


def test_ambiguous_names_inside_arrays_are_forbidden_even_with_a_diff() -> None:
    rule = {"c": ["read", "write"]}
    assert scoped(rule).forbidden_writes("c", {"items": [{"a.b": 1}]}, {"items": []}) == [
        "items.a.b"]


# --------------------------------------------------------------------------- deletes

@pytest.mark.parametrize(("rule", "allowed"), [
    (["read", "write"], True),
    (["write"], True),
    (["admin"], True),
    ({"admin": True, "exclude_fields": ["s"]}, True),
    (["read"], False),
    ({"read": True, "write": True, "writable_fields": ["name"]}, False),
    ({"read": True, "write": True, "exclude_fields": ["s"]}, False),
    ({"read": True, "write": True, "select_fields": ["name"]}, False),
])
def test_deleting_needs_write_on_every_field(rule: Any, allowed: bool) -> None:
    scope = scoped({"c": rule})
    assert scope.may_delete("c") is allowed
    if allowed:
        scope.require_delete("c")
    else:
        with pytest.raises(PermissionDenied, match=r"delete|write"):
            scope.require_delete("c")


def test_delete_rule_for_admin_and_read_only_keys() -> None:
    assert Scope.from_raw({}, is_admin=True, read_only=False).may_delete("anything")
    assert not scoped({"c": ["read", "write"]}, read_only=True).may_delete("c")
    assert not scoped({"other": ["read", "write"]}).may_delete("c")


# --------------------------------------------------------------------------- queue table

def test_queue_table_reads_look_and_writes_consume_or_change() -> None:
    reads = {op for op, level in QUEUE_OPERATIONS.items() if level is Level.READ}
    assert reads == {"peek", "size", "claim_count", "get_subscription"}
    assert set(QUEUE_OPERATIONS) - reads == {
        "send", "send_batch", "poll", "ack", "renew", "unclaim_all", "move", "purge",
        "subscribe", "unsubscribe"}


@pytest.mark.parametrize("resource", ["queue:q", "dedupq:q", "bus:q"])
def test_require_operation_applies_the_table_to_every_service(resource: str) -> None:
    reader = scoped({resource: ["read"]})
    writer = scoped({resource: ["write"]})
    for op, level in QUEUE_OPERATIONS.items():
        if level is Level.READ:
            reader.require_operation(resource, op)
            with pytest.raises(PermissionDenied):
                writer.require_operation(resource, op)
        else:
            writer.require_operation(resource, op)
            with pytest.raises(PermissionDenied, match="write level"):
                reader.require_operation(resource, op)


# --------------------------------------------------------------------------- delegation

@pytest.fixture
def keys(tmp_path: Path) -> Any:
    storage = Storage(tmp_path)
    yield KeyStore(storage, KeyRing(os.urandom(32)))
    storage.close()


def limit_for(*, tier: str, is_admin: bool, override: int | None) -> int | None:
    return effective_limit(tier=tier, is_admin=is_admin, override=override,
                           tier_limits=TIER_LIMITS)


def child(**fields: Any) -> Child:
    base: dict[str, Any] = {"is_admin": False, "read_only": False,
                            "collection_permissions": {"team_a": ["read"]},
                            "allowed_ips": None, "tier": None, "rate_limit": None}
    return Child(**{**base, **fields})


def test_minting_fills_inherited_fields_from_the_minter(keys: KeyStore) -> None:
    minter, _ = keys.create("m", collection_permissions={"team_*": ["admin"]},
                            allowed_ips=["10.0.0.0/8"], tier="startup", rate_limit=7)
    made = check_mint(minter, child(), limit_for)
    assert (made.allowed_ips, made.tier, made.rate_limit) == (["10.0.0.0/8"], "startup", 7)
    free = check_mint(minter, child(tier="free"), limit_for)
    assert free.rate_limit == 7  # free's 50/min is more than the minter's 7


@pytest.mark.parametrize(("fields", "reason"), [
    ({"is_admin": True}, "is_admin"),
    ({"collection_permissions": {"other": ["read"]}}, "permissions"),
    ({"tier": "business"}, "tier"),
    ({"rate_limit": 251}, "rate limit"),
    ({"allowed_ips": ["10.1.0.0/16", "11.0.0.0/8"]}, "allowed_ips"),
])
def test_exceeds_names_what_is_too_much(keys: KeyStore, fields: dict[str, Any],
                                        reason: str) -> None:
    minter, _ = keys.create("m", collection_permissions={"team_*": ["admin"]},
                            allowed_ips=["10.0.0.0/8"], tier="startup")
    wanted = child(**{"allowed_ips": ["10.1.0.0/16"], "tier": "startup", **fields})
    found = exceeds(minter, wanted, limit_for)
    assert found is not None and reason in found
    with pytest.raises(ApiError) as err:
        check_mint(minter, wanted, limit_for)
    assert err.value.status == 403


def test_keys_without_an_admin_rule_cannot_mint(keys: KeyStore) -> None:
    plain, _ = keys.create("p", collection_permissions={"team_a": ["read", "write"]})
    with pytest.raises(ApiError) as err:
        check_mint(plain, child(), limit_for)
    assert err.value.status == 403


def test_deleting_a_minter_deletes_its_tree_and_nothing_else(keys: KeyStore) -> None:
    root, _ = keys.create("root", collection_permissions={"team_*": ["admin"]})
    kid, _ = keys.create("kid", created_by=root.key_id)
    grand, grand_secret = keys.create("grand", created_by=kid.key_id)
    other, _ = keys.create("other")
    assert set(keys.descendants(root.key_id)) == {kid.key_id, grand.key_id}
    assert keys.get(grand.key_id).created_by == kid.key_id  # type: ignore[union-attr]
    assert set(keys.delete(root.key_id)) == {root.key_id, kid.key_id, grand.key_id}
    assert keys.authenticate(grand_secret) is None
    assert [k.key_id for k in keys.list()] == [other.key_id]
    assert keys.delete(root.key_id) == ()


# --------------------------------------------------------------------------- replays

@pytest.mark.parametrize(("status", "body", "found"), [
    (200, b'{"api_key":"eko_x","key_id":"key_1","label":"l"}', ("key_1", "eko_x")),
    (200, b'{"id":"r","api_key":5}', None),
    (403, b'{"api_key":"eko_x","key_id":"key_1"}', None),
    (200, b'[1, "api_key"]', None),
    (200, b'{"name": "no secret here"}', None),
])
def test_which_stored_answers_hand_out_a_secret(status: int, body: bytes, found: Any) -> None:
    assert _minted_secret(Replay(status, [], body)) == found


# --------------------------------------------------------------------------- DataBus names

def test_subscriptions_of_an_old_data_dir_move_to_per_key_names(tmp_path: Path) -> None:
    from mock_server.databus import DataBus

    ring = KeyRing(os.urandom(32))
    admin = Scope.from_raw({}, is_admin=True, read_only=False)
    storage = Storage(tmp_path)
    DataBus(storage, ring).subscribe("key_a", admin, "jobs", collections=["c"])
    with storage.transaction() as conn:  # as a data dir made before names were per key
        conn.execute("INSERT INTO bus_subscriptions(name, uid, owner, created_at, expires_at,"
                     " ttl, event_ttl, spec) SELECT name, uid, owner, created_at, expires_at,"
                     " ttl, event_ttl, spec FROM bus_subs")
        conn.execute("DELETE FROM bus_subs")
    storage.close()
    reopened = Storage(tmp_path)
    try:
        bus = DataBus(reopened, ring)
        assert [s.name for s in bus.list_owned("key_a")] == ["jobs"]
        assert bus.get("key_a", admin, "jobs").collections == ("c",)
        bus.subscribe("key_b", admin, "jobs", collections=["d"])  # per key now
        assert reopened.conn.execute("SELECT COUNT(*) FROM bus_subscriptions").fetchone()[0] == 0
    finally:
        reopened.close()
