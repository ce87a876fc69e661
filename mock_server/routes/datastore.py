"""DataStore routes (SPEC §4.3). Thin: every rule lives in :mod:`mock_server.datastore`.

| method | path | level | body → answer |
|---|---|---|---|
| GET | ``/api/collections`` | any | → ``{"collections": [readable names]}`` |
| POST | ``/api/collections/{c}`` | admin | → ``{"collection": c}`` (409 if it exists) |
| DELETE | ``/api/collections/{c}`` | admin | → ``{"dropped": c}`` |
| POST | ``/api/insert/{c}`` | write | record → stored record (projected, with ``id``) |
| GET | ``/api/find/{c}/{id}?select_fields&exclude_fields`` | read | → record (projected) |
| POST | ``/api/find/{c}`` | read | ``{filter, sort, limit, skip, cursor, select_fields,
exclude_fields}`` → ``[records]``; headers ``X-Has-More: true|false`` and, when true,
``X-Next-Cursor`` (send it back as ``cursor`` for the next page) |
| PUT | ``/api/update/{c}/{id}`` | write | changes (deep merge) → whole record (projected) |
| DELETE | ``/api/delete/{c}/{id}`` | write | → ``{"deleted": id}`` |
| POST | ``/api/batch/insert/{c}`` | write | ``{"inserts": [{"data"}]}`` → ``{"successful",
"failed"}`` |
| PUT | ``/api/batch/update/{c}`` | write | ``{"updates": [{"id", "data"}]}`` → same |
| DELETE | ``/api/batch/delete/{c}`` | write (+read by filter) | ``{"deletes": [{"id"}]}`` or
``{"filter"}`` → same |

Routes with a body are ``async`` only to read it; the domain call runs in the threadpool.
Find keeps answering a plain array (ekoDB's shape); paging facts ride in headers, so clients
that ignore them see no change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from mock_server.datastore import MAX_BATCH, split_fields
from mock_server.http_json import check_content_type, openapi_body, parse_json_bytes
from mock_server.routes.deps import CurrentPrincipal, State

router = APIRouter(tags=["datastore"])

T = TypeVar("T")
Fields = Annotated[str | None, Query(max_length=8192)]
_RECORD_DOC: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "additionalProperties": True}}}}}


# Documentation-only models: bodies are parsed by the domain, which reports errors precisely.
class _FindDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    filter: dict[str, Any] | None = None
    sort: list[dict[str, Any]] | None = None
    limit: int | None = Field(default=None, ge=1, le=1000)
    skip: int | None = Field(default=None, ge=0)
    cursor: str | None = Field(default=None, max_length=4096)
    select_fields: list[str] | None = None
    exclude_fields: list[str] | None = None


class _InsertItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: dict[str, Any]


class _UpdateItem(_InsertItem):
    id: str


class _DeleteItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str


class _BatchInsertDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inserts: list[_InsertItem] = Field(max_length=MAX_BATCH)


class _BatchUpdateDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    updates: list[_UpdateItem] = Field(max_length=MAX_BATCH)


class _BatchDeleteDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    deletes: list[_DeleteItem] | None = Field(default=None, max_length=MAX_BATCH)
    filter: dict[str, Any] | None = None


async def _body(request: Request) -> Any:
    """Strict JSON (415 without application/json, 400 when empty or malformed)."""
    check_content_type(request.headers.get("content-type"))
    raw = await request.body()
    return parse_json_bytes(raw, max_depth=request.app.state.ekodb.config.max_json_depth)


async def _run(fn: Callable[..., T], *args: Any) -> T:
    return await run_in_threadpool(fn, *args)


@router.get("/api/collections")
def list_collections(principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    return {"collections": state.datastore.list_collections(principal)}


@router.post("/api/collections/{collection}", response_model=None)
def create_collection(collection: str, principal: CurrentPrincipal,
                      state: State) -> dict[str, Any]:
    return {"collection": state.datastore.create_collection(principal, collection)}


@router.delete("/api/collections/{collection}", response_model=None)
def drop_collection(collection: str, principal: CurrentPrincipal,
                    state: State) -> dict[str, Any]:
    return {"dropped": state.datastore.drop_collection(principal, collection)}


@router.post("/api/insert/{collection}", openapi_extra=_RECORD_DOC)
async def insert(collection: str, request: Request, principal: CurrentPrincipal,
                 state: State) -> dict[str, Any]:
    body = await _body(request)
    return await _run(state.datastore.insert, principal, collection, body)


@router.get("/api/find/{collection}/{record_id}")
def get(collection: str, record_id: str, principal: CurrentPrincipal, state: State,
        select_fields: Fields = None, exclude_fields: Fields = None) -> dict[str, Any]:
    return state.datastore.get(principal, collection, record_id,
                               select_fields=split_fields(select_fields, "select_fields"),
                               exclude_fields=split_fields(exclude_fields, "exclude_fields"))


@router.post("/api/find/{collection}", openapi_extra=openapi_body(_FindDoc))
async def find(collection: str, request: Request, response: Response,
               principal: CurrentPrincipal, state: State) -> list[dict[str, Any]]:
    body = await _body(request)
    page = await _run(state.datastore.find_page, principal, collection, body)
    response.headers["X-Has-More"] = "true" if page.has_more else "false"
    if page.next_cursor is not None:
        response.headers["X-Next-Cursor"] = page.next_cursor
    return page.records


@router.put("/api/update/{collection}/{record_id}", openapi_extra=_RECORD_DOC)
async def update(collection: str, record_id: str, request: Request,
                 principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    body = await _body(request)
    return await _run(state.datastore.update, principal, collection, record_id, body)


@router.delete("/api/delete/{collection}/{record_id}", response_model=None)
def delete(collection: str, record_id: str, principal: CurrentPrincipal,
           state: State) -> dict[str, Any]:
    return {"deleted": state.datastore.delete(principal, collection, record_id)}


@router.post("/api/batch/insert/{collection}", openapi_extra=openapi_body(_BatchInsertDoc))
async def batch_insert(collection: str, request: Request, principal: CurrentPrincipal,
                       state: State) -> dict[str, Any]:
    body = await _body(request)
    return await _run(state.datastore.batch_insert, principal, collection, body)


@router.put("/api/batch/update/{collection}", openapi_extra=openapi_body(_BatchUpdateDoc))
async def batch_update(collection: str, request: Request, principal: CurrentPrincipal,
                       state: State) -> dict[str, Any]:
    body = await _body(request)
    return await _run(state.datastore.batch_update, principal, collection, body)


@router.delete("/api/batch/delete/{collection}", openapi_extra=openapi_body(_BatchDeleteDoc))
async def batch_delete(collection: str, request: Request, principal: CurrentPrincipal,
                       state: State) -> dict[str, Any]:
    body = await _body(request)
    return await _run(state.datastore.batch_delete, principal, collection, body)
