"""Atomic field actions, upsert, count, exists, distinct (issue 15 item 3). Thin: rules live
in :mod:`mock_server.actions` and :mod:`mock_server.datastore`.

| method | path | level | body → answer |
|---|---|---|---|
| PUT | ``/api/update/{c}/{id}/action/{action}`` | write | ``{"field", "value"?}`` → record |
| PUT | ``/api/update/sequence/{c}/{id}`` | write | ``[[action, field, value], ...]`` → record |
| PUT | ``/api/upsert/{c}/{id}`` | write | record → ``{"record", "created"}`` |
| POST | ``/api/count/{c}`` | read | ``{"filter"?}`` → ``{"count"}`` |
| GET | ``/api/exists/{c}/{id}`` | read | → ``{"exists"}`` |
| POST | ``/api/distinct/{c}/{field}`` | read | ``{"filter"?}`` → ``{"field", "values", "count"}`` |

Action and sequence routes are ekoDB's; upsert, count and exists are ours (ekoDB's client
does them client-side, read-then-write or by downloading ids).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from mock_server.http_json import check_content_type, openapi_body, parse_json_bytes
from mock_server.openapi import RECORD_BODY, FieldPathText, FilterDoc
from mock_server.routes.compat import outside_transactions
from mock_server.routes.deps import CurrentPrincipal, State

router = APIRouter(tags=["datastore"], dependencies=[Depends(outside_transactions)])

_RECORD_DOC = RECORD_BODY
_SEQUENCE_DOC: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "array", "maxItems": 100, "items": {
        "type": "array", "minItems": 2, "maxItems": 3}}}}}}


class _ActionDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: FieldPathText
    value: Any = None


class _FilterDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    filter: FilterDoc = None


async def _body(request: Request, *, optional: bool = False) -> Any:
    raw = await request.body()
    if optional and not raw.strip():
        return None
    check_content_type(request.headers.get("content-type"))
    return parse_json_bytes(raw, max_depth=request.app.state.ekodb.config.max_json_depth)


@router.put("/api/update/{collection}/{record_id}/action/{action}",
            openapi_extra=openapi_body(_ActionDoc))
async def action(collection: str, record_id: str, action: str, request: Request,
                 principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    body = await _body(request)
    return await run_in_threadpool(state.actions.action, principal, collection, record_id,
                                   action, body)


@router.put("/api/update/sequence/{collection}/{record_id}", openapi_extra=_SEQUENCE_DOC)
async def sequence(collection: str, record_id: str, request: Request,
                   principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    body = await _body(request)
    return await run_in_threadpool(state.actions.sequence, principal, collection, record_id,
                                   body)


@router.put("/api/upsert/{collection}/{record_id}", openapi_extra=_RECORD_DOC)
async def upsert(collection: str, record_id: str, request: Request,
                 principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    body = await _body(request)
    record, created = await run_in_threadpool(state.actions.upsert, principal, collection,
                                              record_id, body)
    return {"record": record, "created": created}


@router.post("/api/count/{collection}", openapi_extra=openapi_body(_FilterDoc))
async def count(collection: str, request: Request, principal: CurrentPrincipal,
                state: State) -> dict[str, Any]:
    body = await _body(request, optional=True)
    return {"count": await run_in_threadpool(state.actions.count, principal, collection, body)}


@router.get("/api/exists/{collection}/{record_id}")
def exists(collection: str, record_id: str, principal: CurrentPrincipal,
           state: State) -> dict[str, Any]:
    return {"exists": state.actions.exists(principal, collection, record_id)}


@router.post("/api/distinct/{collection}/{field}", openapi_extra=openapi_body(_FilterDoc))
async def distinct(collection: str, field: str, request: Request,
                   principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    body = await _body(request, optional=True)
    values = await run_in_threadpool(state.actions.distinct, principal, collection, field,
                                     body)
    return {"field": field, "values": values, "count": len(values)}
