"""``where("age").gt(30) & where("team").eq("a")``: filters in the ekoDB wire format (SPEC §4.3).

A :class:`Filter` is an immutable wrapper around the wire dict; ``&``, ``|`` and ``~`` build
Logical nodes, flattening nested And/Or so long chains stay shallow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .errors import InvalidArgumentError

Scalar = str | int | float | bool | None


class Filter:
    """A filter expression; combine with ``&``, ``|`` and ``~``."""

    __slots__ = ("_wire",)

    def __init__(self, wire: Mapping[str, Any]) -> None:
        self._wire = dict(wire)

    def to_wire(self) -> dict[str, Any]:
        return self._wire

    def _logical(self, operator: str, other: object) -> Filter:
        if not isinstance(other, Filter):
            raise InvalidArgumentError(f"filters combine only with filters, not {other!r}")
        parts: list[dict[str, Any]] = []
        for f in (self, other):
            w = f._wire
            if w["type"] == "Logical" and w["content"]["operator"] == operator:
                parts.extend(w["content"]["expressions"])
            else:
                parts.append(w)
        return Filter({"type": "Logical",
                       "content": {"operator": operator, "expressions": parts}})

    def __and__(self, other: Filter) -> Filter:
        return self._logical("And", other)

    def __or__(self, other: Filter) -> Filter:
        return self._logical("Or", other)

    def __invert__(self) -> Filter:
        return Filter({"type": "Logical", "content": {"operator": "Not",
                                                      "expressions": [self._wire]}})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Filter) and other._wire == self._wire

    def __hash__(self) -> int:
        return hash(repr(self._wire))

    def __repr__(self) -> str:
        return f"Filter({self._wire!r})"


class FieldRef:
    """A field to compare; made by :func:`where`."""

    __slots__ = ("_field",)

    def __init__(self, field: str) -> None:
        if not isinstance(field, str) or not field or any(not p for p in field.split(".")):
            raise InvalidArgumentError(f"a field path must be a dotted name, got {field!r}")
        self._field = field

    def _cond(self, operator: str, value: Any) -> Filter:
        return Filter({"type": "Condition",
                       "content": {"field": self._field, "operator": operator, "value": value}})

    def eq(self, value: Any) -> Filter:
        return self._cond("Eq", value)

    def ne(self, value: Any) -> Filter:
        return self._cond("Ne", value)

    def gt(self, value: int | float | str) -> Filter:
        return self._cond("Gt", _ordered(value, "gt"))

    def gte(self, value: int | float | str) -> Filter:
        return self._cond("Gte", _ordered(value, "gte"))

    def lt(self, value: int | float | str) -> Filter:
        return self._cond("Lt", _ordered(value, "lt"))

    def lte(self, value: int | float | str) -> Filter:
        return self._cond("Lte", _ordered(value, "lte"))

    def in_(self, values: Iterable[Scalar]) -> Filter:
        return self._cond("In", _listed(values, "in_"))

    def not_in(self, values: Iterable[Scalar]) -> Filter:
        return self._cond("NotIn", _listed(values, "not_in"))

    def contains(self, value: Scalar) -> Filter:
        return self._cond("Contains", value)

    def starts_with(self, prefix: str) -> Filter:
        return self._cond("StartsWith", _text(prefix, "starts_with"))

    def ends_with(self, suffix: str) -> Filter:
        return self._cond("EndsWith", _text(suffix, "ends_with"))


def _ordered(value: Any, op: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidArgumentError(f"{op}() compares numbers or strings, got {value!r}")
    return value


def _listed(values: Any, op: str) -> list[Any]:
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise InvalidArgumentError(f"{op}() takes a list of values, got {values!r}")
    return list(values)


def _text(value: Any, op: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{op}() takes a string, got {value!r}")
    return value


def where(field: str) -> FieldRef:
    """Start a condition on ``field`` (a dotted path for nested objects)."""
    return FieldRef(field)


def filter_wire(value: Filter | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Accept a :class:`Filter`, a raw wire-format dict, or None."""
    if value is None:
        return None
    if isinstance(value, Filter):
        return value.to_wire()
    if isinstance(value, Mapping):
        return dict(value)
    raise InvalidArgumentError(
        f"filter must be built with where(...) or be a wire-format dict, got {value!r}")
