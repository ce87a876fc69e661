"""Tests for the pure permission engine (mock_server/permissions.py, SPEC §4.1)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mock_server.permissions import (
    MAX_FIELDS,
    MAX_RULES,
    Level,
    PermissionDenied,
    PermissionSpecError,
    Rule,
    Scope,
    parse_permissions,
    pattern_contains,
    pattern_matches,
    validate_resource_name,
)

# --------------------------------------------------------------------------- strategies

NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
PREFIXES = ["", "blob:", "queue:", "dedupq:", "bus:"]

bodies = st.text(alphabet=NAME_CHARS, min_size=1, max_size=24)
prefixes = st.sampled_from(PREFIXES)
resource_names = st.builds(lambda p, b: p + b, prefixes, bodies)

# Small pools so generated scopes overlap often enough for covers() to say yes.
NAME_POOL = [
    "users",
    "user_x",
    "team_a_1",
    "team_b",
    "secret",
    "blob:photos",
    "blob:team_a_x",
    "queue:jobs",
    "dedupq:jobs",
    "bus:users",
]
PATTERN_POOL = [
    *NAME_POOL,
    "*",
    "team_*",
    "team_a_*",
    "user*",
    "*s",
    "u*s",
    "*_*",
    "blob:*",
    "blob:team_*",
    "queue:*",
    "bus:*",
]
SEGMENTS = ["a", "b", "c"]
field_paths = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3).map(".".join)
field_lists = st.lists(field_paths, max_size=4)
level_lists = st.lists(st.sampled_from(["read", "write", "admin"]), max_size=3)


@st.composite
def rule_objects(draw: st.DrawFn, force_admin: bool = False) -> dict[str, Any]:
    """A raw rule in object form with any subset of the optional keys."""
    raw: dict[str, Any] = {}
    for key in ("read", "write", "admin"):
        if draw(st.booleans()):
            raw[key] = draw(st.booleans())
    if force_admin:
        raw["admin"] = True
    for key in ("select_fields", "exclude_fields", "writable_fields"):
        if draw(st.integers(0, 2)) == 0:
            raw[key] = draw(field_lists)
    return raw


raw_rules = st.one_of(level_lists, rule_objects())
raw_documents = st.dictionaries(st.sampled_from(PATTERN_POOL), raw_rules, max_size=5)


@st.composite
def scopes(draw: st.DrawFn, admin_rules: bool = False) -> Scope:
    """A scoped (non-admin) key; with admin_rules every rule grants ADMIN or nothing."""
    if admin_rules:
        rule = st.one_of(st.just(["admin"]), rule_objects(force_admin=True), st.just([]))
        raw = draw(st.dictionaries(st.sampled_from(PATTERN_POOL), rule, max_size=5))
        return Scope.from_raw(raw, is_admin=False, read_only=False)
    return Scope.from_raw(draw(raw_documents), is_admin=False, read_only=draw(st.booleans()))


records = st.recursive(
    st.one_of(st.integers(), st.text(max_size=3), st.none()),
    lambda children: st.dictionaries(st.sampled_from([*SEGMENTS, "_x"]), children, max_size=4),
    max_leaves=12,
).filter(lambda value: isinstance(value, dict))
records_with_id = st.builds(lambda r, i: {**r, "id": i}, records, st.text(min_size=1, max_size=4))


def scoped(raw: object, *, read_only: bool = False) -> Scope:
    return Scope.from_raw(raw, is_admin=False, read_only=read_only)


def paths_of(record: dict[str, Any], prefix: str = "") -> set[str]:
    """Every dotted path present in a nested record."""
    found: set[str] = set()
    for key, value in record.items():
        found.add(prefix + key)
        if isinstance(value, dict):
            found |= paths_of(value, prefix + key + ".")
    return found


def nested(path: str, leaf: object) -> dict[str, Any]:
    """{"a": {"b": leaf}} for "a.b"."""
    value: Any = leaf
    for part in reversed(path.split(".")):
        value = {part: value}
    return dict(value)


def fill(pattern: str, fills: list[str]) -> str:
    """A concrete name matching pattern: each star replaced by the next fill."""
    pieces = pattern.split("*")
    return pieces[0] + "".join(f + piece for f, piece in zip(fills, pieces[1:], strict=True))


ADMIN = Scope.from_raw({}, is_admin=True, read_only=False)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- pattern matching


@given(resource_names)
def test_literal_name_matches_itself_as_pattern(name: str) -> None:
    assert pattern_matches(name, name)


@given(prefixes, bodies, st.data())
def test_star_replacing_a_substring_still_matches(prefix: str, body: str, data: Any) -> None:
    start = data.draw(st.integers(0, len(body)))
    end = data.draw(st.integers(start, len(body)))
    pattern = prefix + body[:start] + "*" + body[end:]
    assert pattern_matches(pattern, prefix + body)


@given(st.sampled_from(PREFIXES[1:]), bodies, bodies, st.data())
def test_star_never_matches_across_colon(prefix: str, body: str, other: str, data: Any) -> None:
    # Any bare pattern built from `other` with a star cannot reach into a prefixed name.
    cut = data.draw(st.integers(0, len(other)))
    bare_pattern = other[:cut] + "*" + other[cut:]
    assert not pattern_matches(bare_pattern, prefix + body)
    assert not pattern_matches("*", prefix + body)


def test_prefixed_star_matches_only_its_own_service() -> None:
    assert pattern_matches("blob:*", "blob:photos")
    assert not pattern_matches("blob:*", "queue:photos")
    assert not pattern_matches("blob*", "blob:photos")


def test_star_in_the_middle_of_a_name() -> None:
    assert pattern_matches("team_a_*", "team_a_x")
    assert not pattern_matches("team_a_*", "team_b_x")


@given(st.sampled_from(PATTERN_POOL), st.sampled_from(PATTERN_POOL), st.data())
def test_pattern_contains_is_sound(outer: str, inner: str, data: Any) -> None:
    # Fill inner's stars with generated text; the result must match outer too.
    stars = inner.count("*")
    name = fill(inner, [data.draw(st.text(alphabet=NAME_CHARS, max_size=5)) for _ in range(stars)])
    if pattern_contains(outer, inner):
        assert pattern_matches(outer, name)


# --------------------------------------------------------------------------- most specific wins


def test_exact_name_beats_any_pattern() -> None:
    scope = scoped({"*": ["admin"], "secret": []})
    assert not scope.allows("secret", Level.READ)
    assert scope.allows("users", Level.READ)


def test_pattern_with_more_literals_wins_and_rules_are_not_unioned() -> None:
    scope = scoped({"team_*": ["read"], "team_a_*": ["write"]})
    assert scope.allows("team_a_x", Level.WRITE)
    assert not scope.allows("team_a_x", Level.READ)
    assert scope.allows("team_b", Level.READ)


def test_tie_between_patterns_is_broken_independently_of_document_order() -> None:
    # "a*c" and "ab*" both have two literal characters and both match "abc".
    first = scoped({"a*c": ["read"], "ab*": ["write"]})
    second = scoped({"ab*": ["write"], "a*c": ["read"]})
    assert first.rule_for("abc") == second.rule_for("abc") == Rule(read=True)


# --------------------------------------------------------------------------- levels


@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        (["read"], {Level.READ}),
        (["write"], {Level.WRITE}),
        (["admin"], {Level.READ, Level.WRITE, Level.ADMIN}),
        (["read", "write"], {Level.READ, Level.WRITE}),
        ([], set()),
    ],
)
def test_level_implications(levels: list[str], expected: set[Level]) -> None:
    scope = scoped({"users": levels})
    assert {level for level in Level if scope.allows("users", level)} == expected


def test_object_form_levels_match_list_form() -> None:
    assert parse_permissions({"u": {"write": True}}) == parse_permissions({"u": ["write"]})


def test_resource_without_rule_is_denied() -> None:
    assert not scoped({"users": ["admin"]}).allows("orders", Level.READ)


def test_require_raises_naming_resource_and_level() -> None:
    with pytest.raises(PermissionDenied, match=r"write 'orders'"):
        scoped({"orders": ["read"]}).require("orders", Level.WRITE)


@given(raw_documents, st.sampled_from(NAME_POOL), st.sampled_from([Level.WRITE, Level.ADMIN]))
def test_read_only_never_allows_more_than_read(raw: Any, name: str, level: Level) -> None:
    assert not scoped(raw, read_only=True).allows(name, level)


def test_read_only_keeps_read_granted_by_admin_but_not_by_write() -> None:
    scope = scoped({"a": ["admin"], "b": ["write"]}, read_only=True)
    assert scope.allows("a", Level.READ)
    assert not scope.allows("b", Level.READ)


@given(resource_names, st.sampled_from(list(Level)))
def test_admin_allows_everything(name: str, level: Level) -> None:
    assert ADMIN.allows(name, level)


def test_admin_and_read_only_together_are_rejected() -> None:
    with pytest.raises(PermissionSpecError, match="both is_admin and read_only"):
        Scope.from_raw({}, is_admin=True, read_only=True)


# --------------------------------------------------------------------------- projection


@settings(parent=FAST)
@given(records_with_id, field_lists.filter(bool))
def test_projection_never_contains_an_excluded_path(record: dict[str, Any], excl: Any) -> None:
    scope = scoped({"c": {"read": True, "exclude_fields": excl}})
    assert not paths_of(scope.project("c", record)) & set(excl)


@settings(parent=FAST)
@given(records_with_id, field_lists, field_lists)
def test_projection_top_level_keys_are_selected_or_id(
    record: dict[str, Any], select: list[str], excl: list[str]
) -> None:
    scope = scoped({"c": {"read": True, "select_fields": select, "exclude_fields": excl}})
    tops = {path.split(".")[0] for path in select} | {"id"}
    assert set(scope.project("c", record)) <= tops


@settings(parent=FAST)
@given(records_with_id, raw_rules)
def test_projection_is_idempotent(record: dict[str, Any], rule: Any) -> None:
    scope = scoped({"c": rule, "*": ["read"]} if rule == [] else {"c": rule})
    if not scope.allows("c", Level.READ):
        return
    once = scope.project("c", record)
    assert scope.project("c", once) == once


@settings(parent=FAST)
@given(records_with_id, field_lists)
def test_projection_always_keeps_id(record: dict[str, Any], select: list[str]) -> None:
    scope = scoped({"c": {"read": True, "select_fields": select}})
    assert scope.project("c", record)["id"] == record["id"]


def test_projection_removes_nested_excluded_and_keeps_nested_selected() -> None:
    record = {"id": "1", "name": "n", "address": {"city": "c", "street": "s"}, "x": 1}
    excluded = scoped({"c": {"read": True, "exclude_fields": ["address.street"]}})
    assert excluded.project("c", record) == {
        "id": "1",
        "name": "n",
        "address": {"city": "c"},
        "x": 1,
    }
    selected = scoped({"c": {"read": True, "select_fields": ["address.city"]}})
    assert selected.project("c", record) == {"id": "1", "address": {"city": "c"}}


def test_projection_returns_a_copy() -> None:
    record: dict[str, Any] = {"id": "1", "address": {"city": "c"}}
    projected = scoped({"c": ["read"]}).project("c", record)
    projected["address"]["city"] = "changed"
    assert record["address"]["city"] == "c"


def test_projection_without_read_is_denied() -> None:
    with pytest.raises(PermissionDenied):
        scoped({"c": ["write"]}).project("c", {"id": "1"})


def test_admin_projection_is_the_whole_record() -> None:
    record = {"id": "1", "_meta": {"v": 1}, "a": {"b": 2}}
    assert ADMIN.project("c", record) == record


# --------------------------------------------------------------------------- readable / writable


@pytest.mark.parametrize(
    ("rule", "path", "expected"),
    [
        ({"read": True, "select_fields": ["address.city"]}, "address", False),
        ({"read": True, "select_fields": ["address.city"]}, "address.city", True),
        ({"read": True, "select_fields": ["address.city"]}, "address.city.zip", True),
        ({"read": True, "select_fields": ["address.city"]}, "name", False),
        ({"read": True, "select_fields": ["address.city"]}, "id", True),
        ({"read": True, "exclude_fields": ["address.street"]}, "address", False),
        ({"read": True, "exclude_fields": ["address.street"]}, "address.street.no", False),
        ({"read": True, "exclude_fields": ["address.street"]}, "address.city", True),
        ({"read": True}, "a..b", False),
        ({"write": True}, "name", False),
    ],
)
def test_readable(rule: dict[str, Any], path: str, expected: bool) -> None:
    assert scoped({"c": rule}).readable("c", path) is expected


@given(raw_rules, field_paths, st.integers())
def test_single_path_write_allowed_iff_path_writable(rule: Any, path: str, leaf: int) -> None:
    scope = scoped({"c": rule})
    allowed = scope.forbidden_writes("c", nested(path, leaf)) == []
    assert allowed == scope.writable("c", path)


@given(raw_rules, field_paths)
def test_without_writable_fields_writable_equals_readable(rule: Any, path: str) -> None:
    scope = scoped({"c": rule})
    found = scope.rule_for("c")
    if found is None or found.writable_fields is not None or not found.grants(Level.READ):
        return
    assert scope.writable("c", path) == (scope.readable("c", path) and found.grants(Level.WRITE))


def test_nested_write_reports_the_touched_excluded_path() -> None:
    scope = scoped({"c": {"read": True, "write": True, "exclude_fields": ["address.street"]}})
    changes = {"address": {"street": "s", "city": "c"}, "name": "n"}
    assert scope.forbidden_writes("c", changes) == ["address.street"]


def test_replacing_an_object_that_hides_a_field_is_forbidden() -> None:
    scope = scoped({"c": {"write": True, "read": True, "exclude_fields": ["address.street"]}})
    assert scope.forbidden_writes("c", {"address": "flat"}) == ["address"]


def test_writable_fields_is_an_allowlist_independent_of_readable() -> None:
    scope = scoped({"c": {"read": True, "write": True, "writable_fields": ["name"]}})
    assert scope.forbidden_writes("c", {"name": 1, "email": 2}) == ["email"]


@pytest.mark.parametrize("scope", [ADMIN, scoped({"c": ["admin"]})], ids=["admin", "scoped"])
def test_system_fields_are_never_writable(scope: Scope) -> None:
    changes = {"id": "x", "_meta": {"v": 1}, "ok": 1}
    assert scope.forbidden_writes("c", changes) == ["_meta.v", "id"]


def test_keys_with_dots_or_empty_are_forbidden_as_ambiguous() -> None:
    assert ADMIN.forbidden_writes("c", {"a.b": 1, "": 2, "a": {"": 3}}) == ["", "a.", "a.b"]


def test_without_write_level_every_touched_path_is_forbidden() -> None:
    assert scoped({"c": ["read"]}).forbidden_writes("c", {"a": {"b": 1}, "c": 2}) == ["a.b", "c"]


def test_require_writes_names_fields_but_not_values() -> None:
    scope = scoped({"c": {"read": True, "write": True, "exclude_fields": ["ssn"]}})
    with pytest.raises(PermissionDenied) as caught:
        scope.require_writes("c", {"ssn": "123-45-6789"})
    assert "ssn" in str(caught.value)
    assert "123-45-6789" not in str(caught.value)


# --------------------------------------------------------------------------- covers


@settings(parent=FAST)
@given(scopes(admin_rules=True))
def test_covers_is_reflexive_for_admin_level_scopes(scope: Scope) -> None:
    assert scope.covers(scope)


@given(st.sampled_from([p for p in PATTERN_POOL if ":" not in p]), raw_rules)
def test_admin_on_star_covers_any_narrower_pattern(pattern: str, rule: Any) -> None:
    assert scoped({"*": ["admin"]}).covers(scoped({pattern: rule}))


def test_admin_on_star_does_not_cover_other_services() -> None:
    assert not scoped({"*": ["admin"]}).covers(scoped({"blob:*": ["read"]}))


@pytest.mark.parametrize("mine", [["read", "write"], ["read"], ["write"]])
def test_never_covers_without_admin_level(mine: list[str]) -> None:
    assert not scoped({"users": mine}).covers(scoped({"users": ["read"]}))


def test_never_covers_fewer_excluded_fields() -> None:
    mine = scoped({"users": {"admin": True, "exclude_fields": ["ssn"]}})
    assert not mine.covers(scoped({"users": ["read"]}))
    assert not mine.covers(scoped({"users": {"read": True, "exclude_fields": ["email"]}}))
    assert mine.covers(scoped({"users": {"read": True, "exclude_fields": ["ssn", "email"]}}))


def test_selection_that_leaves_out_an_excluded_field_is_covered() -> None:
    mine = scoped({"users": {"admin": True, "exclude_fields": ["ssn"]}})
    assert mine.covers(scoped({"users": {"read": True, "select_fields": ["name"]}}))


def test_selecting_the_parent_of_an_excluded_field_is_not_covered() -> None:
    mine = scoped({"users": {"admin": True, "exclude_fields": ["address.street"]}})
    assert not mine.covers(scoped({"users": {"read": True, "select_fields": ["address"]}}))


def test_never_covers_a_wider_selection() -> None:
    mine = scoped({"users": {"admin": True, "select_fields": ["address.city"]}})
    assert not mine.covers(scoped({"users": {"read": True, "select_fields": ["address"]}}))
    assert not mine.covers(scoped({"users": ["read"]}))


def test_never_covers_wider_writable_fields() -> None:
    mine = scoped({"users": {"admin": True, "writable_fields": ["name"]}})
    assert not mine.covers(scoped({"users": ["write"]}))
    assert mine.covers(scoped({"users": {"write": True, "writable_fields": ["name"]}}))


def test_narrower_deny_rule_is_not_bypassed() -> None:
    mine = scoped({"*": ["admin"], "secret": []})
    assert not mine.covers(scoped({"secret": ["read"]}))
    assert not mine.covers(scoped({"*": ["read"]}))


def test_rules_granting_nothing_need_no_cover() -> None:
    assert scoped({"users": ["admin"]}).covers(scoped({"users": ["read"], "orders": []}))


def test_admin_flags_in_covers() -> None:
    narrow = scoped({"*": ["admin"]})
    assert ADMIN.covers(narrow)
    assert not narrow.covers(ADMIN)
    assert ADMIN.covers(ADMIN)
    assert not scoped({"*": ["admin"]}, read_only=True).covers(scoped({}))


@st.composite
def covered_pairs(draw: st.DrawFn) -> tuple[Scope, Scope, str]:
    """(mine, theirs, name) with the name matching one of theirs' patterns when possible."""
    mine = draw(scopes(admin_rules=True))
    granting = st.one_of(
        level_lists.filter(bool),
        rule_objects().filter(lambda r: any(r.get(k) for k in ("read", "write", "admin"))),
    )
    small = st.dictionaries(st.sampled_from(PATTERN_POOL), granting, min_size=1, max_size=2)
    theirs = Scope.from_raw(draw(small), is_admin=False, read_only=draw(st.booleans()))
    use_pattern = draw(st.booleans())
    if use_pattern:
        pattern = draw(st.sampled_from(sorted(theirs.rules)))
        star_fills = st.text(alphabet="abt_-1", max_size=4)
        name = fill(pattern, [draw(star_fills) for _ in range(pattern.count("*"))])
    else:
        name = draw(st.one_of(st.sampled_from(NAME_POOL), resource_names))
    return mine, theirs, name


