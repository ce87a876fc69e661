"""Strict JSON request parsing used by every JSON route.

Refuses what Python's json module would quietly accept: duplicate keys (last-wins hides
attacks), NaN/Infinity (not JSON), and nesting deep enough to exhaust the recursion limit.
Pydantic errors become one readable 400 message that never echoes input values.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from mock_server.errors import ApiError

M = TypeVar("M", bound=BaseModel)

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")
#: A \uD800-\uDFFF escape in the text: only then can a decoded string hold a lone surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _Reject(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Reject(f"duplicate key {key[:64]!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise _Reject(f"{name} is not valid JSON")


def check_content_type(content_type: str | None) -> None:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json")


def json_depth(text: str) -> int:
    """Maximum nesting depth, computed iteratively (strings stripped first)."""
    if text.count("[") + text.count("{") == 0:
        return 0
    depth = best = 0
    for ch in _BRACKETS.findall(_STRINGS.sub("", text)):
        if ch in "[{":
            depth += 1
            best = max(best, depth)
        else:
            depth -= 1
    return best


def parse_json_bytes(raw: bytes, *, max_depth: int) -> Any:
    """Decode strictly; raises ApiError(400, invalid_json)."""
    if not raw.strip():
        raise ApiError(400, "invalid_json", "request body is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_json", "request body is not UTF-8") from None
    if text.count("[") + text.count("{") > max_depth and json_depth(text) > max_depth:
        raise ApiError(400, "invalid_json", f"JSON nesting deeper than {max_depth}")
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _Reject as exc:
        raise ApiError(400, "invalid_json", str(exc)) from None
    except (ValueError, RecursionError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "malformed"
        raise ApiError(400, "invalid_json", f"malformed JSON: {detail}") from None
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        raise ApiError(400, "invalid_json", "a string holds a lone UTF-16 surrogate "
                       "(\\uD800-\\uDFFF without its pair): not valid Unicode")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    """Whether any key or string in a parsed document cannot be encoded as UTF-8.

    json.loads accepts ``"\\ud800"`` (a string no UTF-8 encoder can write): left in, it fails
    later, when the document is stored, as a 500. Iterative, so depth costs no stack.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            items: list[Any] = [item]
        elif isinstance(item, dict):
            stack.extend(item.values())
            items = list(item)
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for text in items:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:10]:
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def validate(model: type[M], data: Any) -> M:
    """Validate parsed JSON into a model; 400 validation_error with field + problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, "validation_error", validation_message(exc)) from None


def parse_model(
    model: type[M], raw: bytes, content_type: str | None, *, max_depth: int
) -> M:
    check_content_type(content_type)
    return validate(model, parse_json_bytes(raw, max_depth=max_depth))


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` declaring a JSON body, so /openapi.json describes hand-parsed bodies."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any, depth: int = 0) -> Any:
        # nested models are inlined: openapi_extra cannot add components (no cycles here)
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/") and depth < 32:
                return inline(defs[ref.rsplit("/", 1)[1]], depth + 1)
            return {k: inline(v, depth) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v, depth) for v in node]
        return node

    schema = inline(schema)
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    }
