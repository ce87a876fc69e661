"""Atomic field actions, upsert, count, exists and distinct (issue 15 item 3). Framework-free.

An action (``increment``, ``push``, ...) is a pure function of the field's current value;
:meth:`DataStore.modify` runs it inside the record's write transaction, so concurrent actions
on one record serialise and none is lost (64 concurrent increments give +64), and the result
goes through the same field-rule checks as an update (``writable_fields`` included).

Decisions worth knowing:

- A missing field counts as ``0`` for arithmetic, ``[]`` for array actions and ``""`` for
  ``append``; any other type mismatch is 400 and changes nothing. Error messages name the
  field and the action, never the field's current value (the field may be hidden from the
  caller); results stay finite doubles or 64-bit integers.
- ``pop``/``shift`` on an empty array leave it empty; ``remove`` drops every element equal
  to the value; ``clear`` resets to the type's empty value (0, "", [], {}, false).
- A sequence applies its actions in order to one working copy and writes once; it may not
  touch a path and its parent in the same request (the result would be ambiguous).
- An action reads the field it changes, so its field must be readable *and* writable by
  the caller, checked before anything is computed (403): otherwise a range or type error
  computed on a hidden value (``multiply`` by 2**k) would reveal it bit by bit.
- ``count`` and ``distinct`` see records as the caller's field rules project them and refuse
  (403) a filter or a distinct field the caller may not read, so neither reveals hidden data.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from contextlib import closing
from typing import Any, Final

from mock_server.datastore import Caller, DataStore
from mock_server.errors import ApiError, bad_request, forbidden
from mock_server.query import QueryError, validate_field_path

__all__ = ["ACTIONS", "MAX_SEQUENCE", "RecordActions", "apply_action"]

MAX_SEQUENCE: Final = 100
MAX_DISTINCT: Final = 10_000
_MISSING: Final = object()

ActionFn = Callable[[str, str, Any, Any], Any]


def _invalid(message: str) -> ApiError:
    return bad_request(message, "validation_error")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(action: str, field: str, current: Any, value: Any) -> tuple[Any, Any]:
    if current is _MISSING:
        current = 0
    if not _is_number(current):
        raise _invalid(f"{action} on {field!r}: the field does not hold a number")
    if not _is_number(value):
        raise _invalid(f"{action} on {field!r}: value must be a number")
    return current, value


def _finite(action: str, field: str, result: Any) -> Any:
    """Results stay what ekoDB stores: finite doubles and 64-bit integers."""
    if isinstance(result, float) and not math.isfinite(result):
        raise _invalid(f"{action} on {field!r}: the result is not a finite number")
    if isinstance(result, int) and not -(2**63) <= result < 2**63:
        raise _invalid(f"{action} on {field!r}: the result is outside the 64-bit range")
    return result


def _arith(op: Callable[[Any, Any], Any], *, default: Any = None, nonzero: bool = False
           ) -> ActionFn:
    def run(action: str, field: str, current: Any, value: Any) -> Any:
        if value is None and default is not None:
            value = default
        a, b = _numbers(action, field, current, value)
        if nonzero and b == 0:
            raise _invalid(f"{action} on {field!r}: value may not be 0")
        try:
            return _finite(action, field, op(a, b))
        except OverflowError:
            raise _invalid(f"{action} on {field!r}: the result is too large") from None
    return run


def _divide(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and a % b == 0:
        return a // b
    return a / b


def _array(action: str, field: str, current: Any) -> list[Any]:
    if current is _MISSING or current is None:
        return []
    if not isinstance(current, list):
        raise _invalid(f"{action} on {field!r}: the field does not hold an array")
    return list(current)


def _push(action: str, field: str, current: Any, value: Any) -> Any:
    return [*_array(action, field, current), value]


def _unshift(action: str, field: str, current: Any, value: Any) -> Any:
    return [value, *_array(action, field, current)]


def _pop(action: str, field: str, current: Any, value: Any) -> Any:
    return _array(action, field, current)[:-1]


def _shift(action: str, field: str, current: Any, value: Any) -> Any:
    return _array(action, field, current)[1:]


def _remove(action: str, field: str, current: Any, value: Any) -> Any:
    return [item for item in _array(action, field, current) if item != value]


def _append(action: str, field: str, current: Any, value: Any) -> Any:
    if current is _MISSING or current is None:
        current = ""
    if not isinstance(current, str):
        raise _invalid(f"{action} on {field!r}: the field does not hold a string")
    if not isinstance(value, str):
        raise _invalid(f"{action} on {field!r}: value must be a string")
    return current + value


def _clear(action: str, field: str, current: Any, value: Any) -> Any:
    if isinstance(current, bool):
        return False
    if _is_number(current):
        return 0
    for kind in (str, list, dict):
        if isinstance(current, kind):
            return kind()
    return None


ACTIONS: Final[dict[str, ActionFn]] = {
    "increment": _arith(lambda a, b: a + b, default=1),
    "decrement": _arith(lambda a, b: a - b, default=1),
    "multiply": _arith(lambda a, b: a * b),
    "divide": _arith(_divide, nonzero=True),
    "modulo": _arith(lambda a, b: a % b, nonzero=True),
    "push": _push,
    "pop": _pop,
    "shift": _shift,
    "unshift": _unshift,
    "remove": _remove,
    "append": _append,
    "clear": _clear,
}


def _lookup(record: dict[str, Any], parts: list[str], field: str) -> Any:
    node: Any = record
    for part in parts:
        if not isinstance(node, dict):
            raise _invalid(f"{field!r}: a parent of this field is not an object")
        node = node.get(part, _MISSING)
        if node is _MISSING:
            return _MISSING
    return node


def _store(record: dict[str, Any], parts: list[str], value: Any, field: str) -> None:
    node = record
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise _invalid(f"{field!r}: a parent of this field is not an object")
        node = child
    node[parts[-1]] = value


def _field(field: object) -> list[str]:
    try:
        path = validate_field_path(field, where="field")
    except QueryError as exc:
        raise _invalid(str(exc)) from None
    top = path.split(".", 1)[0]
    if top == "id" or top.startswith("_"):
        raise bad_request(f"field {path!r} belongs to the server", "system_field")
    return path.split(".")


def _check_action(action: object) -> str:
    if not isinstance(action, str) or action not in ACTIONS:
        raise _invalid(f"unknown action {str(action)[:32]!r}; expected one of "
                       f"{', '.join(ACTIONS)}")
    return action


def apply_action(record: dict[str, Any], action: object, field: object, value: Any) -> str:
    """Apply one action to ``record`` in place; returns the dotted path it changed."""
    name = _check_action(action)
    parts = _field(field)
    path = ".".join(parts)
    new = ACTIONS[name](name, path, _lookup(record, parts, path), copy.deepcopy(value))
    _store(record, parts, new, path)
    return path


def _changes(record: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """The touched paths' final values as a nested change body (deep-merged by the store)."""
    for a in paths:
        for b in paths:
            if a != b and b.startswith(a + "."):
                raise _invalid(f"one request may not act on {a!r} and on {b!r} inside it")
    out: dict[str, Any] = {}
    for path in dict.fromkeys(paths):
        parts = path.split(".")
        _store(out, parts, copy.deepcopy(_lookup(record, parts, path)), path)
    return out


