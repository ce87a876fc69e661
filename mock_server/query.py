"""Pure query engine for the reference server's DataStore (SPEC §3, §4.3).

The server decrypts records and then filters, sorts and pages them in Python. This module
turns the ekoDB wire format into validated, immutable objects and evaluates them. It does no
I/O and imports no web framework, so routes, DataBus subscriptions and tests can share it.

Decisions route authors should know:

- Every parse error is a ``QueryError`` (a ``ValueError``) whose message names the location
  (``filter.content.expressions[1].content.operator: ...``) and is safe to return as a 400.
- ``Eq``/``Ne``/``In``/``NotIn`` take JSON scalars or null; ``Contains`` takes a non-null
  scalar. Objects and arrays are refused as values: it keeps filters small and hashable, and
  "equal to this whole sub-document" has no agreed meaning across clients.
- Types never mix: ``True`` is not ``1``, ``"1"`` is not ``1``; ints and floats compare
  numerically. A comparison across types is simply ``False``.
- A missing field fails every operator except ``Ne`` and ``NotIn``, which are exactly the
  negations of ``Eq`` and ``In``. A field present with value null is *found* (``Eq null``
  matches it, a missing field does not).
- Dotted paths walk nested objects only; arrays are never indexed.
- Limits (depth, nodes, list sizes, page sizes) are module constants below.
- Keyset pages: the order is the sort keys, then the record's insertion sequence (unique and
  never reused, so every record has exactly one place). A cursor is the last record's sort
  values and sequence, so the next page starts right after it however many records were
  inserted or deleted meanwhile; skip-based pages shift under deletes and lose records.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import operator as _op
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

__all__ = [
    "LOGICAL_OPERATORS",
    "MAX_DEPTH",
    "MAX_IN_ITEMS",
    "MAX_NODES",
    "MAX_PATH_LENGTH",
    "MAX_PATH_SEGMENTS",
    "MAX_SKIP",
    "MAX_SORT_KEYS",
    "OPERATORS",
    "Condition",
    "Filter",
    "Logical",
    "QueryError",
    "SortKey",
    "decode_cursor",
    "encode_cursor",
    "get_path",
    "keyset_page",
    "parse_filter",
    "parse_page",
    "parse_sort",
    "run_query",
    "sort_records",
    "validate_field_path",
]

OPERATORS: Final = (
    "Eq",
    "Ne",
    "Gt",
    "Gte",
    "Lt",
    "Lte",
    "In",
    "NotIn",
    "Contains",
    "StartsWith",
    "EndsWith",
)
LOGICAL_OPERATORS: Final = ("And", "Or", "Not")
MAX_DEPTH: Final = 32  # nested filter nodes on one path, root included
MAX_NODES: Final = 1000  # filter nodes in total (conditions and logicals)
MAX_IN_ITEMS: Final = 1000
MAX_SORT_KEYS: Final = 8
MAX_SKIP: Final = 1_000_000
MAX_PATH_LENGTH: Final = 256
MAX_PATH_SEGMENTS: Final = 16

_SEGMENT: Final = re.compile(r"[A-Za-z0-9_-]+")
_ORDERING: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "Gt": _op.gt,
    "Gte": _op.ge,
    "Lt": _op.lt,
    "Lte": _op.le,
}
_MAX_WHERE: Final = 160

R = TypeVar("R", bound=Mapping[str, Any])


class QueryError(ValueError):
    """The caller's filter, sort or page is invalid; the message is safe to show them."""


# --- small helpers -------------------------------------------------------------------------


def _fail(where: str, message: str) -> QueryError:
    """Build an error with a bounded location, so hostile nesting cannot bloat the reply."""
    if len(where) > _MAX_WHERE:
        where = where[:60] + "..." + where[-(_MAX_WHERE - 63) :]
    return QueryError(f"{where}: {message}")


