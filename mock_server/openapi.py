"""/openapi.json that matches what the server sends, for every route, in one place.

FastAPI documents 200 and a 422 the server never sends (validation errors are 400 here).
:func:`install` replaces that, for every operation of every router (so routes added later
are covered without doing anything), with the errors the shared machinery can answer:

* every operation: 400 (bad parameters), 503 (server busy or a fault), 507 on writes;
* an authenticated operation (it depends on the current principal): 401, 403, 429;
* a path with parameters: 404; a write: 409 (conflicts, idempotency) and 413 (body cap);
* a declared JSON body: 415 for another media type;

each with the SPEC §4.2 envelope schema (component ``Error``). A route documents anything
else it sends (a 201, a 206, a 416) with FastAPI's ``responses=`` as usual; its own
entries win over these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from mock_server.errors import STATUS_CODES

WRITE_METHODS = frozenset({"post", "put", "patch", "delete"})

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "request_id"],
            "additionalProperties": False,
            "properties": {
                "code": {"type": "string", "description": "stable machine code"},
                "message": {"type": "string", "description": "what went wrong, for people"},
                "request_id": {"type": "string", "description": "also in X-Request-Id"},
            },
        }
    },
}

_DESCRIPTIONS = {
    400: "Invalid request (parameters, body or JSON)",
    401: "Missing, invalid or expired token",
    403: "The key may not do this",
    404: "Not found",
    409: "Conflict (exists, or an Idempotency-Key in use or reused)",
    413: "Body too large",
    415: "Body is not application/json",
    429: "Rate limit exceeded (see Retry-After)",
    503: "Server busy or unavailable (see Retry-After)",
    507: "The server's disk is full (see Retry-After)",
}


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dep in dependant.dependencies:
        if dep.call is not None:
            yield dep.call
        yield from _calls(dep)


def _api_routes(app: FastAPI) -> Iterator[tuple[str, set[str], Dependant]]:
    """(path template, methods, dependant) of every API route, included routers too
    (FastAPI >= 0.16x wraps them: ``app.routes`` no longer lists their routes)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before included routers were wrapped
        contexts: Iterable[Any] = app.routes
    else:
        contexts = iter_route_contexts(app.routes)
    for context in contexts:
        route = getattr(context, "original_route", context)
        if isinstance(route, APIRoute):
            path = getattr(context, "path_format", None) or route.path_format
            yield str(path), set(route.methods or ()), route.dependant


def error_statuses(method: str, path: str, operation: dict[str, Any],
                   authenticated: bool) -> list[int]:
    """The error statuses the shared machinery can send for one operation."""
    statuses = {400, 503}
    if authenticated:
        statuses |= {401, 403, 429}
    if "{" in path:
        statuses.add(404)
    if method in WRITE_METHODS:
        statuses |= {409, 413, 507}
    if "application/json" in operation.get("requestBody", {}).get("content", {}):
        statuses.add(415)
    return sorted(statuses)


def install(app: FastAPI, is_authenticated: Callable[[Callable[..., Any]], bool]) -> None:
    """Make ``app.openapi()`` document the real error answers of every operation.

    ``is_authenticated(call)``: whether a dependency is the one that authenticates.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        authed: dict[tuple[str, str], bool] = {}
        for path_format, methods, dependant in _api_routes(app):
            needs = any(is_authenticated(c) for c in _calls(dependant))
            for method in methods:
                authed[(path_format, method.lower())] = needs
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["Error"] = ERROR_SCHEMA
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        envelope = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                responses: dict[str, Any] = operation.setdefault("responses", {})
                responses.pop("422", None)  # never sent: validation errors are 400
                for code, entry in responses.items():  # a route's own error entries
                    if code[:1] in "45" and isinstance(entry, dict):
                        entry["content"] = envelope
                for status in error_statuses(method, path, operation,
                                             authed.get((path, method), False)):
                    responses.setdefault(str(status), {
                        "description": _DESCRIPTIONS.get(status, STATUS_CODES[status]),
                        "content": envelope,
                    })
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route's own error answers (documented with the envelope)."""
    return {status: {"description": _DESCRIPTIONS.get(status, STATUS_CODES.get(status, "Error"))}
            for status in statuses}
