"""Tests for mock_server.query: parsing, matching, sorting and paging."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mock_server.query import (
    MAX_DEPTH,
    MAX_IN_ITEMS,
    MAX_NODES,
    MAX_SKIP,
    MAX_SORT_KEYS,
    OPERATORS,
    Filter,
    QueryError,
    SortKey,
    get_path,
    parse_filter,
    parse_page,
    parse_sort,
    run_query,
    sort_records,
    validate_field_path,
)

# --- helpers -------------------------------------------------------------------------------


def cond(field: object, op: object, value: Any) -> dict[str, Any]:
    return {"type": "Condition", "content": {"field": field, "operator": op, "value": value}}


def logical(op: str, *exprs: object) -> dict[str, Any]:
    return {"type": "Logical", "content": {"operator": op, "expressions": list(exprs)}}


def flt(raw: object) -> Filter:
    parsed = parse_filter(raw)
    assert parsed is not None
    return parsed


def matches(raw: dict[str, Any], record: dict[str, Any]) -> bool:
    return flt(raw).matches(record)


# --- strategies ----------------------------------------------------------------------------

FIELDS = ["a", "b", "n.x"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(-5, 5, allow_nan=False, allow_infinity=False),
    st.text(alphabet="abc", max_size=3),
)
record_values = st.one_of(scalars, st.lists(scalars, max_size=3))


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    for name in ("a", "b"):
        if draw(st.booleans()):
            rec[name] = draw(record_values)
    shape = draw(st.sampled_from(["missing", "scalar", "object"]))
    if shape == "scalar":
        rec["n"] = draw(scalars)
    elif shape == "object":
        rec["n"] = {"x": draw(record_values)} if draw(st.booleans()) else {}
    return rec


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    field = draw(st.sampled_from(FIELDS))
    op = draw(st.sampled_from(OPERATORS))
    value: Any
    if op in ("Eq", "Ne"):
        value = draw(scalars)
    elif op in ("In", "NotIn"):
        value = draw(st.lists(scalars, max_size=4))
    elif op == "Contains":
        value = draw(scalars.filter(lambda v: v is not None))
    elif op in ("Gt", "Gte", "Lt", "Lte"):
        value = draw(
            st.one_of(
                st.integers(-5, 5),
                st.floats(-5, 5, allow_nan=False),
                st.text(alphabet="abc", max_size=3),
            )
        )
    else:
        value = draw(st.text(alphabet="abc", max_size=2))
    return cond(field, op, value)


def _extend(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(lambda c: logical("Not", c), children),
        st.builds(
            lambda op, cs: logical(op, *cs),
            st.sampled_from(["And", "Or"]),
            st.lists(children, min_size=1, max_size=3),
        ),
    )


wire_filters = st.recursive(conditions(), _extend, max_leaves=8)


def wire_fields(raw: dict[str, Any]) -> set[str]:
    if raw["type"] == "Condition":
        return {raw["content"]["field"]}
    out: set[str] = set()
    for expr in raw["content"]["expressions"]:
        out |= wire_fields(expr)
    return out


# --- operators -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "value", "field_value", "expected"),
    [
        ("Eq", 30, 30, True),
        ("Eq", 30, 31, False),
        ("Eq", "x", "x", True),
        ("Eq", None, None, True),
        ("Eq", 1, 1.0, True),
        ("Eq", 1, True, False),
        ("Eq", True, 1, False),
        ("Eq", "1", 1, False),
        ("Eq", 1, [1], False),
        ("Ne", 30, 31, True),
        ("Ne", 30, 30, False),
        ("Ne", 1, True, True),
        ("Gt", 30, 31, True),
        ("Gt", 30, 30, False),
        ("Gt", 30, 30.5, True),
        ("Gt", "b", "c", True),
        ("Gt", "b", "a", False),
        ("Gt", 0, "5", False),
        ("Gt", "0", 5, False),
        ("Gt", 0, True, False),
        ("Gt", 0, None, False),
        ("Gte", 30, 30, True),
        ("Gte", 30, 29, False),
        ("Lt", 30, 29, True),
        ("Lt", 30, 30, False),
        ("Lte", 30, 30, True),
        ("Lte", 30, 31, False),
        ("Lt", 1.5, 1, True),
        ("In", [1, "a", None], "a", True),
        ("In", [1, "a", None], None, True),
        ("In", [1, "a", None], 2, False),
        ("In", [1], True, False),
        ("In", [1], 1.0, True),
        ("In", [], 1, False),
        ("NotIn", [1, 2], 3, True),
        ("NotIn", [1, 2], 2, False),
        ("NotIn", [], 1, True),
        ("Contains", "ell", "hello", True),
        ("Contains", "xyz", "hello", False),
        ("Contains", 2, [1, 2, 3], True),
        ("Contains", 4, [1, 2, 3], False),
        ("Contains", True, [1], False),
        ("Contains", "a", ["abc"], False),
        ("Contains", 1, "1", False),
        ("Contains", "a", {"a": 1}, False),
        ("StartsWith", "he", "hello", True),
        ("StartsWith", "lo", "hello", False),
        ("StartsWith", "1", 123, False),
        ("EndsWith", "lo", "hello", True),
        ("EndsWith", "he", "hello", False),
        ("EndsWith", "a", ["a"], False),
    ],
)
def test_operator_on_present_field(op: str, value: Any, field_value: Any, expected: bool) -> None:
    assert matches(cond("f", op, value), {"f": field_value}) is expected


SAMPLE_VALUES = {
    "Eq": 1, "Ne": 1, "Gt": 1, "Gte": 1, "Lt": 1, "Lte": 1, "In": [1, None],
    "NotIn": [1, None], "Contains": "a", "StartsWith": "a", "EndsWith": "a",
}  # fmt: skip


@pytest.mark.parametrize("op", OPERATORS)
def test_missing_field_matches_only_ne_and_notin(op: str) -> None:
    assert matches(cond("f", op, SAMPLE_VALUES[op]), {"g": 1}) is (op in ("Ne", "NotIn"))


def test_eq_null_does_not_match_missing_field() -> None:
    assert not matches(cond("f", "Eq", None), {})


def test_ne_null_matches_missing_field() -> None:
    assert matches(cond("f", "Ne", None), {})


@given(wire_filters, records())
def test_matching_never_raises_and_returns_bool(
    raw: dict[str, Any], record: dict[str, Any]
) -> None:
    assert isinstance(flt(raw).matches(record), bool)


@given(conditions(), records())
def test_ne_and_notin_are_exact_negations(raw: dict[str, Any], record: dict[str, Any]) -> None:
    content = raw["content"]
    negated = {"Eq": "Ne", "Ne": "Eq", "In": "NotIn", "NotIn": "In"}.get(content["operator"])
    if negated is None:
        return
    other = cond(content["field"], negated, content["value"])
    assert matches(raw, record) is not matches(other, record)


# --- nested paths --------------------------------------------------------------------------


def test_dotted_path_reads_nested_object() -> None:
    assert matches(cond("address.city", "Eq", "Oslo"), {"address": {"city": "Oslo"}})


def test_dotted_path_through_scalar_is_missing() -> None:
    assert not matches(cond("address.city", "Eq", "Oslo"), {"address": "Oslo"})


def test_dotted_path_does_not_index_lists() -> None:
    assert get_path({"a": [{"b": 1}]}, "a.0.b") == (False, None)


def test_dotted_path_reads_digit_keys_of_objects() -> None:
    assert get_path({"a": {"0": 5}}, "a.0") == (True, 5)


def test_get_path_distinguishes_null_from_missing() -> None:
    assert get_path({"a": None}, "a") == (True, None)
    assert get_path({}, "a") == (False, None)


# --- logical composition -------------------------------------------------------------------


@given(wire_filters, records())
def test_not_matches_exactly_when_inner_does_not(
    raw: dict[str, Any], record: dict[str, Any]
) -> None:
    assert matches(logical("Not", raw), record) is not matches(raw, record)


@given(st.lists(conditions(), min_size=1, max_size=5), records())
def test_and_agrees_with_all(parts: list[dict[str, Any]], record: dict[str, Any]) -> None:
    expected = all(matches(p, record) for p in parts)
    assert matches(logical("And", *parts), record) is expected


@given(st.lists(conditions(), min_size=1, max_size=5), records())
def test_or_agrees_with_any(parts: list[dict[str, Any]], record: dict[str, Any]) -> None:
    expected = any(matches(p, record) for p in parts)
    assert matches(logical("Or", *parts), record) is expected


def test_example_filter_from_brief() -> None:
    raw = logical("And", cond("age", "Gt", 30), cond("team", "Eq", "a"))
    assert matches(raw, {"age": 31, "team": "a"})
    assert not matches(raw, {"age": 31, "team": "b"})


# --- round trip, equality, fields ----------------------------------------------------------


@given(wire_filters)
def test_round_trip_through_wire(raw: dict[str, Any]) -> None:
    parsed = flt(raw)
    assert parse_filter(parsed.to_wire()) == parsed


@given(wire_filters)
def test_to_wire_reproduces_input(raw: dict[str, Any]) -> None:
    assert flt(raw).to_wire() == raw


@given(wire_filters)
def test_fields_lists_every_referenced_path(raw: dict[str, Any]) -> None:
    assert flt(raw).fields() == frozenset(wire_fields(raw))


def test_eq_true_and_eq_one_are_different_filters() -> None:
    assert flt(cond("a", "Eq", True)) != flt(cond("a", "Eq", 1))


def test_filters_are_hashable() -> None:
    raw = logical("Or", cond("a", "In", [1, 2]), cond("b", "Eq", "x"))
    assert hash(flt(raw)) == hash(flt(raw))


def test_none_filter_parses_to_none() -> None:
    assert parse_filter(None) is None


# --- malformed filters ---------------------------------------------------------------------


def _nested_nots(depth: int) -> dict[str, Any]:
    node = cond("a", "Eq", 1)
    for _ in range(depth - 1):
        node = logical("Not", node)
    return node


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("x", "filter: expected an object, got string"),
        ([], "filter: expected an object, got array"),
        ({"type": "Condition"}, "filter: missing key 'content'"),
        ({"content": {}}, "filter: missing key 'type'"),
        ({**cond("a", "Eq", 1), "extra": 1}, "filter: unexpected key 'extra'"),
        ({"type": "Cond", "content": {}}, "filter.type: unknown type 'Cond'"),
        ({"type": 5, "content": {}}, "filter.type: expected a string type, got number"),
        ({"type": "Condition", "content": []}, "filter.content: expected an object"),
        (
            {"type": "Condition", "content": {"field": "a", "operator": "Eq"}},
            "filter.content: missing key 'value'",
        ),
        (
            {"type": "Condition", "content": {"field": "a", "operator": "Eq", "value": 1, "x": 0}},
            "filter.content: unexpected key 'x'",
        ),
        (cond("a", "eq", 1), "filter.content.operator: unknown operator 'eq'; expected one of Eq"),
        (
            logical("And", cond("a", "Eq", 1), cond("b", "Gtx", 1)),
            "filter.content.expressions[1].content.operator: unknown operator 'Gtx'",
        ),
        (logical("Xor", cond("a", "Eq", 1)), "filter.content.operator: unknown operator 'Xor'"),
        (logical("And"), "filter.content.expressions: And needs at least one expression"),
        (logical("Or"), "filter.content.expressions: Or needs at least one expression"),
        (logical("Not"), "Not takes exactly one expression, got 0"),
        (logical("Not", cond("a", "Eq", 1), cond("b", "Eq", 1)), "exactly one expression, got 2"),
        (
            {"type": "Logical", "content": {"operator": "And", "expressions": {}}},
            "filter.content.expressions: expected an array of filters, got object",
        ),
        (logical("And", 5), "filter.content.expressions[0]: expected an object, got number"),
        (cond("a", "Gt", True), "filter.content.value: Gt needs a number or a string, got boolean"),
        (cond("a", "Lte", None), "Lte needs a number or a string, got null"),
        (cond("a", "Gte", [1]), "Gte needs a number or a string, got array"),
        (cond("a", "In", 1), "filter.content.value: In needs an array of scalars, got number"),
        (cond("a", "NotIn", "ab"), "NotIn needs an array of scalars, got string"),
        (cond("a", "In", [1, [2]]), "filter.content.value[1]: In needs a string, number"),
        (cond("a", "In", [{"x": 1}]), "filter.content.value[0]: In needs"),
        (cond("a", "Contains", None), "Contains needs a string, number or boolean, got null"),
        (cond("a", "Contains", [1]), "Contains needs a string, number or boolean, got array"),
        (cond("a", "StartsWith", 1), "StartsWith needs a string, got number"),
        (cond("a", "EndsWith", None), "EndsWith needs a string, got null"),
        (cond("a", "Eq", {"x": 1}), "Eq needs a string, number, boolean or null, got object"),
        (cond("a", "Ne", [1]), "Ne needs a string, number, boolean or null, got array"),
        (cond("a", "Eq", math.nan), "filter.content.value: NaN and Infinity are not allowed"),
        (cond("a", "Gt", math.inf), "NaN and Infinity are not allowed"),
        (cond("a", "In", [1, -math.inf]), "filter.content.value[1]: NaN and Infinity"),
        (cond("a b", "Eq", 1), "filter.content.field: invalid field path 'a b'"),
        (cond(5, "Eq", 1), "filter.content.field: expected a string field path, got number"),
        (cond("a", 5, 1), "filter.content.operator: expected a string operator, got number"),
    ],
)
def test_malformed_filter_is_rejected_with_location(raw: object, fragment: str) -> None:
    with pytest.raises(QueryError) as info:
        parse_filter(raw)
    assert fragment in str(info.value)


def test_query_error_is_a_value_error() -> None:
    assert issubclass(QueryError, ValueError)


def test_max_depth_is_accepted() -> None:
    assert parse_filter(_nested_nots(MAX_DEPTH)) is not None


def test_one_level_too_deep_is_rejected() -> None:
    with pytest.raises(QueryError, match="nested too deeply"):
        parse_filter(_nested_nots(MAX_DEPTH + 1))


def test_ten_thousand_nested_nots_raise_query_error_not_recursion_error() -> None:
    with pytest.raises(QueryError, match="nested too deeply") as info:
        parse_filter(_nested_nots(10_000))
    assert len(str(info.value)) < 300


def test_self_referencing_filter_is_rejected() -> None:
    node: dict[str, Any] = logical("Not")
    node["content"]["expressions"].append(node)
    with pytest.raises(QueryError, match="nested too deeply"):
        parse_filter(node)


def test_max_nodes_is_accepted() -> None:
    raw = logical("And", *[cond("a", "Eq", i) for i in range(MAX_NODES - 1)])
    assert parse_filter(raw) is not None


def test_too_many_nodes_in_one_list_is_rejected() -> None:
    raw = logical("And", *[cond("a", "Eq", i) for i in range(MAX_NODES)])
    with pytest.raises(QueryError, match="too large"):
        parse_filter(raw)


def test_too_many_nodes_spread_over_lists_is_rejected() -> None:
    chunk = logical("Or", *[cond("a", "Eq", i) for i in range(400)])
    with pytest.raises(QueryError, match="too large"):
        parse_filter(logical("And", chunk, chunk, chunk))


def test_in_list_at_limit_is_accepted() -> None:
    assert parse_filter(cond("a", "In", list(range(MAX_IN_ITEMS)))) is not None


def test_in_list_over_limit_is_rejected() -> None:
    with pytest.raises(QueryError, match=f"at most {MAX_IN_ITEMS} values"):
        parse_filter(cond("a", "In", list(range(MAX_IN_ITEMS + 1))))


def test_error_message_does_not_echo_huge_input() -> None:
    with pytest.raises(QueryError) as info:
        parse_filter(cond("a", "G" * 100_000, 1))
    assert len(str(info.value)) < 300


# --- field paths ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["a", "A_b-9", "address.city", ".".join(["s"] * 16), "a" * 256, "0"]
)
def test_valid_field_path_is_returned(path: str) -> None:
    assert validate_field_path(path) == path


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("", "invalid field path"),
        (".", "invalid field path"),
        ("a..b", "invalid field path"),
        ("a.", "invalid field path"),
        (".a", "invalid field path"),
        ("a b", "invalid field path"),
        ("caf\u00e9", "invalid field path"),
        ("a$b", "invalid field path"),
        ("a\n", "invalid field path"),
        ("a" * 257, "longer than 256"),
        (".".join(["s"] * 17), "more than 16 segments"),
        (5, "expected a string field path, got number"),
        (None, "got null"),
    ],
)
def test_invalid_field_path_is_rejected(path: object, fragment: str) -> None:
    with pytest.raises(QueryError, match=fragment):
        validate_field_path(path)


def test_field_path_error_names_location() -> None:
    with pytest.raises(QueryError, match=r"^sort\[0\]\.field: "):
        validate_field_path("", where="sort[0].field")


# --- sorting -------------------------------------------------------------------------------

any_json = st.recursive(
    st.one_of(scalars, st.floats(), st.integers()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=2), st.dictionaries(st.sampled_from("xy"), inner, max_size=2)
    ),
    max_leaves=4,
)


@st.composite
def sort_rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    rows = []
    for i in range(draw(st.integers(0, 12))):
        row: dict[str, Any] = {"_i": i}
        for name in ("a", "b"):
            if draw(st.booleans()):
                row[name] = draw(any_json)
        rows.append(row)
    return rows


sort_keys = st.lists(
    st.builds(SortKey, st.sampled_from(["a", "b"]), st.booleans()),
    max_size=2,
    unique_by=lambda k: k.field,
)


def expected_rank(row: dict[str, Any], field: str) -> tuple[int, Any]:
    """Independent statement of the documented order, for comparing neighbours."""
    value = row.get(field)
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, value)
    if isinstance(value, float) and math.isnan(value):
        return (3, 0)
    if isinstance(value, (int, float)):
        return (2, value)
    if isinstance(value, str):
        return (4, value)
    return (5, type(value).__name__)


def in_order(x: dict[str, Any], y: dict[str, Any], keys: list[SortKey]) -> bool:
    """x may precede y: by keys lexicographically, ties by input position (stability)."""
    for key in keys:
        rx, ry = expected_rank(x, key.field), expected_rank(y, key.field)
        if rx != ry:
            return (rx < ry) if key.ascending else (rx > ry)
    return bool(x["_i"] < y["_i"])


@given(sort_rows(), sort_keys)
def test_sort_output_is_a_permutation(rows: list[dict[str, Any]], keys: list[SortKey]) -> None:
    out = sort_records(rows, keys)
    assert sorted(r["_i"] for r in out) == [r["_i"] for r in rows]


@given(sort_rows(), sort_keys)
def test_sort_respects_keys_and_is_stable(rows: list[dict[str, Any]], keys: list[SortKey]) -> None:
    out = sort_records(rows, keys)
    assert all(in_order(x, y, keys) for x, y in itertools.pairwise(out))


def test_sort_ranks_types_ascending() -> None:
    rows: list[dict[str, Any]] = [
        {"v": "s"}, {"v": 2}, {"v": True}, {"v": None}, {}, {"v": [1]}, {"v": 1.5},
    ]  # fmt: skip
    out = sort_records(rows, [SortKey("v", True)])
    assert [r.get("v", "missing") for r in out] == [None, "missing", True, 1.5, 2, "s", [1]]


@pytest.mark.parametrize("values", [[math.nan, 1, 0], [1, math.nan, 0], [2, 0, math.nan, 1]])
def test_sort_puts_nan_after_all_numbers(values: list[float]) -> None:
    out = [r["v"] for r in sort_records([{"v": v} for v in values], [SortKey("v")])]
    assert out[:-1] == sorted(v for v in values if not math.isnan(v))
    assert math.isnan(out[-1])


def test_sort_descending_puts_missing_last() -> None:
    out = sort_records([{}, {"v": 1}, {"v": 3}], [SortKey("v", False)])
    assert out == [{"v": 3}, {"v": 1}, {}]


def test_sort_second_key_breaks_ties() -> None:
    rows = [{"a": 1, "b": 1}, {"a": 0, "b": 5}, {"a": 1, "b": 2}]
    out = sort_records(rows, [SortKey("a", True), SortKey("b", False)])
    assert out == [{"a": 0, "b": 5}, {"a": 1, "b": 2}, {"a": 1, "b": 1}]


def test_sort_by_nested_path() -> None:
    rows = [{"p": {"q": 2}}, {"p": {"q": 1}}]
    assert sort_records(rows, [SortKey("p.q")]) == [{"p": {"q": 1}}, {"p": {"q": 2}}]


def test_sort_does_not_mutate_input() -> None:
    rows = [{"v": 2}, {"v": 1}]
    sort_records(rows, [SortKey("v")])
    assert rows == [{"v": 2}, {"v": 1}]


def test_parse_sort_accepts_wire_form() -> None:
    raw = [{"field": "age", "ascending": False}, {"field": "name"}]
    assert parse_sort(raw) == (SortKey("age", False), SortKey("name", True))


def test_parse_sort_none_is_empty() -> None:
    assert parse_sort(None) == ()


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"field": "a"}, "sort: expected an array"),
        ("a", "sort: expected an array"),
        ([{"field": "a"}] * (MAX_SORT_KEYS + 1), f"at most {MAX_SORT_KEYS} sort keys"),
        (["a"], r"sort\[0\]: expected an object, got string"),
        ([{"ascending": True}], r"sort\[0\]: missing key 'field'"),
        ([{"field": "a", "asc": True}], r"sort\[0\]: unexpected key 'asc'"),
        ([{"field": "a", "ascending": "yes"}], r"sort\[0\]\.ascending: expected a boolean"),
        ([{"field": "a", "ascending": 1}], r"sort\[0\]\.ascending: expected a boolean"),
        ([{"field": "a"}, {"field": "a"}], r"sort\[1\]\.field: duplicate sort field 'a'"),
        ([{"field": "a..b"}], r"sort\[0\]\.field: invalid field path"),
    ],
)
def test_malformed_sort_is_rejected(raw: object, fragment: str) -> None:
    with pytest.raises(QueryError, match=fragment):
        parse_sort(raw)


# --- paging --------------------------------------------------------------------------------


def test_page_defaults() -> None:
    assert parse_page(None, None) == (100, 0)


def test_page_custom_default_limit() -> None:
    assert parse_page(None, None, default_limit=10, max_limit=50) == (10, 0)


def test_page_bounds_are_inclusive() -> None:
    assert parse_page(1, 0) == (1, 0)
    assert parse_page(1000, MAX_SKIP) == (1000, MAX_SKIP)


@pytest.mark.parametrize(
    ("limit", "skip", "fragment"),
    [
        (0, None, "limit: must be between 1 and 1000, got 0"),
        (-1, None, "limit: must be between 1 and 1000, got -1"),
        (1001, None, "limit: must be between 1 and 1000, got 1001"),
        (10**100, None, "limit: must be between 1 and 1000, got a very large number"),
        (True, None, "limit: expected an integer, got boolean"),
        (1.0, None, "limit: expected an integer, got number"),
        ("10", None, "limit: expected an integer, got string"),
        (None, -1, "skip: must be between 0 and 1000000, got -1"),
        (None, MAX_SKIP + 1, "skip: must be between 0"),
        (None, False, "skip: expected an integer, got boolean"),
        (None, [1], "skip: expected an integer, got array"),
    ],
)
def test_bad_page_is_rejected(limit: object, skip: object, fragment: str) -> None:
    with pytest.raises(QueryError) as info:
        parse_page(limit, skip)
    assert fragment in str(info.value)


def test_page_default_never_exceeds_max_limit() -> None:
    assert parse_page(None, None, max_limit=50) == (50, 0)


def test_page_respects_custom_max_limit() -> None:
    with pytest.raises(QueryError, match="between 1 and 50"):
        parse_page(51, None, max_limit=50)


# --- run_query -----------------------------------------------------------------------------


def test_run_query_filters_then_sorts_then_pages() -> None:
    rows = [{"v": i, "even": i % 2 == 0} for i in range(10)]
    out = run_query(rows, flt(cond("even", "Eq", True)), [SortKey("v", False)], 2, 1)
    assert [r["v"] for r in out] == [6, 4]


@settings(max_examples=50)
@given(st.lists(records(), max_size=20), wire_filters)
def test_run_query_without_paging_returns_exactly_matches(
    rows: list[dict[str, Any]], raw: dict[str, Any]
) -> None:
    parsed = flt(raw)
    out = run_query(rows, parsed, [], 1000, 0)
    assert out == [r for r in rows if parsed.matches(r)]