def _json_type(value: object) -> str:
    """Name a value's type in JSON terms, which is what the caller wrote."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _show(value: object) -> str:
    """A short repr for messages; never echoes large input back or trips int->str limits."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return "a very large number"
    if isinstance(value, str):
        return repr(value[:40] + "...") if len(value) > 40 else repr(value)
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    return f"a value of type {_json_type(value)}"


def _scalar_key(value: object) -> tuple[str, Any] | None:
    """Tag a scalar with its JSON kind so True, 1 and "1" never compare equal; None if not one."""
    if value is None:
        return ("null", None)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    return None


def _walk(record: Mapping[str, Any], parts: tuple[str, ...]) -> tuple[bool, Any]:
    """Follow pre-split path segments through nested objects."""
    current: Any = record
    for part in parts:
        # exact dicts first: every decrypted record is one, and an ABC check costs more
        if ((type(current) is not dict and not isinstance(current, Mapping))
                or part not in current):
            return (False, None)
        current = current[part]
    return (True, current)


def get_path(record: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    """Return (found, value) for a dotted path; found distinguishes missing from null."""
    return _walk(record, tuple(path.split(".")))


def validate_field_path(path: object, *, where: str = "field") -> str:
    """Check a dotted field path; bounded so paths cannot be used to burn CPU or memory."""
    if not isinstance(path, str):
        raise _fail(where, f"expected a string field path, got {_json_type(path)}")
    if len(path) > MAX_PATH_LENGTH:
        raise _fail(where, f"field path is longer than {MAX_PATH_LENGTH} characters")
    segments = path.split(".")
    if len(segments) > MAX_PATH_SEGMENTS:
        raise _fail(where, f"field path has more than {MAX_PATH_SEGMENTS} segments")
    for segment in segments:
        if not _SEGMENT.fullmatch(segment):
            raise _fail(
                where,
                f"invalid field path {_show(path)}; use dot-separated names made of "
                "A-Z a-z 0-9 _ -",
            )
    return path


# --- filter model --------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """One comparison of a record field with a constant.

    Equality and hashing use the kind-tagged value, so ``Eq True`` and ``Eq 1`` differ (as
    they match different records) while ``Eq 1`` and ``Eq 1.0`` are the same filter.
    """

    field: str
    operator: str
    value: Any = dataclasses.field(compare=False)
    _key: Any = dataclasses.field(init=False, repr=False)
    _parts: tuple[str, ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.operator in ("In", "NotIn"):
            key: Any = frozenset(_scalar_key(item) for item in self.value)
        else:
            key = _scalar_key(self.value)
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_parts", tuple(self.field.split(".")))

    def matches(self, record: Mapping[str, Any]) -> bool:
        """Evaluate against one record; never raises on odd record contents."""
        found, value = _walk(record, self._parts)
        op = self.operator
        if op == "Ne":
            return not found or _scalar_key(value) != self._key
        if op == "NotIn":
            return not found or _scalar_key(value) not in self._key
        if not found:
            return False
        if op == "Eq":
            return bool(_scalar_key(value) == self._key)
        if op == "In":
            return _scalar_key(value) in self._key
        if op in _ORDERING:
            other = _scalar_key(value)
            if other is None or other[0] != self._key[0]:
                return False  # different kinds never compare
            return bool(_ORDERING[op](value, self.value))
        if op == "Contains":
            if isinstance(value, list):
                return any(_scalar_key(item) == self._key for item in value)
            return isinstance(value, str) and isinstance(self.value, str) and self.value in value
        if op == "StartsWith":
            return isinstance(value, str) and value.startswith(self.value)
        if op == "EndsWith":
            return isinstance(value, str) and value.endswith(self.value)
        raise AssertionError(f"unvalidated operator {op!r}")  # parse_filter prevents this

    def to_wire(self) -> dict[str, Any]:
        """Serialise back to the ekoDB wire format."""
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {
            "type": "Condition",
            "content": {"field": self.field, "operator": self.operator, "value": value},
        }


@dataclass(frozen=True)
class Logical:
    """And/Or over one or more expressions, or Not over exactly one."""

    operator: str
    expressions: tuple[Condition | Logical, ...]

    def matches(self, record: Mapping[str, Any]) -> bool:
        """Recursion is safe: parse_filter bounds depth to MAX_DEPTH."""
        if self.operator == "And":
            return all(expr.matches(record) for expr in self.expressions)
        if self.operator == "Or":
            return any(expr.matches(record) for expr in self.expressions)
        return not self.expressions[0].matches(record)

    def to_wire(self) -> dict[str, Any]:
        """Serialise back to the ekoDB wire format."""
        return {
            "type": "Logical",
            "content": {
                "operator": self.operator,
                "expressions": [expr.to_wire() for expr in self.expressions],
            },
        }


@dataclass(frozen=True)
class Filter:
    """A parsed, validated filter; build it with parse_filter, not by hand."""

    root: Condition | Logical

    def matches(self, record: Mapping[str, Any]) -> bool:
        """True when the record satisfies the filter."""
        return self.root.matches(record)

    def fields(self) -> frozenset[str]:
        """Every dotted path the filter reads, so the server can refuse unreadable fields."""
        found: set[str] = set()
        stack: list[Condition | Logical] = [self.root]
        while stack:
            node = stack.pop()
            if isinstance(node, Condition):
                found.add(node.field)
            else:
                stack.extend(node.expressions)
        return frozenset(found)

    def to_wire(self) -> dict[str, Any]:
        """Serialise back to the ekoDB wire format (parse_filter(f.to_wire()) == f)."""
        return self.root.to_wire()


# --- filter parsing ------------------------------------------------------------------------


@dataclass
class _Budget:
    """Counts nodes across the whole filter so wide-and-deep input is bounded too."""

    nodes: int = 0


def _expect_object(
    raw: object, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> Mapping[str, Any]:
    """Require an object with exactly the given keys, so typos are reported, not ignored."""
    if not isinstance(raw, Mapping):
        raise _fail(where, f"expected an object, got {_json_type(raw)}")
    for key in required:
        if key not in raw:
            raise _fail(where, f"missing key '{key}'")
    allowed = required + optional
    for key in raw:
        if key not in allowed:
            raise _fail(
                where, f"unexpected key {_show(key)}; allowed keys are {', '.join(allowed)}"
            )
    return raw


def _expect_choice(raw: object, where: str, choices: tuple[str, ...], what: str) -> str:
    """Require one of a fixed set of names, listing them when the caller gets it wrong."""
    if not isinstance(raw, str):
        raise _fail(where, f"expected a string {what}, got {_json_type(raw)}")
    if raw not in choices:
        raise _fail(where, f"unknown {what} {_show(raw)}; expected one of {', '.join(choices)}")
    return raw


def _check_scalar(raw: object, where: str, op: str, *, allow_null: bool) -> Any:
    """Accept a JSON scalar (optionally null); NaN/Infinity are refused as non-JSON."""
    if raw is None and allow_null:
        return raw
    if isinstance(raw, float) and not math.isfinite(raw):
        raise _fail(where, "NaN and Infinity are not allowed")
    if isinstance(raw, (bool, int, float, str)):
        return raw
    wanted = "a string, number, boolean or null" if allow_null else "a string, number or boolean"
    raise _fail(where, f"{op} needs {wanted}, got {_json_type(raw)}")


def _check_value(op: str, raw: object, where: str) -> Any:
    """Validate a condition's value for its operator; In/NotIn lists become tuples."""
    if op in ("In", "NotIn"):
        if not isinstance(raw, (list, tuple)):
            raise _fail(where, f"{op} needs an array of scalars, got {_json_type(raw)}")
        if len(raw) > MAX_IN_ITEMS:
            raise _fail(where, f"{op} accepts at most {MAX_IN_ITEMS} values, got {len(raw)}")
        return tuple(
            _check_scalar(item, f"{where}[{i}]", op, allow_null=True) for i, item in enumerate(raw)
        )
    if op in ("Eq", "Ne"):
        return _check_scalar(raw, where, op, allow_null=True)
    if op == "Contains":
        return _check_scalar(raw, where, op, allow_null=False)
    if op in _ORDERING:
        if isinstance(raw, float) and not math.isfinite(raw):
            raise _fail(where, "NaN and Infinity are not allowed")
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise _fail(where, f"{op} needs a number or a string, got {_json_type(raw)}")
        return raw
    if not isinstance(raw, str):  # StartsWith, EndsWith
        raise _fail(where, f"{op} needs a string, got {_json_type(raw)}")
    return raw


def _parse_condition(raw: object, where: str) -> Condition:
    obj = _expect_object(raw, where, ("field", "operator", "value"))
    path = validate_field_path(obj["field"], where=f"{where}.field")
    op = _expect_choice(obj["operator"], f"{where}.operator", OPERATORS, "operator")
    return Condition(path, op, _check_value(op, obj["value"], f"{where}.value"))


def _parse_logical(raw: object, where: str, depth: int, budget: _Budget) -> Logical:
    obj = _expect_object(raw, where, ("operator", "expressions"))
    op = _expect_choice(obj["operator"], f"{where}.operator", LOGICAL_OPERATORS, "operator")
    exprs = obj["expressions"]
    ewhere = f"{where}.expressions"
    if not isinstance(exprs, (list, tuple)):
        raise _fail(ewhere, f"expected an array of filters, got {_json_type(exprs)}")
    if op == "Not" and len(exprs) != 1:
        raise _fail(ewhere, f"Not takes exactly one expression, got {len(exprs)}")
    if not exprs:
        raise _fail(ewhere, f"{op} needs at least one expression")
    if len(exprs) > MAX_NODES:
        raise _fail(ewhere, f"filter is too large; at most {MAX_NODES} expressions are allowed")
    children = tuple(
        _parse_node(expr, f"{ewhere}[{i}]", depth + 1, budget) for i, expr in enumerate(exprs)
    )
    return Logical(op, children)


def _parse_node(raw: object, where: str, depth: int, budget: _Budget) -> Condition | Logical:
    """Parse one node; depth is checked before descending, so recursion stays shallow."""
    if depth > MAX_DEPTH:
        raise _fail(where, f"filter is nested too deeply; at most {MAX_DEPTH} levels are allowed")
    budget.nodes += 1
    if budget.nodes > MAX_NODES:
        raise _fail(where, f"filter is too large; at most {MAX_NODES} expressions are allowed")
    obj = _expect_object(raw, where, ("type", "content"))
    kind = _expect_choice(obj["type"], f"{where}.type", ("Condition", "Logical"), "type")
    if kind == "Condition":
        return _parse_condition(obj["content"], f"{where}.content")
    return _parse_logical(obj["content"], f"{where}.content", depth, budget)


def parse_filter(raw: object) -> Filter | None:
    """Validate a wire filter; None (no filter) stays None. Raises QueryError."""
    if raw is None:
        return None
    return Filter(_parse_node(raw, "filter", 1, _Budget()))


# --- sorting -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SortKey:
    """One sort criterion."""

    field: str
    ascending: bool = True


def parse_sort(raw: object) -> tuple[SortKey, ...]:
    """Validate ``[{"field", "ascending"}]``; ascending defaults to true. Raises QueryError."""
    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)):
        raise _fail(
            "sort", f"expected an array of {{field, ascending}} objects, got {_json_type(raw)}"
        )
    if len(raw) > MAX_SORT_KEYS:
        raise _fail("sort", f"at most {MAX_SORT_KEYS} sort keys are allowed, got {len(raw)}")
    keys: list[SortKey] = []
    for i, item in enumerate(raw):
        where = f"sort[{i}]"
        obj = _expect_object(item, where, ("field",), ("ascending",))
        path = validate_field_path(obj["field"], where=f"{where}.field")
        ascending = obj.get("ascending", True)
        if not isinstance(ascending, bool):
            raise _fail(f"{where}.ascending", f"expected a boolean, got {_json_type(ascending)}")
        if any(key.field == path for key in keys):
            raise _fail(f"{where}.field", f"duplicate sort field {_show(path)}")
        keys.append(SortKey(path, ascending))
    return tuple(keys)


