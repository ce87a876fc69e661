"""KV store routes (issue 15 item 1, ekoDB's wire shapes). Thin: rules live in
:mod:`mock_server.kv`.

| method | path | level | body → answer |
|---|---|---|---|
| POST | ``/api/kv/set/{key}`` | write | ``{"value", "ttl"?}`` → ``{"key", "expires_at"}`` |
| GET | ``/api/kv/get/{key}`` | read | → ``{"value"}`` (404 when absent or expired) |
| DELETE | ``/api/kv/delete/{key}`` | write | → ``{"key", "deleted"}`` |
| POST | ``/api/kv/batch/get`` | read | ``{"keys"}`` → ``[{"key", "value"}]`` (found only) |
| POST | ``/api/kv/batch/set`` | write | ``{"keys", "values", "ttl"?}`` → ``[[key, true]]`` |
| DELETE | ``/api/kv/batch/delete`` | write | ``{"keys"}`` → ``[[key, existed]]`` |
| POST | ``/api/kv/find`` | read | ``{"pattern"?, "include_expired"?}`` → ``[{"key", "value",
"expires_at"}]`` |
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from mock_server.http_json import check_content_type, openapi_body, parse_json_bytes
from mock_server.kv import MAX_KV_BATCH, MAX_PATTERN_LENGTH
from mock_server.openapi import KvKeyText, TtlDoc
from mock_server.routes.compat import outside_transactions
from mock_server.routes.deps import CurrentPrincipal, State

# KV writes are applied at once: a ``?transaction_id=`` is refused, never silently ignored
router = APIRouter(tags=["kv"], dependencies=[Depends(outside_transactions)])


# Documentation-only models: bodies are parsed by the domain, which reports errors precisely.
class _SetDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: Any
    ttl: TtlDoc = None


class _KeysDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keys: list[KvKeyText] = Field(max_length=MAX_KV_BATCH)


class _BatchSetDoc(_KeysDoc):
    """``values[i]`` is stored under ``keys[i]``: the arrays are as long as each other."""

    values: list[Any] = Field(max_length=MAX_KV_BATCH)
    ttl: TtlDoc = None


class _FindDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pattern: str | None = Field(default=None, min_length=1, max_length=MAX_PATTERN_LENGTH)
    include_expired: bool | None = None


async def _body(request: Request) -> Any:
    check_content_type(request.headers.get("content-type"))
    raw = await request.body()
    return parse_json_bytes(raw, max_depth=request.app.state.ekodb.config.max_json_depth)


@router.post("/api/kv/set/{key}", openapi_extra=openapi_body(_SetDoc))
async def kv_set(key: str, request: Request, principal: CurrentPrincipal,
                 state: State) -> dict[str, Any]:
    body = await _body(request)
    return await run_in_threadpool(state.kv.set, principal, key, body)


@router.get("/api/kv/get/{key}")
def kv_get(key: str, principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    return state.kv.get(principal, key)


@router.delete("/api/kv/delete/{key}", response_model=None)
def kv_delete(key: str, principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    return state.kv.delete(principal, key)


@router.post("/api/kv/batch/get", openapi_extra=openapi_body(_KeysDoc))
async def kv_batch_get(request: Request, principal: CurrentPrincipal,
                       state: State) -> list[dict[str, Any]]:
    body = await _body(request)
    return await run_in_threadpool(state.kv.batch_get, principal, body)


@router.post("/api/kv/batch/set", openapi_extra=openapi_body(_BatchSetDoc))
async def kv_batch_set(request: Request, principal: CurrentPrincipal,
                       state: State) -> list[list[Any]]:
    body = await _body(request)
    return await run_in_threadpool(state.kv.batch_set, principal, body)


@router.delete("/api/kv/batch/delete", openapi_extra=openapi_body(_KeysDoc))
async def kv_batch_delete(request: Request, principal: CurrentPrincipal,
                          state: State) -> list[list[Any]]:
    body = await _body(request)
    return await run_in_threadpool(state.kv.batch_delete, principal, body)


@router.post("/api/kv/find", openapi_extra=openapi_body(_FindDoc))
async def kv_find(request: Request, principal: CurrentPrincipal,
                  state: State) -> list[dict[str, Any]]:
    body = await _body(request)
    return await run_in_threadpool(state.kv.find, principal, body)
