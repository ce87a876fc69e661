"""Client transaction and schema routes. Thin: the rules live in :mod:`mock_server.transactions`
and :mod:`mock_server.datastore`.

| method | path | body → answer |
|---|---|---|
| POST | ``/api/transactions`` | ``{"isolation_level"?}`` → ``{"transaction_id", "isolation_level", "status", "expires_in"}`` |
| GET | ``/api/transactions/{tx}`` | → ``{"transaction_id", "status", "isolation_level", "operations", "savepoints", ...}`` |
| POST | ``/api/transactions/{tx}/commit`` | → ``{"transaction_id", "status": "committed"}`` (409 on conflict) |
| POST | ``/api/transactions/{tx}/rollback`` | → ``{"transaction_id", "status"}`` |
| POST | ``/api/transactions/{tx}/savepoints`` | ``{"name"}`` → ``{"transaction_id", "savepoint"}`` |
| POST | ``/api/transactions/{tx}/savepoints/{name}/rollback`` | → ``{..., "status": "rolled_back_to"}`` |
| DELETE | ``/api/transactions/{tx}/savepoints/{name}`` | → ``{..., "released": name}`` |
| GET | ``/api/collections/{c}`` | → ekoDB's collection metadata ``{"collection": schema, "analytics": {}}`` |
| GET | ``/api/schemas/{c}`` | → ekoDB schema ``{"fields", "version", ...}`` (read) |
| PUT | ``/api/schemas/{c}`` | ``{"constraints": {field: {attr: value}}}`` → the new schema (admin) |

The first four are ekoDB's routes; ekoDB's clients document no savepoint routes, so those
are ours. Commit and rollback take no body (ekoDB's client sends none).
"""  # noqa: E501

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from mock_server.http_json import openapi_body
from mock_server.openapi import SavepointText
from mock_server.routes.compat import outside_transactions
from mock_server.routes.datastore import _body, _run
from mock_server.routes.deps import CurrentPrincipal, State
from mock_server.schemas import MAX_ENUMS, MAX_FIELDS, MAX_REGEX, TYPES

router = APIRouter(tags=["transactions"])


class _BeginDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # any case, '_' and ' ' ignored (transactions._canon_isolation); documented canonically
    isolation_level: Literal["ReadUncommitted", "ReadCommitted", "RepeatableRead",
                             "Serializable"] | None = None


class _SavepointDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: SavepointText


class _FieldConstraints(BaseModel):
    """schemas._field: null removes an attribute; a new field needs its field_type. A regex
    must compile (Python syntax) and a default must meet the field's own constraints."""

    model_config = ConfigDict(extra="forbid")
    field_type: Literal[tuple(TYPES)] | None = None  # type: ignore[valid-type]
    required: bool | None = None
    unique: bool | None = None
    enums: list[Any] | None = Field(default=None, max_length=MAX_ENUMS)
    min: float | str | None = None
    max: float | str | None = None
    regex: str | None = Field(default=None, max_length=MAX_REGEX)
    default: Any = None
    index: dict[str, Any] | None = None


class _ConstraintsDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    constraints: dict[str, _FieldConstraints] = Field(min_length=1, max_length=MAX_FIELDS)


def _constraints_doc() -> dict[str, Any]:
    """Field names as schemas._check_name takes them (pydantic cannot say "not 'id'")."""
    doc = openapi_body(_ConstraintsDoc)
    constraints = doc["requestBody"]["content"]["application/json"]["schema"]["properties"][
        "constraints"]
    constraints["propertyNames"] = {"pattern": r"^[A-Za-z0-9_\-]{1,128}$",
                                    "not": {"const": "id"}}
    return doc


@router.post("/api/transactions", openapi_extra={**openapi_body(_BeginDoc), "requestBody": {
    **openapi_body(_BeginDoc)["requestBody"], "required": False}})
async def begin(request: Request, principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    body = await _body(request) if await request.body() else None
    return await _run(state.transactions.begin, principal, body)


@router.get("/api/transactions/{transaction_id}")
def status(transaction_id: str, principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    return state.transactions.status(principal, transaction_id)


@router.post("/api/transactions/{transaction_id}/commit", response_model=None)
def commit(transaction_id: str, principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    return state.transactions.commit(principal, transaction_id)


@router.post("/api/transactions/{transaction_id}/rollback", response_model=None)
def rollback(transaction_id: str, principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    return state.transactions.rollback(principal, transaction_id)


@router.post("/api/transactions/{transaction_id}/savepoints",
             openapi_extra=openapi_body(_SavepointDoc))
async def savepoint(transaction_id: str, request: Request, principal: CurrentPrincipal,
                    state: State) -> dict[str, Any]:
    body = await _body(request)
    return await _run(state.transactions.savepoint, principal, transaction_id, body)


@router.post("/api/transactions/{transaction_id}/savepoints/{name}/rollback",
             response_model=None)
def rollback_to(transaction_id: str, name: str, principal: CurrentPrincipal,
                state: State) -> dict[str, Any]:
    return state.transactions.rollback_to(principal, transaction_id, name)


@router.delete("/api/transactions/{transaction_id}/savepoints/{name}", response_model=None)
def release(transaction_id: str, name: str, principal: CurrentPrincipal,
            state: State) -> dict[str, Any]:
    return state.transactions.release(principal, transaction_id, name)


@router.get("/api/collections/{collection}")
def get_collection(collection: str, principal: CurrentPrincipal,
                   state: State) -> dict[str, Any]:
    # ekoDB's client reads a schema here too (CollectionMetadata); no analytics are kept
    return {"collection": state.datastore.get_schema(principal, collection), "analytics": {}}


_OUTSIDE = [Depends(outside_transactions)]  # schemas are not staged: refuse a transaction_id


@router.get("/api/schemas/{collection}", dependencies=_OUTSIDE)
def get_schema(collection: str, principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    return state.datastore.get_schema(principal, collection)


@router.put("/api/schemas/{collection}", openapi_extra=_constraints_doc(),
            dependencies=_OUTSIDE)
async def update_schema(collection: str, request: Request, principal: CurrentPrincipal,
                        state: State) -> dict[str, Any]:
    body = await _body(request)
    return await _run(state.datastore.update_schema, principal, collection, body)