def _rank(found: bool, value: Any) -> tuple[int, int, Any]:
    """Total order over any JSON value: missing/null < bool < number < string < other.

    Within "other" (arrays, objects) values tie, so the stable sort keeps their input order.
    NaN sorts after every other number instead of poisoning comparisons.
    """
    if not found or value is None:
        return (0, 0, 0)
    if isinstance(value, bool):
        return (1, 0, int(value))
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            return (2, 1, 0)
        return (2, 0, value)
    if isinstance(value, str):
        return (3, 0, value)
    return (4, 0, type(value).__name__)


def _key_for(field: str) -> Callable[[Mapping[str, Any]], tuple[int, int, Any]]:
    parts = tuple(field.split("."))

    def key(record: Mapping[str, Any]) -> tuple[int, int, Any]:
        return _rank(*_walk(record, parts))

    return key


def sort_records(records: Iterable[R], keys: Sequence[SortKey]) -> list[R]:
    """Stable multi-key sort into a new list; never raises on mixed or odd values.

    Sorting by the last key first and relying on stability handles mixed directions without
    negating keys (strings cannot be negated). Descending puts missing/null last.
    """
    result = list(records)
    for key in reversed(keys):
        result.sort(key=_key_for(key.field), reverse=not key.ascending)
    return result


