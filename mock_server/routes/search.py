"""Search and ekoDB change-feed routes. Thin: the rules live in :mod:`mock_server.search`
and :mod:`mock_server.realtime`.

| method | path | level | body → answer |
|---|---|---|---|
| POST | ``/api/search/{c}`` | read | ekoDB ``SearchQuery`` → ``{"results", "total",
"execution_time_ms"}`` |
| GET | ``/api/subscribe/{c}?filter_field&filter_value`` | read | → ``text/event-stream``:
``subscribed``, then one ``mutation`` event per ekoDB ``MutationNotification`` |

The SSE stream sends a ``: keepalive`` comment every HEARTBEAT s, re-checks the key (by id,
not its token) every AUTH_RECHECK s: a deleted or rotated key, a lost READ or a refused
address end the stream with an ``error`` event, while an edit that keeps those (a relabel)
or the token's expiry does not. It ends with ``error`` ``overflow`` if the consumer falls
too far behind. A key holds at most ``ws_max_sockets_per_key`` open feeds (counted apart from
its WebSockets); past that a subscribe is refused with 429 ``too_many_feeds``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from starlette.concurrency import run_in_threadpool

from mock_server.errors import ApiError
from mock_server.http_json import check_content_type, openapi_body, parse_json_bytes
from mock_server.openapi import FIELD_PATH, FieldPathsText, FieldPathText, FilterDoc
from mock_server.permissions import Level, PermissionDenied
from mock_server.realtime import Feed, notifications
from mock_server.routes.compat import outside_transactions
from mock_server.routes.deps import CurrentPrincipal, State
from mock_server.search import (
    LANGUAGES,
    MAX_EDIT,
    MAX_LIMIT,
    MAX_QUERY_CHARS,
    MAX_VECTOR_DIM,
    METRICS,
)

# search and feeds see committed data only: a ``?transaction_id=`` is refused (400), so a
# caller never mistakes a search that misses its staged writes for one inside the transaction
router = APIRouter(tags=["search"], dependencies=[Depends(outside_transactions)])

HEARTBEAT = 5.0
AUTH_RECHECK = 1.0


_Paths = Annotated[list[FieldPathText], Field(max_length=256)] | FieldPathsText | None
_WEIGHT = r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+){0,15}: *(1000|[0-9]{1,3}(\.[0-9]{1,6})?)"
#: ``{field: weight}`` or ``"field:weight,..."``, weights in [0, 1000]
_Weights = Annotated[dict[str, float] | str | None, WithJsonSchema({"anyOf": [
    {"type": "object", "propertyNames": FIELD_PATH, "maxProperties": 256,
     "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1000}},
    {"type": "string", "maxLength": 8192, "pattern": rf"^ *({_WEIGHT} *(, *{_WEIGHT} *)*)?$"},
    {"type": "null"}]})]
_Score = Annotated[float, Field(ge=-1e12, le=1e12)] | None


class _SearchDoc(BaseModel):
    """Documentation only: the domain parses the body and names every problem (search.
    parse_request). A query with a word (letters or digits), a vector, or both."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "anyOf": [{"required": ["query"], "properties": {"query": {
                      "type": "string", "pattern": "[A-Za-z0-9]"}}},
                  {"required": ["vector"], "properties": {"vector": {"type": "array"}}}],
        "not": {"anyOf": [
            {"required": ["filter", "filters"]},
            {"required": ["text_weight", "vector_weight"], "properties": {
                "text_weight": {"const": 0}, "vector_weight": {"const": 0}}}]}})
    #: at most MAX_QUERY_TERMS distinct words
    query: str | None = Field(default=None, max_length=MAX_QUERY_CHARS)
    fields: _Paths = None
    weights: _Weights = None
    language: Literal[LANGUAGES] | None = None  # type: ignore[valid-type]
    case_sensitive: bool | None = None
    fuzzy: bool | None = None
    max_edit_distance: int | None = Field(default=None, ge=0, le=MAX_EDIT)
    enable_stemming: bool | None = None
    boost_exact: bool | None = None
    min_score: _Score = None
    limit: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    vector: list[float] | None = Field(default=None, min_length=1, max_length=MAX_VECTOR_DIM)
    vector_field: FieldPathText | None = None
    vector_metric: Literal[tuple(METRICS)] | None = None  # type: ignore[valid-type]
    vector_k: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    vector_threshold: _Score = None
    text_weight: float | None = Field(default=None, ge=0, le=1)
    vector_weight: float | None = Field(default=None, ge=0, le=1)
    select_fields: _Paths = None
    exclude_fields: _Paths = None
    filters: FilterDoc = None
    filter: FilterDoc = None
    bypass_cache: bool | None = None
    bypass_ripple: bool | None = None


