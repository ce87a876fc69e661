"""DataStore routes (SPEC §4.3). Thin: every rule lives in :mod:`mock_server.datastore`.

| method | path | level | body → answer |
|---|---|---|---|
| GET | ``/api/collections`` | any | → ``{"collections": [readable names]}`` |
| POST | ``/api/collections/{c}`` | admin | → ``{"collection": c}`` (409 if it exists) |
| DELETE | ``/api/collections/{c}`` | admin | → ``{"dropped": c}`` |
| POST | ``/api/insert/{c}?ttl`` | write | record (a ``ttl`` key: its expiry) → stored record |
| GET | ``/api/find/{c}/{id}?select_fields&exclude_fields`` | read | → record (projected) |
| POST | ``/api/find/{c}`` | read | ``{filter, sort, limit, skip, cursor, select_fields,
exclude_fields}`` → ``[records]``; headers ``X-Has-More: true|false`` and, when true,
``X-Next-Cursor`` (send it back as ``cursor`` for the next page) |
| PUT | ``/api/update/{c}/{id}`` | write | changes (deep merge) → whole record (projected) |
| DELETE | ``/api/delete/{c}/{id}`` | delete | → ``{"deleted": id}`` |
| POST | ``/api/batch/insert/{c}`` | write | ``{"inserts": [{"data"}]}`` → ``{"successful",
"failed"}`` |
| PUT | ``/api/batch/update/{c}`` | write | ``{"updates": [{"id", "data"}]}`` → same |
| DELETE | ``/api/batch/delete/{c}`` | delete (+read by filter) | ``{"deletes": [{"id"}]}`` or
``{"filter"}`` → same |

"delete" is write on every field: the admin level, or write through a rule without field
restrictions (``Scope.may_delete``).

Routes with a body are ``async`` only to read it; the domain call runs in the threadpool,
except a ``get`` of a small record, a ``find`` whose page reads little (no sort, no index,
a few dozen records) and a small insert with an Idempotency-Key whose write lock is free:
those run on the event loop, cheaper than the hop to a worker thread and back
(``INLINE_GET_BYTES``, ``INLINE_FIND_BYTES``, ``deps.run_write``).

Every record route joins a client transaction with ``?transaction_id=`` (and the find and
batch bodies with a top-level ``"transaction_id"`` field, ``null`` meaning none); the
operation then runs through :meth:`mock_server.transactions.Transactions.within`.
``POST /api/collections/{c}`` takes an optional ekoDB schema body (``{"fields": ...}``).

Find keeps answering a plain array (ekoDB's shape); paging facts ride in headers, so clients
that ignore them see no change.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, RootModel, WithJsonSchema
from starlette.concurrency import run_in_threadpool

from mock_server.auth import Principal
from mock_server.datastore import (
    MAX_BATCH,
    MAX_FIELD_LIST,
    FindPage,
    TooLargeInline,
    split_fields,
)
from mock_server.errors import bad_request
from mock_server.http_json import check_content_type, openapi_body, parse_json_bytes
from mock_server.openapi import (
    RECORD_BODY,
    FieldPathText,
    FilterDoc,
    SortDoc,
    TransactionIdText,
    body_of,
    component,
)
from mock_server.query import MAX_SKIP
from mock_server.routes.compat import client_options, outside_transactions
from mock_server.routes.deps import CurrentPrincipal, State, run_write
from mock_server.state import AppState

router = APIRouter(tags=["datastore"], dependencies=[Depends(client_options)])

T = TypeVar("T")
Fields = Annotated[str | None, Query(max_length=8192)]
#: The transaction an operation joins (routes without this parameter accept and ignore
#: one, undocumented: see routes.compat.client_options).
TxId = Annotated[str | None, Query(max_length=128)]
_RECORD_DOC = RECORD_BODY


# Documentation-only models: bodies are parsed by the domain, which reports errors precisely.
class _FindDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    filter: FilterDoc = None
    sort: SortDoc = None
    limit: int | None = Field(default=None, ge=1, le=1000)
    skip: int | None = Field(default=None, ge=0, le=MAX_SKIP)
    cursor: str | None = Field(default=None, max_length=4096, description=(
        "a next_cursor this server returned for the same sort (not with skip)"))
    select_fields: list[FieldPathText] | None = Field(default=None, max_length=MAX_FIELD_LIST)
    exclude_fields: list[FieldPathText] | None = Field(default=None, max_length=MAX_FIELD_LIST)
    # sent by the official ekoDB client (mock_server.compat)
    bypass_cache: bool | None = None
    bypass_ripple: bool | None = None
    transaction_id: TransactionIdText = None
    join: None = None


class _InsertItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # any object: an item whose data is not a valid record (or whose id is not found) is
    # reported in the answer's "failed", the rest are applied
    data: dict[str, Any] = Field(description="a record; an invalid one is reported in "
                                             "the answer's failed items")
    bypass_ripple: bool | None = None


class _UpdateItem(_InsertItem):
    id: str


class _DeleteItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    bypass_ripple: bool | None = None


class _BatchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # sent by ekoDB's examples at the top of a batch body (mock_server.compat)
    bypass_ripple: bool | None = None
    transaction_id: TransactionIdText = None


class _BatchInsertDoc(_BatchOptions):
    inserts: list[_InsertItem] = Field(max_length=MAX_BATCH)


class _BatchUpdateDoc(_BatchOptions):
    updates: list[_UpdateItem] = Field(max_length=MAX_BATCH)


class _BatchDeleteByIds(_BatchOptions):
    deletes: list[_DeleteItem] = Field(max_length=MAX_BATCH)


class _BatchDeleteByFilter(_BatchOptions):
    filter: Annotated[dict[str, Any], WithJsonSchema(component("Filter"))]


class _BatchDeleteDoc(RootModel[_BatchDeleteByIds | _BatchDeleteByFilter]):
    """By ids or by filter, one of the two."""


async def _body(request: Request) -> Any:
    """Strict JSON (415 without application/json, 400 when empty or malformed)."""
    check_content_type(request.headers.get("content-type"))
    raw = await request.body()
    return parse_json_bytes(raw, max_depth=request.app.state.ekodb.config.max_json_depth)


async def _run(fn: Callable[..., T], *args: Any) -> T:
    return await run_in_threadpool(fn, *args)


def _tx_of(param: str | None, body: Any = None) -> str | None:
    """The transaction an operation joins: the query parameter or the body's field."""
    given = body.pop("transaction_id", None) if isinstance(body, dict) else None
    if given is not None and param is not None and given != param:
        raise bad_request("transaction_id differs between the query and the body",
                          "validation_error")
    if given is not None and not isinstance(given, str):
        raise bad_request("transaction_id must be a string", "validation_error")
    return param if param is not None else given


