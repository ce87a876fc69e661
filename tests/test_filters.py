"""The where() builder produces the ekoDB wire format and refuses nonsense early."""

from __future__ import annotations

import pytest

from ekoclient import where
from ekoclient.errors import InvalidArgumentError


def test_condition_wire_format() -> None:
    assert where("age").gt(30).to_wire() == {
        "type": "Condition", "content": {"field": "age", "operator": "Gt", "value": 30}}


def test_and_chains_flatten_into_one_logical_node() -> None:
    f = where("a").eq(1) & where("b").eq(2) & where("c").eq(3)
    wire = f.to_wire()
    assert wire["content"]["operator"] == "And"
    assert [e["content"]["field"] for e in wire["content"]["expressions"]] == ["a", "b", "c"]


def test_or_and_not_compose() -> None:
    wire = (~(where("a").eq(1) | where("b").in_([1, 2]))).to_wire()
    assert wire["content"]["operator"] == "Not"
    inner = wire["content"]["expressions"][0]
    assert inner["content"]["operator"] == "Or"
    assert inner["content"]["expressions"][1]["content"] == {
        "field": "b", "operator": "In", "value": [1, 2]}


@pytest.mark.parametrize(
    ("method", "operator"),
    [("eq", "Eq"), ("ne", "Ne"), ("gt", "Gt"), ("gte", "Gte"), ("lt", "Lt"), ("lte", "Lte"),
     ("contains", "Contains"), ("starts_with", "StartsWith"), ("ends_with", "EndsWith")],
)
def test_every_operator_has_its_wire_name(method: str, operator: str) -> None:
    assert getattr(where("f"), method)("x").to_wire()["content"]["operator"] == operator


def test_not_in_takes_any_iterable() -> None:
    assert where("f").not_in(x for x in (1, 2)).to_wire()["content"]["value"] == [1, 2]


@pytest.mark.parametrize(
    "build",
    [lambda: where(""), lambda: where("a..b"), lambda: where("a").gt(True),
     lambda: where("a").gt(None), lambda: where("a").in_("abc"),
     lambda: where("a").starts_with(3), lambda: where("a").eq(1) & {"type": "Condition"}],
)
def test_nonsense_is_refused_before_sending(build: object) -> None:
    with pytest.raises(InvalidArgumentError):
        build()  # type: ignore[operator]