@router.post("/api/search/{collection}", openapi_extra=openapi_body(_SearchDoc))
async def search(collection: str, request: Request, principal: CurrentPrincipal,
                 state: State) -> dict[str, Any]:
    check_content_type(request.headers.get("content-type"))
    body = parse_json_bytes(await request.body(),
                            max_depth=request.app.state.ekodb.config.max_json_depth)
    return await run_in_threadpool(state.search.search, principal, collection, body)


def _sse(event: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


FilterParam = Annotated[str | None, Query(max_length=1024)]


@router.get("/api/subscribe/{collection}", response_model=None)
async def subscribe(collection: str, request: Request, principal: CurrentPrincipal,
                    state: State, filter_field: FilterParam = None,
                    filter_value: FilterParam = None) -> StreamingResponse:
    loop = asyncio.get_running_loop()
    if not state.sse_feeds.acquire(principal.key_id):
        raise ApiError(429, "too_many_feeds",
                       f"too many open change feeds for this key (at most "
                       f"{state.sse_feeds.cap}); close one first")
    try:
        feed = await run_in_threadpool(lambda: state.realtime.open(
            principal, collection, filter_field, filter_value, loop=loop))
    except BaseException:
        state.sse_feeds.release(principal.key_id)
        raise
    ip = state.client_ip_of(request.scope)
    secret = await run_in_threadpool(state.authenticator.keys.secret_digest, principal.key_id)

    async def stream() -> AsyncIterator[bytes]:
        scope, seq = principal.scope, 0
        last_auth = last_sent = time.monotonic()
        try:
            yield _sse("subscribed", feed.describe())
            while True:
                changes = await feed.next(min(HEARTBEAT, AUTH_RECHECK))
                now = time.monotonic()
                if now - last_auth >= AUTH_RECHECK:
                    last_auth = now
                    try:  # by key id: a relabel or the token's expiry keeps the feed
                        scope = await run_in_threadpool(
                            state.authenticator.feed_scope, principal.key_id, secret, ip)
                        scope.require(feed.collection, Level.READ)
                    except ApiError as exc:
                        yield _sse("error", {"code": exc.code, "message": exc.message})
                        return
                    except PermissionDenied as exc:
                        yield _sse("error", {"code": "forbidden", "message": str(exc)})
                        return
                if feed.overflowed:
                    yield _sse("error", _overflow(feed))
                    return
                if changes is None:
                    if now - last_sent >= HEARTBEAT:
                        last_sent = now
                        yield b": keepalive\n\n"
                    continue
                try:
                    payloads = notifications(scope, feed, changes)
                except PermissionDenied as exc:
                    yield _sse("error", {"code": "forbidden", "message": str(exc)})
                    return
                for payload in payloads:
                    seq += 1
                    last_sent = now
                    yield _sse("mutation", payload, seq)
        finally:
            state.realtime.close(feed)
            state.sse_feeds.release(principal.key_id)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _overflow(feed: Feed) -> dict[str, str]:
    return {"code": "overflow",
            "message": f"this subscriber fell more than the server's buffer behind on "
                       f"{feed.collection!r}; notifications were dropped. Resubscribe and "
                       "resynchronise with find (the DataBus is the durable feed)"}
