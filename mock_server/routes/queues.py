"""Queue ``/api/queue/...`` and DedupQueue ``/api/dedupq/...`` routes (SPEC §4.4).

Thin: the rules live in :mod:`mock_server.queues`. Both prefixes share these handlers; the
router is built once per kind.

| method | path | level | body → answer |
|---|---|---|---|
| POST | ``/{q}/send`` | write | any JSON value → ``{"id"}`` |
| POST | ``/{q}/sendbatch`` | write | JSON list (≤ 1000) → ``{"ids"}`` |
| POST | ``/{q}/poll?claim_ttl&limit&wait`` | write | → ``[{"id", "payload"}]`` (claimed);
``wait`` (≤ 20 s) holds an empty poll until a message arrives or the wait ends |
| POST | ``/{q}/renew`` | write | ``{"ids", "claim_ttl"}`` → ``{"renewed", "stale"}`` |
| POST | ``/{q}/ack`` | write | ``{"ids"}`` → ``{"acked", "stale"}`` |
| GET | ``/{q}/peek?limit`` | read | → ``[{"id", "payload"}]`` (claims nothing) |
| GET | ``/{q}/size`` · ``/{q}/claimcount`` | read | → ``{"size"}`` · ``{"count"}`` |
| POST | ``/{q}/unclaimall`` | write | → ``{"unclaimed"}`` |
| DELETE | ``/{q}`` | write | purge → ``{"purged"}`` |
| POST | ``/_move?from&to`` | write on both | → ``{"moved"}`` |

The levels come from ``mock_server.permissions.QUEUE_OPERATIONS`` (shared with the DataBus).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from starlette.concurrency import run_in_threadpool

from mock_server.auth import Principal
from mock_server.http_json import check_content_type, openapi_body, parse_json_bytes
from mock_server.longpoll import MAX_WAIT, long_poll
from mock_server.queues import MAX_BATCH, MAX_CLAIM_TTL, MAX_IDS, MAX_POLL, Kind, Queues
from mock_server.routes.deps import CurrentPrincipal, State, json_body, run_write
from mock_server.state import AppState

Name = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")]
ClaimTtl = Annotated[float, Query(gt=0, le=MAX_CLAIM_TTL)]
Limit = Annotated[int, Query(ge=1, le=MAX_POLL)]
Wait = Annotated[float, Query(ge=0, le=MAX_WAIT)]


#: A message id as the server mints it (queues._ID; documented, checked by the queue: one
#: it did not mint for this queue is refused as unknown_id).
_TOKEN = r"[A-Za-z0-9_\-]"
MessageId = Annotated[str, WithJsonSchema({
    "type": "string", "pattern": rf"^{_TOKEN}{{16}}\.({_TOKEN}{{12}})?\.{_TOKEN}{{16}}$",
    "description": "an id this queue returned"})]


class IdsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[MessageId] = Field(max_length=MAX_IDS)


class RenewRequest(IdsRequest):
    claim_ttl: float = Field(default=30, ge=0, le=MAX_CLAIM_TTL)


def _queues(state: AppState) -> Queues:
    return state.queues


async def _raw_json(request: Request) -> Any:
    check_content_type(request.headers.get("content-type"))
    raw = await request.body()
    return parse_json_bytes(raw, max_depth=request.app.state.ekodb.config.max_json_depth)


def _audit(state: AppState, principal: Principal, operation: str, resource: str,
           **details: Any) -> None:
    state.audit.record(operation, key_id=principal.key_id, label=principal.label,
                       resource=resource, details=details)


def build_router(kind: Kind) -> APIRouter:
    """The routes of one kind, under ``/api/<kind>``."""
    router = APIRouter(prefix=f"/api/{kind}", tags=[kind])
    def body_doc(schema: dict[str, Any]) -> dict[str, Any]:
        return {"requestBody": {"required": True,
                                "content": {"application/json": {"schema": schema}}}}

    @router.post("/_move", response_model=None)
    def move(principal: CurrentPrincipal, state: State,
             source: Annotated[str, Query(alias="from", min_length=1, max_length=128)],
             dest: Annotated[str, Query(alias="to", min_length=1, max_length=128)],
             ) -> dict[str, Any]:
        """Move every message of queue ``from`` to queue ``to`` (two different queues)."""
        moved = _queues(state).move(principal.scope, kind, source, dest)
        _audit(state, principal, f"{kind}.moved", f"{kind}:{source}", to=dest, moved=moved)
        state.poll_wakeups.wake(f"{kind}:{dest}")
        return {"moved": moved}

    @router.post("/{name}/send", openapi_extra=body_doc({}))
    async def send(name: Name, request: Request, principal: CurrentPrincipal,
                   state: State) -> dict[str, Any]:
        message = await _raw_json(request)
        msg_id = await run_write(request, _queues(state).send, principal.scope, kind, name,
                                 message)
        state.poll_wakeups.wake(f"{kind}:{name}")
        return {"id": msg_id}

    @router.post("/{name}/sendbatch",
                 openapi_extra=body_doc({"type": "array", "maxItems": MAX_BATCH}))
    async def send_batch(name: Name, request: Request, principal: CurrentPrincipal,
                         state: State) -> dict[str, Any]:
        messages = await _raw_json(request)
        ids = await run_in_threadpool(_queues(state).send_batch, principal.scope, kind, name,
                                      messages)
        state.poll_wakeups.wake(f"{kind}:{name}")
        return {"ids": ids}

    @router.post("/{name}/poll", response_model=None)
    async def poll(name: Name, principal: CurrentPrincipal, state: State,
                   claim_ttl: ClaimTtl = 30, limit: Limit = 10,
                   wait: Wait = 0) -> list[dict[str, Any]]:
        def fetch() -> Any:
            return run_in_threadpool(_queues(state).poll, principal.scope, kind, name,
                                     claim_ttl=claim_ttl, limit=limit)

        if not wait:
            messages: list[dict[str, Any]] = await fetch()
            return messages
        return await long_poll(
            fetch, lambda got: not got,
            lambda waiter: state.poll_wakeups.add(f"{kind}:{name}", waiter), wait,
            state.poll_wakeups)

    @router.post("/{name}/renew", openapi_extra=openapi_body(RenewRequest))
    async def renew(name: Name, request: Request, principal: CurrentPrincipal,
                    state: State) -> dict[str, Any]:
        body = await json_body(request, RenewRequest)

        def run() -> tuple[list[str], list[str]]:
            return _queues(state).renew(principal.scope, kind, name, body.ids,
                                        claim_ttl=body.claim_ttl)

        renewed, stale = await run_in_threadpool(run)
        if body.claim_ttl == 0:  # given back: a held poll may take them now
            state.poll_wakeups.wake(f"{kind}:{name}")
        return {"renewed": renewed, "stale": stale}

    @router.post("/{name}/ack", openapi_extra=openapi_body(IdsRequest))
    async def ack(name: Name, request: Request, principal: CurrentPrincipal,
                  state: State) -> dict[str, Any]:
        body = await json_body(request, IdsRequest)
        acked, stale = await run_in_threadpool(_queues(state).ack, principal.scope, kind, name,
                                               body.ids)
        return {"acked": acked, "stale": stale}

    @router.get("/{name}/peek")
    def peek(name: Name, principal: CurrentPrincipal, state: State,
             limit: Limit = 10) -> list[dict[str, Any]]:
        return _queues(state).peek(principal.scope, kind, name, limit=limit)

    @router.get("/{name}/size")
    def size(name: Name, principal: CurrentPrincipal, state: State) -> dict[str, int]:
        return {"size": _queues(state).size(principal.scope, kind, name)}

    @router.get("/{name}/claimcount")
    def claim_count(name: Name, principal: CurrentPrincipal, state: State) -> dict[str, int]:
        return {"count": _queues(state).claim_count(principal.scope, kind, name)}

    @router.post("/{name}/unclaimall", response_model=None)
    def unclaim_all(name: Name, principal: CurrentPrincipal, state: State) -> dict[str, int]:
        count = _queues(state).unclaim_all(principal.scope, kind, name)
        _audit(state, principal, f"{kind}.unclaimed_all", f"{kind}:{name}", unclaimed=count)
        state.poll_wakeups.wake(f"{kind}:{name}")
        return {"unclaimed": count}

    @router.delete("/{name}", response_model=None)
    def purge(name: Name, principal: CurrentPrincipal, state: State) -> dict[str, int]:
        count = _queues(state).purge(principal.scope, kind, name)
        _audit(state, principal, f"{kind}.purged", f"{kind}:{name}", purged=count)
        return {"purged": count}

    return router


queue_router = build_router("queue")
dedupq_router = build_router("dedupq")