@settings(parent=FAST, max_examples=200)
@given(covered_pairs(), st.sampled_from(list(Level)), field_paths)
def test_covers_is_sound(pair: tuple[Scope, Scope, str], level: Level, path: str) -> None:
    mine, theirs, name = pair
    if not mine.covers(theirs):
        return
    assert not theirs.allows(name, level) or mine.allows(name, level)
    assert not theirs.readable(name, path) or mine.readable(name, path)
    assert not theirs.writable(name, path) or mine.writable(name, path)


@settings(parent=FAST)
@given(covered_pairs(), records_with_id)
def test_covers_never_lets_a_minted_key_see_more_of_a_record(
    pair: tuple[Scope, Scope, str], record: dict[str, Any]
) -> None:
    mine, theirs, name = pair
    if not (mine.covers(theirs) and theirs.allows(name, Level.READ)):
        return
    assert paths_of(theirs.project(name, record)) <= paths_of(mine.project(name, record))


def test_soundness_generator_produces_covering_pairs_that_grant_something() -> None:
    """Guards test_covers_is_sound against passing vacuously."""
    hits: list[bool] = []

    @settings(max_examples=100, deadline=None, database=None)
    @given(covered_pairs(), st.sampled_from(list(Level)))
    def probe(pair: tuple[Scope, Scope, str], level: Level) -> None:
        mine, theirs, name = pair
        hits.append(mine.covers(theirs) and theirs.allows(name, level))

    probe()
    assert sum(hits) >= 3


