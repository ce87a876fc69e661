"""BlobStore routes (SPEC §4.4). Thin: the rules live in :mod:`mock_server.blobs`.

| method | path | level on ``blob:<t>`` | answer |
|---|---|---|---|
| GET | ``/api/blob/_tables`` | read (only readable tables listed) | list of tables |
| PUT | ``/api/blob/_tables/{t}`` | admin | body ``{"attributes": {...}}`` (optional) → 201 table |
| GET | ``/api/blob/_tables/{t}`` | read | table |
| DELETE | ``/api/blob/_tables/{t}`` | admin | drops the table and all its blobs |
| GET | ``/api/blob/{t}?limit=&from=`` | read | metadata list sorted by id, after ``from`` |
| PUT | ``/api/blob/{t}/{id}`` | write | streamed body → metadata |
| GET / HEAD | ``/api/blob/{t}/{id}`` | read | bytes (``Range`` → 206) / headers only |
| DELETE | ``/api/blob/{t}/{id}`` | write | ``{"deleted": true}`` |

PUT headers: ``Content-Type`` (stored as given), ``X-Blob-Attributes`` (JSON object, ASCII,
≤ 8 KiB), ``Content-MD5`` (base64) and/or ``X-Checksum-Sha256`` (hex): a mismatch → 400
``checksum_mismatch`` and nothing changes. GET/HEAD answer with ``X-Blob-Length``,
``X-Blob-Md5``, ``X-Blob-Sha256``, ``X-Blob-Timestamp``, ``X-Blob-Content-Type`` (as
stored), ``X-Blob-Attributes``, ``ETag`` and ``Content-Type`` from the safe list only.

The upload route is ``async`` so it can read ``request.stream()``; it hands batches of
about 1 MiB to a worker thread, so the event loop never encrypts or writes and memory stays
flat however large the body is.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from mock_server.blobs import (
    MAX_LIST,
    BlobMeta,
    BlobStore,
    check_blob_id,
    check_table,
    parse_attributes,
    parse_md5,
    parse_range,
    parse_sha256,
    served_content_type,
)
from mock_server.errors import ApiError, payload_too_large
from mock_server.http_json import openapi_body, parse_model
from mock_server.openapi import errors
from mock_server.permissions import Level
from mock_server.routes.deps import CurrentPrincipal, State
from mock_server.state import AppState

router = APIRouter()

Table = Annotated[str, Path(min_length=1, max_length=128)]
BlobId = Annotated[str, Path(min_length=1, max_length=255)]
#: Bytes handed to the writer thread at a time.
BATCH = 1024 * 1024


class CreateTableRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attributes: dict[str, Any] = Field(default_factory=dict)


def _store(state: AppState) -> BlobStore:
    if state.blobs is None:
        raise ApiError(503, "service_unavailable", "the blob store is not open")
    return state.blobs


def _resource(table: str) -> str:
    return "blob:" + check_table(table)


def _audit(state: AppState, principal: Any, operation: str, table: str,
           target: str | None = None) -> Any:
    return lambda: state.audit.record(operation, key_id=principal.key_id,
                                      label=principal.label, resource=f"blob:{table}",
                                      target_id=target)


# ------------------------------------------------------------------------------ tables


@router.get("/api/blob/_tables")
def list_tables(principal: CurrentPrincipal, state: State) -> list[dict[str, Any]]:
    tables = _store(state).list_tables()
    return [t.to_json() for t in tables
            if principal.scope.allows("blob:" + t.name, Level.READ)]


@router.put("/api/blob/_tables/{table}", status_code=201,
            openapi_extra=openapi_body(CreateTableRequest))
async def create_table(table: Table, request: Request, principal: CurrentPrincipal,
                       state: State) -> JSONResponse:
    principal.require(_resource(table), Level.ADMIN)
    raw = await request.body()
    attributes: dict[str, Any] = {}
    if raw.strip():
        body = parse_model(CreateTableRequest, raw, request.headers.get("content-type"),
                           max_depth=state.config.max_json_depth)
        attributes = body.attributes
    made = await run_in_threadpool(_store(state).create_table, table, attributes,
                                   _audit(state, principal, "blob.table_created", table))
    return JSONResponse(made.to_json(), status_code=201)


@router.get("/api/blob/_tables/{table}")
def get_table(table: Table, principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    principal.require(_resource(table), Level.READ)
    return _store(state).get_table(table).to_json()


@router.delete("/api/blob/_tables/{table}", response_model=None)
def drop_table(table: Table, principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    principal.require(_resource(table), Level.ADMIN)
    _store(state).drop_table(table, _audit(state, principal, "blob.table_dropped", table))
    return {"dropped": True, "name": table}


# ------------------------------------------------------------------------------ blobs


@router.get("/api/blob/{table}")
def list_blobs(
    table: Table,
    principal: CurrentPrincipal,
    state: State,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100,
    from_: Annotated[str | None, Query(alias="from", max_length=255)] = None,
) -> list[dict[str, Any]]:
    principal.require(_resource(table), Level.READ)
    return [m.to_json() for m in _store(state).list_blobs(table, from_, limit)]


@router.put("/api/blob/{table}/{blob_id}")
async def put_blob(table: Table, blob_id: BlobId, request: Request,
                   principal: CurrentPrincipal, state: State) -> Response:
    principal.require(_resource(table), Level.WRITE)
    check_blob_id(blob_id)
    store = _store(state)
    headers = request.headers
    declared = headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() \
            and int(declared) > store.max_bytes:
        raise payload_too_large(store.max_bytes)
    upload = await run_in_threadpool(
        store.begin_upload, table, blob_id,
        content_type=headers.get("content-type"),
        attributes=parse_attributes(headers.get("x-blob-attributes"),
                                    max_depth=state.config.max_json_depth),
        md5=parse_md5(headers.get("content-md5")),
        sha256=parse_sha256(headers.get("x-checksum-sha256")),
    )
    try:
        batch: list[bytes] = []
        size = 0
        async for piece in request.stream():
            if piece:
                batch.append(piece)
                size += len(piece)
            if size >= BATCH:
                await run_in_threadpool(upload.write, batch)
                batch, size = [], 0
        if batch:
            await run_in_threadpool(upload.write, batch)
        meta = await run_in_threadpool(
            upload.finish, _audit(state, principal, "blob.put", table, blob_id))
    except ClientDisconnect:
        upload.abort()
        # Nobody is listening; 408 is never stored for Idempotency-Key replay, so a retry
        # of this upload with the same key runs for real.
        raise ApiError(408, "client_disconnected", "the upload was interrupted; nothing "
                       "was stored") from None
    except BaseException:
        upload.abort()
        raise
    return JSONResponse(meta.to_json())


def _meta_headers(meta: BlobMeta) -> dict[str, str]:
    return {
        "X-Blob-Length": str(meta.length),
        "X-Blob-Md5": meta.md5,
        "X-Blob-Sha256": meta.sha256,
        "X-Blob-Timestamp": meta.to_json()["timestamp"],
        "X-Blob-Content-Type": meta.content_type,
        "X-Blob-Attributes": json.dumps(meta.attributes, separators=(",", ":")),
        "ETag": f'"{meta.sha256}"',
        "Accept-Ranges": "bytes",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-store",
    }


_BYTES = {"*/*": {"schema": {"type": "string", "format": "binary"}}}


@router.get("/api/blob/{table}/{blob_id}", responses={
    200: {"description": "The blob, with its own content type", "content": _BYTES},
    206: {"description": "The requested range (Content-Range)", "content": _BYTES},
    **errors(416)})
def get_blob(table: Table, blob_id: BlobId, request: Request, principal: CurrentPrincipal,
             state: State) -> Response:
    principal.require(_resource(table), Level.READ)
    blob = _store(state).open(table, blob_id)
    meta = blob.meta
    try:
        wanted = parse_range(request.headers.get("range"), meta.length)
        first, last = wanted if wanted is not None else (0, meta.length - 1)
        blob.verify_start(first)  # fail closed before any header is sent
    except BaseException:
        blob.close()
        raise
    headers = _meta_headers(meta)
    headers["Content-Length"] = str(last - first + 1)
    status = 200
    if wanted is not None:
        status = 206
        headers["Content-Range"] = f"bytes {first}-{last}/{meta.length}"
    # A chunk that fails to authenticate mid-stream raises inside the iterator: the server
    # aborts the connection, so the client sees a broken response, never wrong bytes.
    return StreamingResponse(blob.iter_range(first, last), status_code=status,
                             headers=headers, media_type=served_content_type(meta.content_type))


# Not in /openapi.json: a HEAD answer has no body, so generic sweeps of the described
# routes could not read its error envelope; the route is documented above.
@router.head("/api/blob/{table}/{blob_id}", include_in_schema=False)
def head_blob(table: Table, blob_id: BlobId, principal: CurrentPrincipal,
              state: State) -> Response:
    principal.require(_resource(table), Level.READ)
    meta = _store(state).metadata(table, blob_id)
    headers = _meta_headers(meta)
    headers["Content-Length"] = str(meta.length)
    return Response(status_code=200, headers=headers,
                    media_type=served_content_type(meta.content_type))


@router.delete("/api/blob/{table}/{blob_id}", response_model=None)
def delete_blob(table: Table, blob_id: BlobId, principal: CurrentPrincipal,
                state: State) -> dict[str, Any]:
    principal.require(_resource(table), Level.WRITE)
    _store(state).delete(table, blob_id, _audit(state, principal, "blob.deleted", table,
                                                 blob_id))
    return {"deleted": True}
