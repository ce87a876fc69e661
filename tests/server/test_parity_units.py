"""Framework-free units behind issue 15: action semantics, TTL parsing, client options."""

from __future__ import annotations

from typing import Any

import pytest

from mock_server.actions import apply_action
from mock_server.compat import FIND_OPTIONS, ITEM_OPTIONS, parse_flag, strip_options
from mock_server.errors import ApiError
from mock_server.kv import check_key, parse_ttl


@pytest.mark.parametrize(("record", "action", "field", "value", "after"), [
    ({"n": 1}, "increment", "n", None, {"n": 2}),
    ({}, "increment", "n", 3, {"n": 3}),
    ({"n": 1.5}, "decrement", "n", 1, {"n": 0.5}),
    ({"n": 3}, "multiply", "n", 2.5, {"n": 7.5}),
    ({"n": 9}, "divide", "n", 3, {"n": 3}),
    ({"n": 9}, "divide", "n", 2, {"n": 4.5}),
    ({"n": 9}, "modulo", "n", 4, {"n": 1}),
    ({}, "push", "a.b", 1, {"a": {"b": [1]}}),
    ({"l": [1, 2, 3]}, "pop", "l", None, {"l": [1, 2]}),
    ({"l": []}, "pop", "l", None, {"l": []}),
    ({"l": [1, 2, 3]}, "shift", "l", None, {"l": [2, 3]}),
    ({"l": [2]}, "unshift", "l", [1], {"l": [[1], 2]}),
    ({"l": [1, {"x": 1}, 1]}, "remove", "l", 1, {"l": [{"x": 1}]}),
    ({"s": "ab"}, "append", "s", "c", {"s": "abc"}),
    ({"b": True, "o": {"k": 1}}, "clear", "b", None, {"b": False, "o": {"k": 1}}),
    ({"o": {"k": 1}}, "clear", "o", None, {"o": {}}),
])
def test_action_semantics(record: dict[str, Any], action: str, field: str, value: Any,
                          after: dict[str, Any]) -> None:
    assert apply_action(record, action, field, value) == field
    assert record == after


@pytest.mark.parametrize(("record", "action", "field", "value"), [
    ({"n": "1"}, "increment", "n", 1),
    ({"n": 1}, "increment", "n", "1"),
    ({"n": 1}, "increment", "n", True),
    ({"n": 1}, "divide", "n", 0),
    ({"n": 1}, "modulo", "n", 0.0),
    ({"n": 1.0e308}, "multiply", "n", 10),
    ({"n": 2**62}, "multiply", "n", 2),
    ({"s": 1}, "append", "s", "x"),
    ({"l": "x"}, "push", "l", 1),
    ({"a": 5}, "increment", "a.b", 1),
    ({}, "explode", "n", 1),
    ({}, "increment", "id", 1),
    ({}, "increment", "_meta", 1),
    ({}, "increment", "", 1),
])
def test_refused_actions_leave_the_record_alone(record: dict[str, Any], action: str,
                                                field: str, value: Any) -> None:
    before = dict(record)
    with pytest.raises(ApiError) as info:
        apply_action(record, action, field, value)
    assert info.value.status == 400
    assert record == before


@pytest.mark.parametrize(("raw", "seconds"), [
    (None, None), (30, 30.0), (0.5, 0.5), ("45", 45.0), ("30s", 30.0), ("5m", 300.0),
    ("2h", 7200.0), ("1d", 86400.0), ("250ms", 0.25), (" 3 s ", 3.0)])
def test_ttl_forms(raw: object, seconds: float | None) -> None:
    assert parse_ttl(raw) == seconds


@pytest.mark.parametrize("raw", [0, -1, "0s", "soon", "1w", True, [], float("inf"),
                                 float("nan"), 10**12, "9" * 40])
def test_bad_ttls(raw: object) -> None:
    with pytest.raises(ApiError):
        parse_ttl(raw)


@pytest.mark.parametrize("key", ["a", "user.1-x_y", "A" * 128])
def test_kv_keys(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize("key", ["", "a:b", "a*", "a b", "a/b", "A" * 129, 5, None])
def test_bad_kv_keys(key: object) -> None:
    with pytest.raises(ApiError):
        check_key(key)


def test_client_options_are_stripped_and_type_checked() -> None:
    body = {"filter": None, "bypass_cache": None, "bypass_ripple": True, "join": None,
            "transaction_id": "tx1", "limit": 5}
    assert strip_options(body, FIND_OPTIONS) == {"filter": None, "limit": 5}
    assert strip_options({"id": "x", "bypass_ripple": None}, ITEM_OPTIONS) == {"id": "x"}
    assert strip_options({"id": "x", "other": 1}, ITEM_OPTIONS) == {"id": "x", "other": 1}
    for bad in ({"bypass_cache": 1}, {"bypass_ripple": "true"}, {"transaction_id": ""},
                {"transaction_id": 7}, {"join": {}}, {"join": []}):
        with pytest.raises(ApiError):
            strip_options(bad, FIND_OPTIONS)
    assert [parse_flag("f", v) for v in (None, "true", "FALSE", "1", "0")] == [
        None, True, False, True, False]
    with pytest.raises(ApiError):
        parse_flag("f", "yes")