# --------------------------------------------------------------------------- parsing / round trip


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (["users"], "must be an object"),
        ({"files:x": ["read"]}, "unknown prefix 'files:'"),
        ({"blob:": ["read"]}, "must be 1-128 characters, got 0"),
        ({"x" * 129: ["read"]}, "got 129"),
        ({"us ers": ["read"]}, "may only contain"),
        ({"users": ["reed"]}, "unknown level 'reed'"),
        ({"users": [1]}, "unknown level int"),
        ({"users": "read"}, "expected a list of levels or an object"),
        ({"users": {"raed": True}}, "unknown key 'raed'"),
        ({"users": {"read": 1}}, "read must be true or false"),
        ({"users": {"select_fields": "name"}}, "select_fields must be a list"),
        ({"users": {"select_fields": ["a..b"]}}, "'a..b' is not a dotted field path"),
        ({"users": {"exclude_fields": ["a b"]}}, "'a b' is not a dotted field path"),
        ({"users": {"exclude_fields": ["id"]}}, "cannot be excluded"),
        ({"users": {"writable_fields": ["_rev"]}}, "never writable"),
        ({"users": {"select_fields": ["a"] * (MAX_FIELDS + 1)}}, "at most 256"),
        ({f"c{i}": [] for i in range(MAX_RULES + 1)}, "at most 256"),
        ({1: ["read"]}, "resource name must be a string"),
    ],
)
def test_invalid_documents_are_rejected_with_a_precise_message(raw: Any, message: str) -> None:
    with pytest.raises(PermissionSpecError, match=message.replace(".", r"\.")):
        parse_permissions(raw)


