"""DataBus: subscriptions over DataStore changes, with claims (EmoDB semantics; framework-free).

Events are written by a ChangeFeed ``in_transaction`` listener, inside the DataStore's write
transaction, so a record change and its events commit (or vanish) together. Each event row
stores the record's FULL content, encrypted (AAD = subscription uid + event key); projection
through the subscriber's field rules happens at delivery with the scope loaded then, so a
narrowed key never sees what it lost, and a lost collection READ drops the event unseen.

Decisions:
- Merging: a change to a record that already has a pending, unclaimed event in a
  subscription REPLACES that event (new key, new position, latest content). A consumer holding
  a claimed event is never surprised: claimed events are not merged into. An old key that is
  acked after replacement acks nothing, so the newest state is always delivered.
- Deletes carry no content, so a record filter cannot be evaluated: a delete is delivered to
  every subscription whose collection selection matches (it reveals only the opaque id).
- Names are per key: a subscription is (owner key, name), so two keys may both have a ``jobs``
  and neither can see, block or squat the other's; a name the caller does not own is 404,
  exactly like a free one (no existence oracle). The caller needs the level
  :data:`~mock_server.permissions.QUEUE_OPERATIONS` gives the operation on ``bus:<name>``:
  READ to look (get, peek, size), WRITE to consume or change (subscribe, unsubscribe, poll,
  ack, renew, and a WebSocket push, which polls). An expired subscription is gone: its
  events are deleted before the name is reused.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mock_server.changes import Change, ChangeFeed
from mock_server.crypto import KeyRing, aad
from mock_server.errors import ApiError, bad_request, forbidden, not_found
from mock_server.permissions import (
    Level,
    PermissionDenied,
    PermissionSpecError,
    Scope,
    pattern_matches,
    validate_resource_name,
)
from mock_server.query import Filter, QueryError, parse_filter
from mock_server.storage import Storage, register_schema

# ``bus_subscriptions`` (names global) is the table of data dirs made before names became per
# key: its rows move into ``bus_subs`` at every open (none after the first).
register_schema(
    """
    CREATE TABLE IF NOT EXISTS bus_subscriptions (
        name TEXT PRIMARY KEY,
        uid TEXT NOT NULL UNIQUE,
        owner TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        ttl REAL NOT NULL,
        event_ttl REAL NOT NULL,
        spec BLOB NOT NULL
    );
    CREATE TABLE IF NOT EXISTS bus_subs (
        owner TEXT NOT NULL,
        name TEXT NOT NULL,
        uid TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        ttl REAL NOT NULL,
        event_ttl REAL NOT NULL,
        spec BLOB NOT NULL,
        PRIMARY KEY (owner, name)
    );
    BEGIN IMMEDIATE;
    INSERT OR IGNORE INTO bus_subs(owner, name, uid, created_at, expires_at, ttl, event_ttl,
        spec) SELECT owner, name, uid, created_at, expires_at, ttl, event_ttl, spec
        FROM bus_subscriptions;
    DELETE FROM bus_subscriptions;
    COMMIT;
    CREATE TABLE IF NOT EXISTS bus_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        sub_uid TEXT NOT NULL,
        event_key TEXT NOT NULL,
        merge_key BLOB NOT NULL,
        claimed_until REAL NOT NULL DEFAULT 0,
        claimed_by TEXT NOT NULL DEFAULT '',
        expires_at REAL NOT NULL,
        payload BLOB NOT NULL
    );
    CREATE UNIQUE INDEX IF NOT EXISTS bus_events_key ON bus_events(sub_uid, event_key);
    CREATE INDEX IF NOT EXISTS bus_events_merge ON bus_events(sub_uid, merge_key);
    CREATE INDEX IF NOT EXISTS bus_events_order ON bus_events(sub_uid, seq);
    """
)

MAX_COLLECTIONS = 64
MAX_TTL = 30 * 24 * 3600
MAX_CLAIM_TTL = 24 * 3600
MAX_POLL = 1000
MAX_KEYS = 1000
SWEEP_INTERVAL = 5.0
_SERVICE = "databus"


@dataclass(frozen=True)
class Subscription:
    """One subscription row, its spec decrypted and parsed."""

    name: str
    uid: str
    owner: str
    created_at: float
    expires_at: float
    ttl: float
    event_ttl: float
    collections: tuple[str, ...]
    filter: Filter | None

    def selects(self, collection: str) -> bool:
        return any(pattern_matches(p, collection) for p in self.collections)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "collections": list(self.collections),
            "filter": self.filter.to_wire() if self.filter is not None else None,
            "ttl": self.ttl,
            "event_ttl": self.event_ttl,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
        }


def _iso(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _number(value: object, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise bad_request(f"{what} must be a number between {low:g} and {high:g}",
                          "validation_error")
    return float(value)


def validate_name(name: object) -> str:
    """A subscription name: 1-128 of letters, digits, '_', '.', '-' (no prefix, no '*')."""
    if not isinstance(name, str) or ":" in name:
        raise bad_request("subscription name may only contain letters, digits, '_', '.', '-'",
                          "validation_error")
    try:
        return validate_resource_name(name)
    except PermissionSpecError as exc:
        raise bad_request(f"subscription name: {exc}", "validation_error") from None


def _collections(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, (list, tuple)) or not 1 <= len(raw) <= MAX_COLLECTIONS:
        raise bad_request(f"collections must be a list of 1-{MAX_COLLECTIONS} names or patterns",
                          "validation_error")
    out: list[str] = []
    for item in raw:
        if not isinstance(item, str) or ":" in item:
            raise bad_request("collections: entries are collection names or '*' patterns",
                              "validation_error")
        try:
            validate_resource_name(item, allow_wildcards=True)
        except PermissionSpecError as exc:
            raise bad_request(f"collections: {exc}", "validation_error") from None
        if item not in out:
            out.append(item)
    return tuple(out)


def _visible(scope: Scope, sub: Subscription, collection: str) -> bool:
    """May the subscriber see events of this collection (READ, and every filter field)?"""
    if not scope.allows(collection, Level.READ):
        return False
    return sub.filter is None or all(scope.readable(collection, f) for f in sub.filter.fields())


Waiter = Callable[[], None]


class DataBus:
    """Subscriptions, events, claims; plus in-process wake-ups for WebSocket pushers."""

    def __init__(self, storage: Storage, keyring: KeyRing, changes: ChangeFeed | None = None,
                 *, clock: Callable[[], float] = time.time) -> None:
        self._storage = storage
        self._keyring = keyring
        self._clock = clock
        self._spec_cache: dict[str, tuple[bytes, tuple[str, ...], Filter | None]] = {}
        self._lock = threading.Lock()
        self._waiters: dict[int, Waiter] = {}
        self._next_waiter = 0
        self._last_sweep = 0.0
        if changes is not None:
            changes.listen(in_transaction=self.on_changes, committed=self.on_committed)

    # ------------------------------------------------------------------ rows and specs

    def _spec_aad(self, name: str, uid: str) -> bytes:
        return aad("bus-sub", name, uid)

    def _row(self, row: Sequence[Any]) -> Subscription:
        name, uid, owner, created, expires, ttl, event_ttl, spec = row
        blob = bytes(spec)
        with self._lock:
            cached = self._spec_cache.get(uid)
        if cached is not None and cached[0] == blob:
            collections, flt = cached[1], cached[2]
        else:
            doc = json.loads(self._keyring.decrypt(_SERVICE, "", blob, self._spec_aad(name, uid)))
            collections = tuple(doc["collections"])
            flt = parse_filter(doc["filter"])
            with self._lock:
                if len(self._spec_cache) > 4096:
                    self._spec_cache.clear()
                self._spec_cache[uid] = (blob, collections, flt)
        return Subscription(name, uid, owner, created, expires, ttl, event_ttl, collections, flt)

    _COLUMNS: str = "name, uid, owner, created_at, expires_at, ttl, event_ttl, spec"

    def _load(self, conn: sqlite3.Connection, owner: str, name: str) -> Subscription | None:
        row = conn.execute(
            f"SELECT {self._COLUMNS} FROM bus_subs WHERE owner = ? AND name = ?",  # noqa: S608
            (owner, name),
        ).fetchone()
        return None if row is None else self._row(row)

    def _drop(self, conn: sqlite3.Connection, sub: Subscription) -> None:
        conn.execute("DELETE FROM bus_events WHERE sub_uid = ?", (sub.uid,))
        conn.execute("DELETE FROM bus_subs WHERE uid = ?", (sub.uid,))

    def _owned(self, conn: sqlite3.Connection, owner: str, scope: Scope, name: str,
               operation: str) -> Subscription:
        """``owner``'s live subscription ``name`` once it may do ``operation``; else 400/403
        (the level) or 404 (none of its own by that name, whoever else has one)."""
        validate_name(name)
        self._require_bus(scope, name, operation)
        sub = self._load(conn, owner, name)
        if sub is None or sub.expires_at <= self._clock():
            raise not_found("no such subscription")
        return sub

    @staticmethod
    def _require_bus(scope: Scope, name: str, operation: str) -> None:
        try:
            scope.require_operation(f"bus:{name}", operation)
        except PermissionDenied as exc:
            raise forbidden(str(exc)) from None

    # ------------------------------------------------------------------ subscriptions

    def subscribe(self, owner: str, scope: Scope, name: str, *, collections: object,
                  filter: object = None, ttl: object = 86400,
                  event_ttl: object = 86400) -> Subscription:
        """Create or renew (idempotent); a changed spec applies to later changes only."""
        validate_name(name)
        self._require_bus(scope, name, "subscribe")
        colls = _collections(collections)
        try:
            flt = parse_filter(filter)
        except QueryError as exc:
            raise bad_request(str(exc), "invalid_filter") from None
        ttl_s = _number(ttl, "ttl", 1, MAX_TTL)
        event_ttl_s = _number(event_ttl, "event_ttl", 1, MAX_TTL)
        for coll in colls:
            if "*" in coll:
                continue  # patterns: visibility is decided per event, at delivery
            if not scope.allows(coll, Level.READ):
                raise forbidden(f"this API key may not read {coll!r}")
            for field in flt.fields() if flt is not None else ():
                if not scope.readable(coll, field):
                    raise forbidden(f"this API key may not filter on field {field!r} of {coll!r}")
        now = self._clock()
        doc = {"collections": list(colls), "filter": flt.to_wire() if flt is not None else None}
        with self._storage.transaction() as conn:
            existing = self._load(conn, owner, name)
            if existing is not None and existing.expires_at <= now:
                self._drop(conn, existing)
                existing = None
            uid = existing.uid if existing is not None else secrets.token_hex(16)
            created = existing.created_at if existing is not None else now
            spec = self._keyring.encrypt(_SERVICE, "", json.dumps(doc).encode(),
                                         self._spec_aad(name, uid))
            conn.execute(
                "INSERT INTO bus_subs(name, uid, owner, created_at, expires_at, ttl, "
                "event_ttl, spec) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(owner, name) DO UPDATE SET "
                "expires_at=excluded.expires_at, ttl=excluded.ttl, "
                "event_ttl=excluded.event_ttl, spec=excluded.spec",
                (name, uid, owner, created, now + ttl_s, ttl_s, event_ttl_s, spec),
            )
        return Subscription(name, uid, owner, created, now + ttl_s, ttl_s, event_ttl_s, colls, flt)

    def unsubscribe(self, owner: str, scope: Scope, name: str) -> None:
        with self._storage.transaction() as conn:
            self._drop(conn, self._owned(conn, owner, scope, name, "unsubscribe"))

    def get(self, owner: str, scope: Scope, name: str, *,
            operation: str = "get_subscription") -> Subscription:
        """The caller's subscription, checked for ``operation`` (a pusher asks for "poll")."""
        return self._owned(self._storage.conn, owner, scope, name, operation)

    def list_owned(self, owner: str) -> list[Subscription]:
        rows = self._storage.conn.execute(
            f"SELECT {self._COLUMNS} FROM bus_subs "  # noqa: S608
            "WHERE owner = ? AND expires_at > ? "
            "ORDER BY name", (owner, self._clock())).fetchall()
        return [self._row(r) for r in rows]

    # ------------------------------------------------------------------ publishing

    def _merge_key(self, sub: Subscription, collection: str, record_id: str) -> bytes:
        return self._keyring.blind_index(_SERVICE, sub.uid, f"{collection}\x00{record_id}")

    def _event_aad(self, sub: Subscription, key: str) -> bytes:
        return aad("bus-event", sub.uid, key)

    def on_changes(self, changes: Sequence[Change], conn: sqlite3.Connection) -> None:
        """ChangeFeed in-transaction listener: one event per matching (subscription, change)."""
        now = self._clock()
        rows = conn.execute(
            f"SELECT {self._COLUMNS} FROM bus_subs WHERE expires_at > ?",  # noqa: S608
            (now,),
        ).fetchall()
        if not rows:
            return
        subs = [self._row(r) for r in rows]
        for change in changes:
            for sub in subs:
                if not sub.selects(change.collection):
                    continue
                if (change.record is not None and sub.filter is not None
                        and not sub.filter.matches(change.record)):
                    continue
                self._append(conn, sub, change, now)

    def _append(self, conn: sqlite3.Connection, sub: Subscription, change: Change,
                now: float) -> None:
        merge = self._merge_key(sub, change.collection, change.record_id)
        conn.execute(
            "DELETE FROM bus_events WHERE sub_uid = ? AND merge_key = ? AND claimed_until <= ?",
            (sub.uid, merge, now),
        )
        key = secrets.token_urlsafe(18)
        body = {
            "collection": change.collection,
            "record_id": change.record_id,
            "operation": change.operation,
            "record": dict(change.record) if change.record is not None else None,
            "time": change.time,
        }
        sealed = self._keyring.encrypt(_SERVICE, "", json.dumps(body).encode(),
                                       self._event_aad(sub, key))
        conn.execute(
            "INSERT INTO bus_events(sub_uid, event_key, merge_key, expires_at, payload) "
            "VALUES (?,?,?,?,?)",
            (sub.uid, key, merge, now + sub.event_ttl, sealed),
        )

    def on_committed(self, changes: Sequence[Change]) -> None:
        """ChangeFeed committed listener: wake every in-process pusher (they re-poll)."""
        self.wake()

    # ------------------------------------------------------------------ consuming

    def _event(self, scope: Scope, sub: Subscription, key: str,
               payload: bytes) -> dict[str, Any] | None:
        body = json.loads(self._keyring.decrypt(_SERVICE, "", payload,
                                                self._event_aad(sub, key)))
        collection = body["collection"]
        if not _visible(scope, sub, collection):
            return None
        record = body["record"]
        return {
            "key": key,
            "collection": collection,
            "record_id": body["record_id"],
            "operation": body["operation"],
            "content": scope.project(collection, record) if record is not None else None,
            "timestamp": _iso(body["time"]),
        }

    def poll(self, owner: str, scope: Scope, name: str, *, claim_ttl: object = 30,
             limit: object = 10, claimed_by: str = "") -> tuple[list[dict[str, Any]], bool]:
        """Claim up to ``limit`` available events, oldest first; (events, has_more)."""
        ttl = _number(claim_ttl, "claim_ttl", 0.001, MAX_CLAIM_TTL)
        count = int(_number(limit, "limit", 1, MAX_POLL))
        self.sweep()
        out: list[dict[str, Any]] = []
        available = ("FROM bus_events WHERE sub_uid = ? AND seq > ? AND claimed_until <= ? "
                     "AND expires_at > ? ORDER BY seq")
        with self._storage.transaction() as conn:
            sub = self._owned(conn, owner, scope, name, "poll")
            now = self._clock()
            last = -1
            while len(out) < count:
                rows = conn.execute(f"SELECT seq, event_key, payload {available} LIMIT ?",
                                    (sub.uid, last, now, now, count - len(out))).fetchall()
                if not rows:
                    return out, False
                for seq, key, payload in rows:
                    last = seq
                    event = self._event(scope, sub, key, bytes(payload))
                    if event is None:  # lost the right to see it: drop, never deliver
                        conn.execute("DELETE FROM bus_events WHERE seq = ?", (seq,))
                        continue
                    conn.execute(
                        "UPDATE bus_events SET claimed_until = ?, claimed_by = ? WHERE seq = ?",
                        (now + ttl, claimed_by, seq),
                    )
                    out.append(event)
            more = conn.execute(f"SELECT 1 {available} LIMIT 1",
                                (sub.uid, last, now, now)).fetchone()
            return out, more is not None

    def peek(self, owner: str, scope: Scope, name: str, *, limit: object = 10
             ) -> list[dict[str, Any]]:
        """Up to ``limit`` live events, claimed or not, without claiming them."""
        count = int(_number(limit, "limit", 1, MAX_POLL))
        conn = self._storage.conn
        sub = self._owned(conn, owner, scope, name, "peek")
        rows = conn.execute(
            "SELECT event_key, payload FROM bus_events WHERE sub_uid = ? AND expires_at > ? "
            "ORDER BY seq LIMIT ?", (sub.uid, self._clock(), count * 4 + 16)).fetchall()
        out = []
        for key, payload in rows:
            event = self._event(scope, sub, key, bytes(payload))
            if event is not None:
                out.append(event)
                if len(out) == count:
                    break
        return out

    def size(self, owner: str, scope: Scope, name: str) -> int:
        """Live events not yet acked (claimed ones included)."""
        conn = self._storage.conn
        sub = self._owned(conn, owner, scope, name, "size")
        row = conn.execute("SELECT COUNT(*) FROM bus_events WHERE sub_uid = ? AND expires_at > ?",
                           (sub.uid, self._clock())).fetchone()
        return int(row[0])

    @staticmethod
    def _keys(keys: object) -> list[str]:
        if (not isinstance(keys, (list, tuple)) or len(keys) > MAX_KEYS
                or not all(isinstance(k, str) and 0 < len(k) <= 128 for k in keys)):
            raise bad_request(f"keys must be a list of at most {MAX_KEYS} event keys",
                              "validation_error")
        return list(dict.fromkeys(keys))

    def ack(self, owner: str, scope: Scope, name: str, keys: object) -> list[str]:
        """Delete the given events; keys that are not this subscription's are ignored."""
        wanted = self._keys(keys)
        with self._storage.transaction() as conn:
            sub = self._owned(conn, owner, scope, name, "ack")
            return self._delete_keys(conn, sub, wanted)

    def _delete_keys(self, conn: sqlite3.Connection, sub: Subscription,
                     keys: Iterable[str]) -> list[str]:
        done = []
        for key in keys:
            cur = conn.execute("DELETE FROM bus_events WHERE sub_uid = ? AND event_key = ?",
                               (sub.uid, key))
            if cur.rowcount:
                done.append(key)
        return done

    def renew(self, owner: str, scope: Scope, name: str, keys: object, *,
              claim_ttl: object = 30) -> list[str]:
        """Extend the claims of the given (still claimed) events."""
        wanted = self._keys(keys)
        ttl = _number(claim_ttl, "claim_ttl", 0.001, MAX_CLAIM_TTL)
        done = []
        with self._storage.transaction() as conn:
            sub = self._owned(conn, owner, scope, name, "renew")
            now = self._clock()
            for key in wanted:
                cur = conn.execute(
                    "UPDATE bus_events SET claimed_until = ? WHERE sub_uid = ? AND event_key = ? "
                    "AND claimed_until > ?", (now + ttl, sub.uid, key, now))
                if cur.rowcount:
                    done.append(key)
        return done

    def release_keys(self, owner: str, scope: Scope, name: str, keys: object,
                     claimed_by: str) -> list[str]:
        """End the claims ``claimed_by`` holds on these events now (a consumer gave them
        back unprocessed); returns the keys released. Others' claims are left alone."""
        wanted = self._keys(keys)
        done = []
        with self._storage.transaction() as conn:
            sub = self._owned(conn, owner, scope, name, "renew")
            for key in wanted:
                cur = conn.execute(
                    "UPDATE bus_events SET claimed_until = 0, claimed_by = '' WHERE sub_uid = ? "
                    "AND event_key = ? AND claimed_by = ? AND claimed_until > ?",
                    (sub.uid, key, claimed_by, self._clock()))
                if cur.rowcount:
                    done.append(key)
        return done

    def release(self, owner: str, name: str, claimed_by: str) -> None:
        """Un-claim events a (closing) pusher claimed, so a reconnect gets them at once."""
        if not claimed_by:
            return
        with self._storage.transaction() as conn:
            sub = self._load(conn, owner, name)
            if sub is None:
                return
            conn.execute("UPDATE bus_events SET claimed_until = 0, claimed_by = '' "
                         "WHERE sub_uid = ? AND claimed_by = ?", (sub.uid, claimed_by))

    # ------------------------------------------------------------------ housekeeping

    def sweep(self, *, force: bool = False) -> None:
        """Delete expired events and subscriptions (rate-limited unless forced)."""
        now = self._clock()
        if not force and now - self._last_sweep < SWEEP_INTERVAL:
            return
        self._last_sweep = now
        with self._storage.transaction() as conn:
            conn.execute("DELETE FROM bus_events WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM bus_events WHERE sub_uid IN (SELECT uid FROM "
                         "bus_subs WHERE expires_at <= ?)", (now,))
            conn.execute("DELETE FROM bus_subs WHERE expires_at <= ?", (now,))

    # ------------------------------------------------------------------ wake-ups

    def add_waiter(self, waiter: Waiter) -> Callable[[], None]:
        """Call ``waiter`` (from any thread) after each committed change; returns remover."""
        with self._lock:
            ident = self._next_waiter
            self._next_waiter += 1
            self._waiters[ident] = waiter

        def remove() -> None:
            with self._lock:
                self._waiters.pop(ident, None)

        return remove

    def wake(self) -> None:
        with self._lock:
            waiters = list(self._waiters.values())
        for waiter in waiters:
            with contextlib.suppress(RuntimeError):  # its loop closed; removed on exit
                waiter()


def owner_error(exc: ApiError) -> dict[str, Any]:
    """An ApiError as a WebSocket error op."""
    return {"op": "error", "code": exc.code, "message": exc.message}

