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

Requests are described as the handlers check them, so every request valid per the schema
is accepted (and every invalid one refused): a path or query parameter named in
:data:`PATH_PARAMETERS` / :data:`QUERY_PARAMETERS` (``collection``, ``key``, ``record_id``,
``transaction_id``, the ``bypass_*`` flags...) gets that one shared schema on every route,
from the validators' own patterns and bounds; a route that declares its own
(``Path(pattern=...)``) keeps it. Keyed by name, not declared per signature, so a route
added later is described without doing anything, and the fuzz suite (both ways) fails
should a name ever mean something else. Bodies are described per route (``openapi_extra``)
with the shared pieces here: the ``Filter``/``Sort``/``Record``/``Permissions`` grammars
(:data:`COMPONENTS`, named from pydantic models with :func:`component`) and annotated field
types (``FieldPathText``, ``TtlDoc``...) that validate as before and document the rest.
Rules JSON Schema cannot state (two different queues, as many values as keys) are said in
the operation's description.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import StrictInt, WithJsonSchema

from mock_server.actions import ACTIONS
from mock_server.config import TIERS
from mock_server.datastore import MAX_ID_LENGTH
from mock_server.errors import STATUS_CODES
from mock_server.keys import MAX_IPS, MAX_LABEL, MAX_RATE_LIMIT
from mock_server.kv import MAX_KEY_LENGTH, MAX_TTL
from mock_server.permissions import MAX_FIELDS, MAX_NAME_LENGTH, MAX_RULES
from mock_server.query import (
    LOGICAL_OPERATORS,
    MAX_IN_ITEMS,
    MAX_PATH_LENGTH,
    MAX_PATH_SEGMENTS,
    MAX_SORT_KEYS,
)

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


def _string(pattern: str, max_length: int, min_length: int = 1) -> dict[str, Any]:
    return {"type": "string", "pattern": pattern, "minLength": min_length,
            "maxLength": max_length}


#: A resource name (collection, queue, subscription), as permissions.validate_resource_name
#: checks it; ':' would make it a prefixed name of another service.
NAME = _string(r"^[A-Za-z0-9_.\-]+$", MAX_NAME_LENGTH)
#: A queue name (queues.validate_queue_name): a NAME that does not start with '_' (those are
#: the routes' own, like _move) and is not '.' or '..'.
QUEUE_NAME: dict[str, Any] = {**_string(r"^[A-Za-z0-9.\-][A-Za-z0-9_.\-]*$", MAX_NAME_LENGTH),
                              "not": {"enum": [".", ".."]}}
#: A dotted field path, as query.validate_field_path checks it.
FIELD_PATH = _string(rf"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+){{0,{MAX_PATH_SEGMENTS - 1}}}$",
                     MAX_PATH_LENGTH)
#: ekoDB's comma-separated form of a list of field paths ("a, b.c"; "" for none).
_PATH = FIELD_PATH["pattern"][1:-1]
FIELD_PATHS: dict[str, Any] = {"type": "string", "maxLength": 8192,
                               "pattern": rf"^( *{_PATH} *(, *{_PATH} *)*)?$"}
#: A transaction id (transactions._TX_ID) and a savepoint name (transactions._SAVEPOINT).
TRANSACTION_ID = _string(r"^tx_[A-Za-z0-9_\-]{16,64}$", 67, 19)
SAVEPOINT = _string(r"^[A-Za-z0-9_\-]+$", 64)
#: A time to live (kv.parse_ttl): seconds, or a duration string; documented as far as it
#: stays within kv.MAX_TTL (10 years) whatever the digits.
DURATION: dict[str, Any] = {"type": "string",
                            "pattern": r"^([1-9][0-9]{0,3}(ms|s|m|h)?|[1-9][0-9]{0,2}d)$"}
TTL: dict[str, Any] = {"anyOf": [
    {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TTL}, DURATION]}
#: An id the caller chooses (datastore._CLIENT_ID).
CLIENT_ID = _string(r"^[A-Za-z0-9_\-]+$", MAX_ID_LENGTH)
#: A boolean query parameter (compat.parse_flag: trimmed, any case).
FLAG: dict[str, Any] = {"type": "string", "enum": ["true", "false", "1", "0"]}

#: Path parameters by name: one schema for every route that names a thing this way.
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "collection": NAME,
    "record_id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
    "field": FIELD_PATH,
    "action": {"type": "string", "enum": list(ACTIONS)},
    "key": _string(r"^[A-Za-z0-9_.\-]+$", MAX_KEY_LENGTH),  # kv._KEY
    # blobs.check_table, check_blob_id
    "table": _string(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", 128),
    "blob_id": {**_string(r"^[A-Za-z0-9._~:@+=,\-]+$", 255), "not": {"enum": [".", ".."]}},
    "transaction_id": TRANSACTION_ID,
}
#: Query parameters by name, likewise.
QUERY_PARAMETERS: dict[str, dict[str, Any]] = {
    "bypass_cache": FLAG,
    "bypass_ripple": FLAG,
    "transaction_id": TRANSACTION_ID,
    "select_fields": FIELD_PATHS,
    "exclude_fields": FIELD_PATHS,
}
#: Parameters whose name means another thing under a path prefix: (prefix, in, name).
PARAMETERS_UNDER: dict[tuple[str, str, str], dict[str, Any]] = {
    ("/api/transactions/", "path", "name"): SAVEPOINT,
    ("/api/upsert/", "path", "record_id"): CLIENT_ID,
    ("/api/insert/", "query", "ttl"): DURATION,
    ("/api/queue/_move", "query", "from"): QUEUE_NAME,
    ("/api/queue/_move", "query", "to"): QUEUE_NAME,
    ("/api/dedupq/_move", "query", "from"): QUEUE_NAME,
    ("/api/dedupq/_move", "query", "to"): QUEUE_NAME,
    ("/api/queue/", "path", "name"): QUEUE_NAME,
    ("/api/dedupq/", "path", "name"): QUEUE_NAME,
}