def test_wildcards_are_only_for_patterns() -> None:
    assert validate_resource_name("team_*", allow_wildcards=True) == "team_*"
    with pytest.raises(PermissionSpecError):
        validate_resource_name("team_*")


def test_flags_must_be_booleans() -> None:
    with pytest.raises(PermissionSpecError, match="is_admin must be true or false"):
        Scope.from_raw({}, is_admin=1, read_only=False)  # type: ignore[arg-type]


def test_none_means_no_rules() -> None:
    assert parse_permissions(None) == {}


@given(raw_documents, st.booleans())
def test_to_raw_round_trips_and_is_canonical_json(raw: Any, read_only: bool) -> None:
    scope = scoped(raw, read_only=read_only)
    dumped = json.loads(json.dumps(scope.to_raw()))
    again = Scope.from_raw(dumped, is_admin=False, read_only=read_only)
    assert again == scope
    assert again.to_raw() == dumped


def test_to_raw_uses_object_form_and_omits_defaults() -> None:
    raw = {"users": ["write", "read"], "blob:*": {"read": True, "exclude_fields": ["b", "a"]}}
    assert scoped(raw).to_raw() == {
        "blob:*": {"read": True, "exclude_fields": ["a", "b"]},
        "users": {"read": True, "write": True},
    }
