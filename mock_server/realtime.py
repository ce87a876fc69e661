"""ekoDB-style change feeds: ``GET /api/subscribe/{c}`` (SSE) and ``Subscribe`` on ``/api/ws``.

Framework-free. :class:`Realtime` listens to the DataStore's ``committed`` hook and hands each
commit's changes to the open :class:`Feed` objects of that collection (a bounded asyncio
queue per feed, filled from the committing thread with ``call_soon_threadsafe``). The
transport (SSE route, WebSocket handler) turns them into ekoDB ``MutationNotification``
payloads with :func:`notifications`, projecting every record through the subscriber's
*current* field rules, so a key narrowed or revoked mid-stream sees the narrower view at
once (or loses the stream).

These feeds are live and best-effort, by design: they cover writes committed by this server
process, are not persisted, and a feed that falls ``MAX_PENDING`` commits behind is closed
with an ``overflow`` error (the consumer resynchronises with ``find``). The DataBus
(``/api/bus``) stays the durable, claim-based feed that survives restarts and works across
processes. Filters (ekoDB's ``filter_field`` / ``filter_value``) match inserts and updates
on the record's current value; deletes carry no content and reach every feed of the
collection.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Final, Protocol

from mock_server.changes import Change, ChangeFeed
from mock_server.errors import bad_request, forbidden
from mock_server.permissions import Level, PermissionDenied, PermissionSpecError, Scope
from mock_server.permissions import validate_resource_name as _validate_name
from mock_server.query import QueryError, get_path, validate_field_path

__all__ = ["MAX_PENDING", "Feed", "Realtime", "notifications"]

MAX_PENDING: Final = 1000
MAX_FILTER_VALUE: Final = 1024


class Collections(Protocol):
    def require_collection(self, collection: str) -> None: ...


class Caller(Protocol):
    @property
    def scope(self) -> Scope: ...


def check_collection(name: object) -> str:
    """A bare collection name (400 otherwise), as the DataStore validates it."""
    if isinstance(name, str) and ":" in name:
        raise bad_request("collection names may not contain ':'", "validation_error")
    try:
        return _validate_name(name)
    except PermissionSpecError as exc:
        raise bad_request(str(exc), "validation_error") from None


class Feed:
    """One open subscription: collection, optional filter, and a queue of committed changes."""

    def __init__(self, collection: str, filter_field: str | None, filter_value: str | None,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.id = "sub_" + secrets.token_hex(8)
        self.collection = collection
        self.filter_field = filter_field
        self.filter_value = filter_value
        self.overflowed = False
        self._loop = loop
        self._queue: asyncio.Queue[Sequence[Change]] = asyncio.Queue(MAX_PENDING)

    def offer(self, changes: Sequence[Change]) -> None:
        """Called from any thread after a commit."""
        self._loop.call_soon_threadsafe(self._put, changes)

    def _put(self, changes: Sequence[Change]) -> None:
        try:
            self._queue.put_nowait(changes)
        except asyncio.QueueFull:
            self.overflowed = True

    async def next(self, timeout: float) -> Sequence[Change] | None:
        """The next commit's changes for this collection, or None after ``timeout`` s."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
            return None

    def describe(self) -> dict[str, Any]:
        return {"subscription_id": self.id, "collection": self.collection,
                "filter_field": self.filter_field, "filter_value": self.filter_value}


class Realtime:
    """Fan-out of committed DataStore changes to open feeds (per server process)."""

    def __init__(self, changes: ChangeFeed, collections: Collections) -> None:
        self._collections = collections
        self._feeds: dict[str, set[Feed]] = {}
        self._lock = threading.Lock()
        changes.listen(committed=self._committed)

    def open(self, caller: Caller, collection: object, filter_field: object = None,
             filter_value: object = None, *, loop: asyncio.AbstractEventLoop) -> Feed:
        """Check the request (400/403/404 as find would) and register a feed."""
        name = check_collection(collection)
        try:
            caller.scope.require(name, Level.READ)
        except PermissionDenied as exc:
            raise forbidden(str(exc)) from None
        if (filter_field is None) != (filter_value is None):
            raise bad_request("filter_field and filter_value go together", "validation_error")
        if filter_field is not None:
            try:
                validate_field_path(filter_field, where="filter_field")
            except QueryError as exc:
                raise bad_request(str(exc), "validation_error") from None
            assert isinstance(filter_field, str)
            if not caller.scope.readable(name, filter_field):
                raise forbidden(f"this API key may not filter on field {filter_field!r} "
                                f"of {name!r}")
            if not isinstance(filter_value, str) or len(filter_value) > MAX_FILTER_VALUE:
                raise bad_request(f"filter_value must be a string of at most "
                                  f"{MAX_FILTER_VALUE} characters", "validation_error")
        self._collections.require_collection(name)
        feed = Feed(name, filter_field, filter_value, loop)  # type: ignore[arg-type]
        with self._lock:
            self._feeds.setdefault(name, set()).add(feed)
        return feed

    def close(self, feed: Feed) -> None:
        with self._lock:
            feeds = self._feeds.get(feed.collection)
            if feeds is not None:
                feeds.discard(feed)
                if not feeds:
                    del self._feeds[feed.collection]

    def open_count(self) -> int:
        with self._lock:
            return sum(len(f) for f in self._feeds.values())

    def _committed(self, changes: Sequence[Change]) -> None:
        by_collection: dict[str, list[Change]] = {}
        for change in changes:
            by_collection.setdefault(change.collection, []).append(change)
        with self._lock:
            targets = [(feed, by_collection[name]) for name in by_collection
                       for feed in self._feeds.get(name, ())]
        for feed, batch in targets:
            try:
                feed.offer(batch)
            except RuntimeError:  # its event loop is closed: the connection is gone
                self.close(feed)


def _timestamp(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).isoformat().replace("+00:00", "Z")


def _matches(feed: Feed, record: Mapping[str, Any]) -> bool:
    if feed.filter_field is None:
        return True
    found, value = get_path(record, feed.filter_field)
    if not found:
        return False
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text == feed.filter_value


def notifications(scope: Scope, feed: Feed, changes: Sequence[Change]
                  ) -> list[dict[str, Any]]:
    """ekoDB ``MutationNotification`` payloads for one commit, as ``scope`` may see them.

    Consecutive changes of the same kind are grouped (a batch insert is one notification
    with several ``record_ids``). Raises PermissionDenied if the key lost READ.
    """
    scope.require(feed.collection, Level.READ)
    out: list[dict[str, Any]] = []
    for change in changes:
        if change.operation != "delete" and (
                change.record is None or not _matches(feed, change.record)):
            continue
        last = out[-1] if out else None
        if last is None or last["event"] != change.operation:
            last = {"collection": feed.collection, "event": change.operation,
                    "record_ids": [], "timestamp": _timestamp(change.time)}
            if change.operation != "delete":
                last["records"] = []
            out.append(last)
        last["record_ids"].append(change.record_id)
        if change.record is not None and change.operation != "delete":
            last["records"].append(scope.project(feed.collection, change.record))
    return out