def _in(state: AppState, principal: Principal, txid: str | None, fn: Callable[..., T],
        *args: Any, **kwargs: Any) -> T:
    """Run a DataStore operation, inside the client transaction when one is named."""
    if txid is None:
        return fn(principal, *args, **kwargs)
    return state.transactions.within(principal, txid, fn, principal, *args, **kwargs)


@router.get("/api/collections")
def list_collections(principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    return {"collections": state.datastore.list_collections(principal)}


@router.post("/api/collections/{collection}", response_model=None,
             dependencies=[Depends(outside_transactions)])
async def create_collection(collection: str, request: Request, principal: CurrentPrincipal,
                            state: State) -> dict[str, Any]:
    schema = await _body(request) if await request.body() else None
    return {"collection": await _run(state.datastore.create_collection, principal, collection,
                                     schema)}


@router.delete("/api/collections/{collection}", response_model=None,
               dependencies=[Depends(outside_transactions)])
def drop_collection(collection: str, principal: CurrentPrincipal,
                    state: State) -> dict[str, Any]:
    return {"dropped": state.datastore.drop_collection(principal, collection)}


@router.post("/api/insert/{collection}", openapi_extra=body_of(component("NewRecord")))
async def insert(collection: str, request: Request, principal: CurrentPrincipal,
                 state: State, transaction_id: TxId = None,
                 ttl: Annotated[str | None, Query(max_length=32, description=(
                     "the record's expiry; not with transaction_id nor a body ttl"))] = None,
                 ) -> dict[str, Any]:
    body = await _body(request)
    txid = _tx_of(transaction_id)
    if txid is None:
        # a "ttl" (body, ekoDB's shape, or query) schedules the record's expiry
        return await run_write(request, state.record_ttl.insert, principal, collection, body,
                               ttl)
    if ttl is not None or (isinstance(body, dict) and "ttl" in body):
        raise bad_request("a record TTL cannot be set inside a transaction: insert it, "
                          "then set its TTL after commit", "validation_error")
    return await _run(_in, state, principal, txid, state.datastore.insert, collection, body)


#: A record up to this size (sealed) is read on the event loop; larger ones, and reads
#: inside a client transaction, in the threadpool.
INLINE_GET_BYTES = 64 * 1024
#: A find that reads at most this many sealed bytes without a sort runs on the event loop
#: (DataStore.find_page's inline_limit); one that would read more, in the threadpool.
INLINE_FIND_BYTES = 64 * 1024


@router.get("/api/find/{collection}/{record_id}")
async def get(collection: str, record_id: str, principal: CurrentPrincipal, state: State,
              select_fields: Fields = None, exclude_fields: Fields = None,
              transaction_id: TxId = None) -> dict[str, Any]:
    # A get by id is one primary-key read (WAL: never waits for writers) and one small
    # decrypt: on the loop it costs less than the hop to a worker thread and back, which
    # was about a third of the request's CPU.
    txid = _tx_of(transaction_id)
    select = split_fields(select_fields, "select_fields")
    exclude = split_fields(exclude_fields, "exclude_fields")
    if txid is None:
        try:
            return state.datastore.get(principal, collection, record_id, select_fields=select,
                                       exclude_fields=exclude, inline_limit=INLINE_GET_BYTES)
        except TooLargeInline:
            pass
    return await _run(partial(_in, state, principal, txid, state.datastore.get, collection,
                              record_id, select_fields=select, exclude_fields=exclude))


@router.post("/api/find/{collection}", openapi_extra=openapi_body(_FindDoc))
async def find(collection: str, request: Request, response: Response,
               principal: CurrentPrincipal, state: State,
               transaction_id: TxId = None) -> list[dict[str, Any]]:
    body = await _body(request)
    txid = _tx_of(transaction_id, body)
    inline: FindPage | None = None
    if txid is None:  # a page that reads little is answered on the loop, as a get is
        with suppress(TooLargeInline):
            inline = state.datastore.find_page(principal, collection, body,
                                               inline_limit=INLINE_FIND_BYTES)
    page: FindPage = inline if inline is not None else await _run(
        _in, state, principal, txid, state.datastore.find_page, collection, body)
    response.headers["X-Has-More"] = "true" if page.has_more else "false"
    if page.next_cursor is not None:
        response.headers["X-Next-Cursor"] = page.next_cursor
    return page.records


@router.put("/api/update/{collection}/{record_id}", openapi_extra=_RECORD_DOC)
async def update(collection: str, record_id: str, request: Request,
                 principal: CurrentPrincipal, state: State,
                 transaction_id: TxId = None) -> dict[str, Any]:
    body = await _body(request)
    return await _run(_in, state, principal, _tx_of(transaction_id), state.datastore.update,
                      collection, record_id, body)


@router.delete("/api/delete/{collection}/{record_id}", response_model=None)
def delete(collection: str, record_id: str, principal: CurrentPrincipal,
           state: State, transaction_id: TxId = None) -> dict[str, Any]:
    return {"deleted": _in(state, principal, _tx_of(transaction_id), state.datastore.delete,
                           collection, record_id)}


@router.post("/api/batch/insert/{collection}", openapi_extra=openapi_body(_BatchInsertDoc))
async def batch_insert(collection: str, request: Request, principal: CurrentPrincipal,
                       state: State, transaction_id: TxId = None) -> dict[str, Any]:
    body = await _body(request)
    txid = _tx_of(transaction_id, body)
    return await _run(_in, state, principal, txid, state.datastore.batch_insert, collection, body)


@router.put("/api/batch/update/{collection}", openapi_extra=openapi_body(_BatchUpdateDoc))
async def batch_update(collection: str, request: Request, principal: CurrentPrincipal,
                       state: State, transaction_id: TxId = None) -> dict[str, Any]:
    body = await _body(request)
    txid = _tx_of(transaction_id, body)
    return await _run(_in, state, principal, txid, state.datastore.batch_update, collection, body)


@router.delete("/api/batch/delete/{collection}", openapi_extra=openapi_body(_BatchDeleteDoc))
async def batch_delete(collection: str, request: Request, principal: CurrentPrincipal,
                       state: State, transaction_id: TxId = None) -> dict[str, Any]:
    body = await _body(request)
    txid = _tx_of(transaction_id, body)
    return await _run(_in, state, principal, txid, state.datastore.batch_delete, collection, body)