# --- paging --------------------------------------------------------------------------------


def _check_int(raw: object, where: str, low: int, high: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise _fail(where, f"expected an integer, got {_json_type(raw)}")
    if not low <= raw <= high:
        raise _fail(where, f"must be between {low} and {high}, got {_show(raw)}")
    return raw


def parse_page(
    limit: object, skip: object, *, default_limit: int = 100, max_limit: int = 1000
) -> tuple[int, int]:
    """Validate (limit, skip); None means min(default_limit, max_limit) / 0.

    Over-large values are refused, not clamped, so a client never silently gets fewer
    records than it asked for.
    """
    if default_limit < 1 or max_limit < 1:
        raise ValueError("default_limit and max_limit must be positive")  # server bug, not user
    default = min(default_limit, max_limit)
    checked_limit = default if limit is None else _check_int(limit, "limit", 1, max_limit)
    checked_skip = 0 if skip is None else _check_int(skip, "skip", 0, MAX_SKIP)
    return (checked_limit, checked_skip)


def run_query(
    records: Iterable[R],
    flt: Filter | None,
    sort: Sequence[SortKey],
    limit: int,
    skip: int,
) -> list[R]:
    """Filter, then sort, then page: the order a find route needs."""
    selected = [r for r in records if flt is None or flt.matches(r)]
    if sort:
        selected = sort_records(selected, sort)
    return selected[skip : skip + limit]


# --- keyset pages ----------------------------------------------------------------------------

MAX_CURSOR_LENGTH: Final = 4096
_CURSOR_VERSION: Final = 1

Rank = tuple[int, int, Any]


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the last record's sort ranks and insertion sequence."""

    ranks: tuple[Rank, ...]
    seq: int


def _sort_signature(sort: Sequence[SortKey]) -> str:
    spec = json.dumps([[k.field, k.ascending] for k in sort], separators=(",", ":"))
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def _ranks(record: Mapping[str, Any], sort: Sequence[SortKey]) -> tuple[Rank, ...]:
    return tuple(_rank(*get_path(record, key.field)) for key in sort)


def encode_cursor(record: Mapping[str, Any], seq: int, sort: Sequence[SortKey]) -> str:
    """The opaque cursor that continues after ``record`` (URL-safe base64 of JSON)."""
    payload = {"v": _CURSOR_VERSION, "s": _sort_signature(sort),
               "k": [list(r) for r in _ranks(record, sort)], "q": seq}
    raw = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(raw: object, sort: Sequence[SortKey]) -> Cursor | None:
    """Validate a cursor from a request (None: start at the beginning). Raises QueryError."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw or len(raw) > MAX_CURSOR_LENGTH:
        raise _fail("cursor", f"expected a cursor string from a previous page (at most "
                              f"{MAX_CURSOR_LENGTH} characters)")
    bad = _fail("cursor", "not a cursor this server issued; pass next_cursor from a previous "
                          "page unchanged")
    try:
        payload = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, TypeError):
        raise bad from None
    if (not isinstance(payload, dict) or payload.get("v") != _CURSOR_VERSION
            or not isinstance(payload.get("k"), list) or type(payload.get("q")) is not int):
        raise bad
    if payload.get("s") != _sort_signature(sort):
        raise _fail("cursor", "this cursor belongs to a query with another sort; use the "
                              "same sort as the page it came from")
    ranks: list[Rank] = []
    for item in payload["k"]:
        if (not isinstance(item, list) or len(item) != 3 or type(item[0]) is not int
                or type(item[1]) is not int
                or not isinstance(item[2], (int, float, str)) or isinstance(item[2], bool)):
            raise bad
        ranks.append((item[0], item[1], item[2]))
    if len(ranks) != len(sort):
        raise bad
    for rank in ranks:  # a forged cursor must not make comparisons raise
        if rank[0] in (1, 2) and not isinstance(rank[2], (int, float)):
            raise bad
        if rank[0] in (3, 4) and not isinstance(rank[2], str):
            raise bad
    return Cursor(tuple(ranks), payload["q"])


def _after(ranks: tuple[Rank, ...], seq: int, cursor: Cursor, sort: Sequence[SortKey]) -> bool:
    """Whether a record at (ranks, seq) comes after the cursor in the page order."""
    for mine, theirs, key in zip(ranks, cursor.ranks, sort, strict=True):
        if mine != theirs:
            try:
                return (mine > theirs) if key.ascending else (mine < theirs)
            except TypeError:  # same category, values of two kinds (forged cursor)
                return str(mine) > str(theirs)
    return seq > cursor.seq


def keyset_page(
    rows: Iterable[tuple[int, dict[str, Any]]],
    flt: Filter | None,
    sort: Sequence[SortKey],
    limit: int,
    skip: int,
    cursor: Cursor | None,
) -> tuple[list[tuple[int, dict[str, Any]]], bool]:
    """One page of ``(seq, record)`` in (sort keys, seq) order after ``cursor``, and whether
    more follow. ``rows`` must come in ascending seq order (the stable sorts keep it).

    Without a sort the page order is the rows' order, so reading stops at the first
    ``skip + limit + 1`` matches after the cursor (one more than the page: ``has_more``
    stays exact); ``rows`` may be a lazy iterator that decrypts as it goes. A sort must see
    every match first.
    """
    if not sort:
        wanted = skip + limit + 1
        after = -1 if cursor is None else cursor.seq  # sequences start at 1
        found: list[tuple[int, dict[str, Any]]] = []
        for seq, rec in rows:
            if seq > after and (flt is None or flt.matches(rec)):
                found.append((seq, rec))
                if len(found) == wanted:
                    break
        return found[skip: skip + limit], len(found) == wanted
    selected = [(seq, rec) for seq, rec in rows if flt is None or flt.matches(rec)]
    for key in reversed(sort):
        get = _key_for(key.field)
        selected.sort(key=lambda item, get=get: get(item[1]),  # type: ignore[misc]
                      reverse=not key.ascending)
    if cursor is not None:
        selected = [(seq, rec) for seq, rec in selected
                    if _after(_ranks(rec, sort), seq, cursor, sort)]
    return selected[skip: skip + limit], len(selected) > skip + limit