def _action_body(body: object) -> tuple[object, Any]:
    if not isinstance(body, dict):
        raise _invalid("the body must be a JSON object {\"field\", \"value\"}")
    unknown = sorted(str(k) for k in body if k not in ("field", "value"))
    if unknown:
        raise _invalid(f"unknown key {unknown[0][:64]!r}; allowed keys are field, value")
    if "field" not in body:
        raise _invalid("missing key 'field'")
    return body["field"], body.get("value")


def _sequence(body: object) -> list[tuple[object, object, Any]]:
    """``[[action, field, value], ...]`` or ``[{"action", "field", "value"}, ...]``."""
    if not isinstance(body, list) or not body:
        raise _invalid("the body must be a non-empty array of [action, field, value]")
    if len(body) > MAX_SEQUENCE:
        raise ApiError(413, "batch_too_large",
                       f"at most {MAX_SEQUENCE} actions per request, got {len(body)}")
    out: list[tuple[object, object, Any]] = []
    for i, item in enumerate(body):
        if isinstance(item, list) and len(item) in (2, 3):
            out.append((item[0], item[1], item[2] if len(item) == 3 else None))
        elif isinstance(item, dict) and {"action", "field"} <= set(item) <= {
                "action", "field", "value"}:
            out.append((item["action"], item["field"], item.get("value")))
        else:
            raise _invalid(f"[{i}]: expected [action, field, value]")
    return out


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class RecordActions:
    """The operations above, over one :class:`DataStore` (all its rules apply)."""

    def __init__(self, datastore: DataStore) -> None:
        self._ds = datastore

    def action(self, caller: Caller, collection: object, record_id: object, action: object,
               body: object) -> dict[str, Any]:
        field, value = _action_body(body)
        return self.sequence(caller, collection, record_id, [[action, field, value]])

    def sequence(self, caller: Caller, collection: object, record_id: object,
                 body: object) -> dict[str, Any]:
        steps = _sequence(body)
        paths = []
        for action, field, _ in steps:  # shape errors before any lookup (400 before 404)
            _check_action(action)
            paths.append(".".join(_field(field)))

        def compute(record: dict[str, Any]) -> dict[str, Any]:
            paths = [apply_action(record, a, f, v) for a, f, v in steps]
            return _changes(record, paths)

        return self._ds.modify(caller, collection, record_id, compute, paths=paths,
                               operation="record.action")

    def upsert(self, caller: Caller, collection: object, record_id: object,
               record: object) -> tuple[dict[str, Any], bool]:
        return self._ds.upsert(caller, collection, record_id, record)

    def exists(self, caller: Caller, collection: object, record_id: object) -> bool:
        return self._ds.exists(caller, collection, record_id)

    def count(self, caller: Caller, collection: object, body: object) -> int:
        return sum(1 for _ in self._ds.matching(caller, collection, _filter_of(body)))

    def distinct(self, caller: Caller, collection: object, field: object,
                 body: object) -> list[Any]:
        """Distinct values of ``field`` among matching records, first-seen order; records
        without the field are skipped; an array counts as one value."""
        if not isinstance(collection, str):
            raise _invalid("collection must be a string")
        parts = _field(field) if field != "id" else ["id"]
        path = ".".join(parts)
        records = self._ds.matching(caller, collection, _filter_of(body))
        if not caller.scope.readable(collection, path):
            raise forbidden(f"this API key may not read field {path!r} of {collection!r}")
        seen: dict[str, Any] = {}
        with closing(records):  # stopping early ends the scan's statement now
            for record in records:
                try:
                    value = _lookup(record, parts, path)
                except ApiError:  # a parent is not an object: this record has no such field
                    continue
                if value is not _MISSING:
                    seen.setdefault(_canonical(value), value)
                    if len(seen) > MAX_DISTINCT:
                        raise _invalid(f"more than {MAX_DISTINCT} distinct values; narrow "
                                       "the filter")
        return list(seen.values())


def _filter_of(body: object) -> object:
    """``{"filter"?}`` (null or absent: every record)."""
    if body is None:
        return None
    if not isinstance(body, dict):
        raise _invalid("the body must be a JSON object {\"filter\"?}")
    unknown = sorted(str(k) for k in body if k != "filter")
    if unknown:
        raise _invalid(f"unknown key {unknown[0][:64]!r}; the only key is filter")
    return body.get("filter")
