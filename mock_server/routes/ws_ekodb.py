"""ekoDB's realtime messages on ``/api/ws``, beside our DataBus ops (see ``routes/ws.py``).

Frames with a string ``"type"`` (and no ``"op"``) come here. Client → server:
``{"type":"Subscribe","messageId"?,"payload":{"collection","filter_field"?,"filter_value"?}}``
and ``{"type":"Unsubscribe","messageId"?,"payload":{"collection"}}``. Server → client:
``{"type":"Success","messageId","payload":{"data":{…},"messageId"}}``,
``{"type":"Error","code":<http status>,"message","messageId"}`` and
``{"type":"MutationNotification","payload":{"collection","event","record_ids","records"?,
"timestamp"}}`` projected through the key's current field rules. One pump task per socket
drains every feed it holds; the socket's own auth re-check (ws.py) closes it on revocation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

from mock_server.errors import ApiError
from mock_server.permissions import PermissionDenied, Scope
from mock_server.realtime import Feed, Realtime, notifications

MAX_FEEDS = 32
WAIT = 1.0

Send = Callable[[dict[str, Any]], Awaitable[None]]


class EkoDBFeeds:
    """The ekoDB subscriptions of one WebSocket connection."""

    def __init__(self, realtime: Realtime, send: Send, principal: Callable[[], Any]) -> None:
        self._realtime = realtime
        self._send = send
        self._principal = principal
        self._feeds: dict[str, Feed] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def handle(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        mid = frame.get("messageId")
        mid = mid if isinstance(mid, str) and len(mid) <= 128 else None
        payload = frame.get("payload")
        try:
            if not isinstance(payload, dict):
                raise ApiError(400, "bad_request", f"{kind[:32]} needs a payload object")
            if kind == "Subscribe":
                data = await self._subscribe(payload)
            elif kind == "Unsubscribe":
                data = self._unsubscribe(payload)
            else:
                raise ApiError(400, "bad_request",
                               f"unsupported message type {kind[:32]!r}; this server "
                               "supports Subscribe and Unsubscribe (and the op protocol)")
        except ApiError as exc:
            await self._send({"type": "Error", "code": exc.status, "message": exc.message,
                              "messageId": mid})
            return
        await self._send({"type": "Success", "messageId": mid,
                          "payload": {"data": data, "messageId": mid}})

    async def _subscribe(self, payload: dict[str, Any]) -> dict[str, Any]:
        collection = payload.get("collection")
        if isinstance(collection, str) and collection in self._feeds:
            raise ApiError(409, "conflict", f"already subscribed to {collection[:64]!r}")
        if len(self._feeds) >= MAX_FEEDS:
            raise ApiError(400, "bad_request", f"at most {MAX_FEEDS} subscriptions per socket")
        loop = asyncio.get_running_loop()
        principal = self._principal()
        feed = await run_in_threadpool(lambda: self._realtime.open(
            principal, collection, payload.get("filter_field"), payload.get("filter_value"),
            loop=loop))
        self._feeds[feed.collection] = feed
        self._tasks[feed.collection] = asyncio.create_task(self._pump(feed))
        return feed.describe()

    def _unsubscribe(self, payload: dict[str, Any]) -> dict[str, Any]:
        collection = payload.get("collection")
        feed = self._feeds.get(collection) if isinstance(collection, str) else None
        if feed is None:
            raise ApiError(404, "not_found", "no subscription to that collection here")
        self._drop(feed)
        return {"unsubscribed": feed.collection, "subscription_id": feed.id}

    def _drop(self, feed: Feed) -> None:
        self._feeds.pop(feed.collection, None)
        self._realtime.close(feed)
        task = self._tasks.pop(feed.collection, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _pump(self, feed: Feed) -> None:
        while True:
            changes = await feed.next(WAIT)
            if feed.overflowed:
                await self._fail(feed, 503, "notifications were dropped: this subscriber "
                                 "fell behind; resubscribe and resynchronise with find")
                return
            if changes is None:
                continue
            scope: Scope = self._principal().scope
            try:
                payloads = notifications(scope, feed, changes)
            except PermissionDenied as exc:
                await self._fail(feed, 403, str(exc))
                return
            for payload in payloads:
                await self._send({"type": "MutationNotification", "payload": payload})

    async def _fail(self, feed: Feed, code: int, message: str) -> None:
        self._drop(feed)
        await self._send({"type": "Error", "code": code, "message": message,
                          "messageId": None, "subscription_id": feed.id})

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for feed in list(self._feeds.values()):
            self._drop(feed)
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)
