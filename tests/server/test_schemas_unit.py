"""mock_server.schemas on its own (no HTTP): what each constraint accepts and refuses."""

from __future__ import annotations

from typing import Any

import pytest

from mock_server.errors import ApiError
from mock_server.schemas import check_existing, check_unique, parse_constraints, parse_schema


def _problem(spec: dict[str, Any], value: Any) -> str | None:
    schema = parse_schema({"fields": {"f": spec}})
    try:
        schema.conform({"id": "r", "f": value}, new=False)
    except ApiError as exc:
        assert exc.status == 400 and "'f'" in exc.message
        return exc.code
    return None


@pytest.mark.parametrize(("spec", "good", "bad"), [
    ({"field_type": "datetime", "min": "2026-01-01T00:00:00Z"}, "2026-05-01T10:00:00Z",
     "2025-12-31T23:59:59Z"),
    ({"field_type": "datetime"}, "2026-05-01", "yesterday"),
    ({"field_type": "set"}, [1, 2, "1"], [1, 1]),
    ({"field_type": "decimal"}, "12.50", "12,50"),
    ({"field_type": "uuid"}, "123e4567-e89b-12d3-a456-426614174000", "123"),
    ({"field_type": "vector"}, [0.5, 1], [0.5, "1"]),
    ({"field_type": "number", "enums": [1, 2]}, 2, 3),
    ({"field_type": "boolean", "enums": [True]}, True, 1),  # 1 is not true
    ({"field_type": "string", "regex": "[a-z]+", "min": 2}, "ab", "abc1"),
    ({"field_type": "string", "min": 2}, "ab", "a"),
])
def test_constraints(spec: dict[str, Any], good: Any, bad: Any) -> None:
    assert _problem(spec, good) is None
    assert _problem(spec, bad) == "schema_violation"
    assert _problem(spec, None) is None  # absent passes all but required


def test_defaults_only_on_insert_and_required() -> None:
    schema = parse_schema({"fields": {"n": {"field_type": "integer", "default": 7},
                                      "r": {"field_type": "string", "required": True}}})
    assert schema.conform({"r": "x"}, new=True) == {"r": "x", "n": 7}
    assert schema.conform({"r": "x"}, new=False) == {"r": "x"}
    with pytest.raises(ApiError, match="'r' is required"):
        schema.conform({"r": None}, new=True)


def test_unique_and_updates_against_stored_records() -> None:
    schema = parse_schema({"fields": {"e": {"field_type": "string", "unique": True}}})
    check_unique(schema, {"id": "a", "e": "x"}, [{"id": "a", "e": "x"}, {"id": "b"}])
    with pytest.raises(ApiError) as err:
        check_unique(schema, {"id": "a", "e": "x"}, [{"id": "b", "e": "x"}])
    assert err.value.code == "unique_violation"
    loose = parse_schema({"fields": {"e": {"field_type": "string"}}})
    tight = parse_constraints({"constraints": {"e": {"unique": True}}}, loose)
    assert tight.version == 2 and tight.fields["e"].unique
    with pytest.raises(ApiError) as conflict:
        check_existing(tight, [{"e": "x"}, {"e": "x"}])
    assert conflict.value.status == 409 and "'e'" in conflict.value.message
    check_existing(tight, [{"e": "x"}, {"e": "y"}, {}])


# ---------------------------------------------------------------- datetimes are instants

DUE_BY_JUNE = {"fields": {"due": {"field_type": "datetime", "max": "2024-06-01T00:00:00Z"}}}


def test_datetime_max_compares_instants_not_strings() -> None:
    schema = parse_schema(DUE_BY_JUNE)
    # 2024-06-01T04:00Z: four hours after the maximum, written with a -05:00 offset
    with pytest.raises(ApiError, match="'due' must be no later than 2024-06-01T00:00:00Z"):
        schema.conform({"due": "2024-05-31T23:00:00-05:00"}, new=True)
    # 2024-05-31T22:00Z: two hours before it, although its text sorts after it
    schema.conform({"due": "2024-06-01T03:00:00+05:00"}, new=True)


def test_datetime_min_reads_a_naive_time_as_utc() -> None:
    schema = parse_schema({"fields": {"at": {"field_type": "datetime",
                                             "min": "2024-01-01T12:00:00+02:00"}}})
    schema.conform({"at": "2024-01-01T10:00:00"}, new=True)  # 10:00Z == the minimum
    with pytest.raises(ApiError, match="no earlier than"):
        schema.conform({"at": "2024-01-01T09:59:59Z"}, new=True)


# ---------------------------------------------------------------- regex in linear time


def test_a_backtracking_regex_is_matched_in_linear_time() -> None:
    """``(a+)+b`` over 25 'a's takes Python's ``re`` seconds (it holds the write lock and
    the GIL meanwhile); RE2 answers at once."""
    import time

    schema = parse_schema({"fields": {"s": {"field_type": "string", "regex": "(a+)+b"}}})
    started = time.perf_counter()
    with pytest.raises(ApiError, match="does not match"):
        schema.conform({"s": "a" * 25}, new=True)
    assert time.perf_counter() - started < 0.5
    schema.conform({"s": "a" * 25 + "b"}, new=True)
    started = time.perf_counter()
    with pytest.raises(ApiError, match=r"schema_conflict|break"):
        check_existing(schema, [{"id": "r", "s": "a" * 25}])  # update_schema's check
    assert time.perf_counter() - started < 0.5


def test_a_regex_beyond_re2_is_refused_when_the_schema_is_set() -> None:
    for pattern in (r"(a)\1", "(?=a)a", "(?<!x)y"):
        with pytest.raises(ApiError, match=r"'s'.*RE2") as info:
            parse_schema({"fields": {"s": {"field_type": "string", "regex": pattern}}})
        assert info.value.status == 400


def test_a_value_too_long_for_the_pattern_is_refused() -> None:
    from mock_server.schemas import MAX_REGEX_INPUT

    schema = parse_schema({"fields": {"s": {"field_type": "string", "regex": "a*"}}})
    schema.conform({"s": "a" * MAX_REGEX_INPUT}, new=True)
    with pytest.raises(ApiError, match="too long"):
        schema.conform({"s": "a" * (MAX_REGEX_INPUT + 1)}, new=True)