def _fields(never: str | None = None) -> dict[str, Any]:
    """A rule's list of field paths (permissions._parse_fields), less those it may not name."""
    path = _string(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$", MAX_PATH_LENGTH)
    if never is not None:
        path["not"] = {"pattern": never}
    return {"anyOf": [{"type": "array", "maxItems": MAX_FIELDS, "items": path},
                      {"type": "null"}]}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _condition(operators: list[str], value: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False,
            "required": ["field", "operator", "value"],
            "properties": {"field": FIELD_PATH, "operator": {"enum": operators},
                           "value": value}}


_SCALAR: dict[str, Any] = {"type": ["string", "number", "boolean"]}
_SCALAR_OR_NULL: dict[str, Any] = {"type": ["string", "number", "boolean", "null"]}
#: A field name inside a record (datastore._FIELD_NAME); at the top, 'id' and names that
#: start with '_' belong to the server.
NESTED_NAME = r"^[A-Za-z0-9_\-]+$"
FIELD_NAME = r"^[A-Za-z0-9\-][A-Za-z0-9_\-]*$"

#: Shared request-body grammars, as the domain parses them (query.parse_filter, parse_sort,
#: datastore._check_write), added to ``components`` and used by ``$ref``.
COMPONENTS: dict[str, dict[str, Any]] = {
    "Filter": {"title": "Filter", "anyOf": [
        {"type": "object", "additionalProperties": False, "required": ["type", "content"],
         "properties": {"type": {"const": "Condition"}, "content": _ref("Condition")}},
        {"type": "object", "additionalProperties": False, "required": ["type", "content"],
         "properties": {"type": {"const": "Logical"}, "content": _ref("Logical")}},
    ]},
    "Condition": {"title": "Condition", "anyOf": [
        _condition(["Eq", "Ne"], _SCALAR_OR_NULL),
        _condition(["In", "NotIn"], {"type": "array", "maxItems": MAX_IN_ITEMS,
                                     "items": _SCALAR_OR_NULL}),
        _condition(["Contains"], _SCALAR),
        _condition(["Gt", "Gte", "Lt", "Lte"], {"type": ["string", "number"]}),
        _condition(["StartsWith", "EndsWith"], {"type": "string"}),
    ]},
    "Logical": {"title": "Logical", "anyOf": [
        {"type": "object", "additionalProperties": False,
         "required": ["operator", "expressions"],
         "properties": {"operator": {"enum": [op for op in LOGICAL_OPERATORS if op != "Not"]},
                        "expressions": {"type": "array", "minItems": 1,
                                        "items": _ref("Filter")}}},
        {"type": "object", "additionalProperties": False,
         "required": ["operator", "expressions"],
         "properties": {"operator": {"const": "Not"},
                        "expressions": {"type": "array", "minItems": 1, "maxItems": 1,
                                        "items": _ref("Filter")}}},
    ]},
    "Sort": {"title": "Sort", "type": "array", "maxItems": MAX_SORT_KEYS,
             "description": "each field at most once",
             "items": {"type": "object", "additionalProperties": False, "required": ["field"],
                       "properties": {"field": FIELD_PATH, "ascending": {"type": "boolean"}}}},
    # a value inside a record: objects' names must be addressable by field rules
    "FieldValue": {"title": "FieldValue", "anyOf": [
        _SCALAR_OR_NULL,
        {"type": "array", "items": _ref("FieldValue")},
        {"type": "object", "propertyNames": {"pattern": NESTED_NAME},
         "additionalProperties": _ref("FieldValue")},
    ]},
    # permissions.parse_permissions: resource name or pattern -> levels or a rule
    "Permissions": {"title": "Permissions", "type": "object", "maxProperties": MAX_RULES,
                    "propertyNames": _string(
                        r"^((blob|queue|dedupq|bus|kv):)?[A-Za-z0-9_.*\-]{1,128}$", 135),
                    "additionalProperties": {"anyOf": [
                        {"type": "array", "items": {"enum": ["read", "write", "admin"]}},
                        {"type": "object", "additionalProperties": False, "properties": {
                            "read": {"type": "boolean"}, "write": {"type": "boolean"},
                            "admin": {"type": "boolean"},
                            "select_fields": _fields(),
                            "exclude_fields": _fields(r"^id(\.|$)"),
                            "writable_fields": _fields(r"^(id(\.|$)|_)")}}]}},
    "Record": {"title": "Record", "type": "object",
               "propertyNames": {"pattern": FIELD_NAME, "not": {"const": "id"}},
               "additionalProperties": _ref("FieldValue")},
    # an insert may carry its expiry (ekoDB's shape; not with ?ttl=, not in a transaction)
    "NewRecord": {"title": "NewRecord", "type": "object",
                  "description": "A record; its ttl (the record's expiry) is not also given "
                                 "as ?ttl= and not set inside a transaction.",
                  "propertyNames": {"pattern": FIELD_NAME, "not": {"const": "id"}},
                  "properties": {"ttl": TTL},
                  "additionalProperties": _ref("FieldValue")},
}

#: Body fields documented as the domain checks them: pydantic validates only the base type
#: (the domain checks the rest and says precisely what is wrong), ``WithJsonSchema`` says
#: what is accepted.
NameText = Annotated[str, WithJsonSchema(NAME)]
FieldPathText = Annotated[str, WithJsonSchema(FIELD_PATH)]
FieldPathsText = Annotated[str, WithJsonSchema(FIELD_PATHS)]
KvKeyText = Annotated[str, WithJsonSchema(PATH_PARAMETERS["key"])]
SavepointText = Annotated[str, WithJsonSchema(SAVEPOINT)]
TransactionIdText = Annotated[str | None, WithJsonSchema(
    {"anyOf": [TRANSACTION_ID, {"type": "null"}]})]

#: Pydantic refuses a ``$ref`` it did not make: models name a component with this key,
#: which :func:`install` turns into the ``$ref``.
_COMPONENT = "x-component"


def component(name: str) -> dict[str, Any]:
    """A schema node standing for ``components/schemas/<name>`` (see :data:`COMPONENTS`)."""
    assert name in COMPONENTS, name
    return {_COMPONENT: name}


FilterDoc = Annotated[dict[str, Any] | None, WithJsonSchema(
    {"anyOf": [component("Filter"), {"type": "null"}]})]
SortDoc = Annotated[list[dict[str, Any]] | None, WithJsonSchema(
    {"anyOf": [component("Sort"), {"type": "null"}]})]
PermissionsDoc = Annotated[dict[str, Any] | None, WithJsonSchema(
    {"anyOf": [component("Permissions"), {"type": "null"}]})]
#: A key's label (keys._validate_label: not blank) and tier (config.TIERS).
LABEL: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_LABEL,
                         "pattern": r"\S"}
