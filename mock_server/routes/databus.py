"""DataBus routes ``/api/bus/...`` (SPEC §4.4): thin wrappers over mock_server.databus."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from starlette.concurrency import run_in_threadpool

from mock_server.databus import MAX_TTL
from mock_server.http_json import openapi_body
from mock_server.longpoll import MAX_WAIT, long_poll
from mock_server.openapi import FilterDoc
from mock_server.routes.deps import CurrentPrincipal, State, json_body

router = APIRouter()

Name = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")]


#: A collection name or '*' pattern (databus._collections)
_Pattern = Annotated[str, WithJsonSchema(
    {"type": "string", "pattern": r"^[A-Za-z0-9_.*\-]+$", "minLength": 1, "maxLength": 128})]
#: Seconds, 1 s to 30 days (databus.MAX_TTL)
_Ttl = Annotated[float, WithJsonSchema({"type": "number", "minimum": 1, "maximum": MAX_TTL})]


class SubscribeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    collections: list[_Pattern] = Field(min_length=1, max_length=64)
    filter: FilterDoc = None
    ttl: _Ttl = 86400
    event_ttl: _Ttl = 86400


class KeysRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # the bus checks both (databus._keys, _number): documented, not checked twice
    keys: list[Annotated[str, WithJsonSchema({"type": "string", "minLength": 1,
                                              "maxLength": 128})]] = Field(max_length=1000)
    claim_ttl: Annotated[float | None, WithJsonSchema({
        "anyOf": [{"type": "number", "minimum": 0.001, "maximum": 86400}, {"type": "null"}]})
    ] = None


@router.put("/api/bus/subscriptions/{name}", openapi_extra=openapi_body(SubscribeRequest))
async def subscribe(name: Name, request: Request, principal: CurrentPrincipal,
                    state: State) -> dict[str, Any]:
    body = await json_body(request, SubscribeRequest)

    def run() -> dict[str, Any]:
        sub = state.bus.subscribe(principal.key_id, principal.scope, name,
                                  collections=body.collections, filter=body.filter,
                                  ttl=body.ttl, event_ttl=body.event_ttl)
        state.audit.record("bus.subscribed", key_id=principal.key_id, label=principal.label,
                           resource=f"bus:{name}")
        return sub.to_json()

    return await run_in_threadpool(run)


@router.delete("/api/bus/subscriptions/{name}", response_model=None)
def unsubscribe(name: Name, principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    state.bus.unsubscribe(principal.key_id, principal.scope, name)
    state.audit.record("bus.unsubscribed", key_id=principal.key_id, label=principal.label,
                       resource=f"bus:{name}")
    return {"deleted": True, "name": name}


@router.get("/api/bus/subscriptions")
def list_subscriptions(principal: CurrentPrincipal, state: State) -> list[dict[str, Any]]:
    return [s.to_json() for s in state.bus.list_owned(principal.key_id)]


@router.get("/api/bus/subscriptions/{name}")
def get_subscription(name: Name, principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    return state.bus.get(principal.key_id, principal.scope, name).to_json()


@router.post("/api/bus/subscriptions/{name}/poll", response_model=None)
async def poll(name: Name, principal: CurrentPrincipal, state: State,
               claim_ttl: Annotated[float, Query(ge=0.001, le=86400)] = 30,
               limit: Annotated[int, Query(ge=1, le=1000)] = 10,
               wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 0) -> dict[str, Any]:
    """``wait`` (≤ 20 s) holds an empty poll until an event arrives or the wait ends."""
    def fetch() -> Any:
        return run_in_threadpool(state.bus.poll, principal.key_id, principal.scope, name,
                                 claim_ttl=claim_ttl, limit=limit)

    got: tuple[list[dict[str, Any]], bool] = (
        await long_poll(fetch, lambda r: not r[0], state.bus.add_waiter, wait,
                        state.poll_wakeups) if wait
        else await fetch())
    events, more = got
    return {"events": events, "has_more": more}


@router.post("/api/bus/subscriptions/{name}/ack", openapi_extra=openapi_body(KeysRequest))
async def ack(name: Name, request: Request, principal: CurrentPrincipal,
              state: State) -> dict[str, Any]:
    body = await json_body(request, KeysRequest)
    done = await run_in_threadpool(state.bus.ack, principal.key_id, principal.scope, name,
                                   body.keys)
    return {"acked": done}


@router.post("/api/bus/subscriptions/{name}/renew", openapi_extra=openapi_body(KeysRequest))
async def renew(name: Name, request: Request, principal: CurrentPrincipal,
                state: State) -> dict[str, Any]:
    body = await json_body(request, KeysRequest)
    ttl = 30.0 if body.claim_ttl is None else body.claim_ttl

    def run() -> list[str]:
        return state.bus.renew(principal.key_id, principal.scope, name, body.keys,
                               claim_ttl=ttl)

    return {"renewed": await run_in_threadpool(run)}


@router.get("/api/bus/subscriptions/{name}/peek")
def peek(name: Name, principal: CurrentPrincipal, state: State,
         limit: Annotated[int, Query(ge=1, le=1000)] = 10) -> dict[str, Any]:
    return {"events": state.bus.peek(principal.key_id, principal.scope, name, limit=limit)}


@router.get("/api/bus/subscriptions/{name}/size")
def size(name: Name, principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    return {"size": state.bus.size(principal.key_id, principal.scope, name)}