LabelText = Annotated[str, WithJsonSchema(LABEL)]
TierText = Annotated[str | None, WithJsonSchema(
    {"anyOf": [{"enum": list(TIERS)}, {"type": "null"}]})]
#: keys.validate_rate_limit
RateLimitInt = Annotated[StrictInt | None, WithJsonSchema({"anyOf": [
    {"type": "integer", "minimum": 1, "maximum": MAX_RATE_LIMIT}, {"type": "null"}]})]
#: Addresses (a bare one is its /32 or /128); networks too, in CIDR without host bits.
AllowedIps = Annotated[list[str] | None, WithJsonSchema({"anyOf": [
    {"type": "array", "maxItems": MAX_IPS,
     "items": {"anyOf": [{"type": "string", "format": "ipv4"},
                         {"type": "string", "format": "ipv6"}]}},
    {"type": "null"}]})]
TtlDoc = Annotated[float | str | None, WithJsonSchema({"anyOf": [TTL, {"type": "null"}]})]


def body_of(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` of a route whose JSON body is ``schema``."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": schema}}}}


#: ``openapi_extra`` of a route whose body is one record.
RECORD_BODY = body_of(component("Record"))


def _resolve_components(node: Any) -> Any:
    if isinstance(node, dict):
        if _COMPONENT in node:
            return _ref(node[_COMPONENT])
        return {k: _resolve_components(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_components(v) for v in node]
    return node



def _describe_parameters(path: str, operation: dict[str, Any]) -> None:
    """Give every shared parameter its one schema (a route's own pattern or enum wins)."""
    for param in operation.get("parameters", []):
        name, where = param.get("name"), param.get("in")
        by_name = PATH_PARAMETERS if where == "path" else QUERY_PARAMETERS
        under = next((schema for (prefix, pin, pname), schema in PARAMETERS_UNDER.items()
                      if (pin, pname) == (where, name) and path.startswith(prefix)), None)
        shared = under or (by_name.get(name) if where in ("path", "query") else None)
        if shared is None:
            continue
        schema = param.setdefault("schema", {})
        # an optional query parameter is documented as anyOf [string, null]: replace it;
        # a route's own pattern stays, unless a prefix rule says more (the domain's check)
        if under is None and ("pattern" in schema or "enum" in schema):
            continue
        title = schema.get("title")
        param["schema"] = {**shared, **({"title": title} if title else {})}


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
        components.update(COMPONENTS)
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        envelope = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                _describe_parameters(path, operation)
                if "requestBody" in operation:
                    operation["requestBody"] = _resolve_components(operation["requestBody"])
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
