"""Queue and DedupQueue (EmoDB semantics, SPEC §4.4); framework-free.

A message is one row: an encrypted payload (AAD = kind, queue name, message id) and a claim
(``claimed_until``, ``claim`` token). Queues need no creation: a queue is the set of its rows.
Every write is one ``BEGIN IMMEDIATE`` transaction on a ``synchronous=FULL`` database, so a
send that answered 200 survives SIGKILL; delivery is at-least-once, with no ordering promise.

Decisions:
- Ids the client sees are ``<message>.<claim>.<tag>``: each poll gives the message a fresh
  claim token, and ``tag`` is an HMAC binding (kind, queue, message, claim). Ack/renew with a
  claim id act only while that claim is the message's current one: a consumer whose claim
  expired and was taken by another poll gets its ids back under ``stale`` (a no-op), never
  touching the new claim. Ids with a bad tag were not issued by this queue: 400, nothing
  changes. Peek ids carry no claim (``<message>..<tag>``): acking one deletes the message
  whoever holds it (to drop a poison message seen by peek); renewing one is a 400.
- DedupQueue: messages with the same canonical JSON (sorted keys, no spaces) collapse at poll
  time: claiming one also deletes every other unclaimed copy in that queue, so N identical
  sends between two polls are delivered once, while peek and size still count all N.
- ``size`` counts messages not acked (claimed ones included); ``claimcount`` those claimed.
- Permissions on ``queue:<name>`` / ``dedupq:<name>`` follow the table shared with the
  DataBus, :data:`mock_server.permissions.QUEUE_OPERATIONS`: read = peek/size/claimcount
  (looking changes nothing another consumer gets); write = send/sendbatch and everything
  that consumes or changes the queue (poll, ack, renew, unclaimall, purge, and move, which
  needs write on both queues).
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from mock_server.crypto import KeyRing, aad
from mock_server.errors import ApiError, bad_request, forbidden
from mock_server.permissions import (
    PermissionDenied,
    PermissionSpecError,
    Scope,
    validate_resource_name,
)
from mock_server.storage import Storage, register_schema

register_schema(
    """
    CREATE TABLE IF NOT EXISTS queue_messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        queue TEXT NOT NULL,
        msg_id TEXT NOT NULL,
        dedup BLOB,
        claimed_until REAL NOT NULL DEFAULT 0,
        claim TEXT NOT NULL DEFAULT '',
        payload BLOB NOT NULL
    );
    CREATE UNIQUE INDEX IF NOT EXISTS queue_messages_id ON queue_messages(kind, queue, msg_id);
    CREATE INDEX IF NOT EXISTS queue_messages_order ON queue_messages(kind, queue, seq);
    CREATE INDEX IF NOT EXISTS queue_messages_dedup ON queue_messages(kind, queue, dedup);
    """
)

Kind = Literal["queue", "dedupq"]
KINDS: tuple[Kind, ...] = ("queue", "dedupq")

#: Serialized (compact JSON, UTF-8) size limit of one message.
MAX_MESSAGE_BYTES = 256 * 1024
MAX_BATCH = 1000
MAX_POLL = 1000
MAX_IDS = 1000
MAX_CLAIM_TTL = 24 * 3600.0
_SERVICE = "queue"
_TOKEN = r"[A-Za-z0-9_\-]"
_ID = re.compile(rf"({_TOKEN}{{16}})\.({_TOKEN}{{12}})?\.({_TOKEN}{{16}})")


def _error(message: str, code: str = "validation_error") -> ApiError:
    return bad_request(message, code)


def validate_queue_name(name: object) -> str:
    """1-128 of letters, digits, '_', '.', '-' (the service prefix is implied by the route),
    not starting with '_': those names are the routes' own (``/api/queue/_move``), so a
    queue named ``_move`` could be sent to but never purged (DELETE hit it, not ``_move``)."""
    if not isinstance(name, str) or ":" in name:
        raise _error("queue name may only contain letters, digits, '_', '.', '-'")
    if name in (".", ".."):
        raise _error(f"queue name may not be {name!r}")
    if name.startswith("_"):
        raise _error("queue name may not start with '_' (reserved for the service's routes, "
                     "such as _move)")
    try:
        return validate_resource_name(name)
    except PermissionSpecError as exc:
        raise _error(f"queue name: {exc}") from None


def _number(value: object, what: str, low: float, high: float, *, low_open: bool = False
            ) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and (low < value if low_open else low <= value) and value <= high)
    if not ok:
        bound = f"greater than {low:g}" if low_open else f"at least {low:g}"
        raise _error(f"{what} must be a number {bound} and at most {high:g}")
    return float(value)  # type: ignore[arg-type]  # checked above


def claim_ttl_value(value: object, *, allow_zero: bool = False) -> float:
    return _number(value, "claim_ttl", 0, MAX_CLAIM_TTL, low_open=not allow_zero)


def limit_value(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_POLL:
        raise _error(f"limit must be an integer from 1 to {MAX_POLL}")
    return value


def _encode(message: object) -> bytes:
    """Compact JSON of one message; 413 above the size limit."""
    try:
        raw = json.dumps(message, separators=(",", ":"), ensure_ascii=False,
                         allow_nan=False).encode()
    except (TypeError, ValueError):
        raise _error("a message must be a JSON value") from None
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ApiError(413, "payload_too_large",
                       f"a message is {len(raw)} bytes serialized, the limit is "
                       f"{MAX_MESSAGE_BYTES}")
    return raw


def _canonical(message: object) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, sort_keys=True,
                      allow_nan=False).encode()


def _token(nbytes: int) -> str:
    return secrets.token_urlsafe(nbytes)


class Queues:
    """Every Queue and DedupQueue of one data directory."""

    def __init__(self, storage: Storage, keyring: KeyRing, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._storage = storage
        self._keyring = keyring
        self._clock = clock

    # ------------------------------------------------------------------ helpers

    def _open(self, scope: Scope, kind: Kind, name: object, operation: str) -> str:
        """The validated queue name, once ``scope`` may do ``operation`` on it (else 403)."""
        if kind not in KINDS:
            raise _error(f"unknown queue kind {kind!r}")
        queue = validate_queue_name(name)
        try:
            scope.require_operation(f"{kind}:{queue}", operation)
        except PermissionDenied as exc:
            raise forbidden(str(exc)) from None
        return queue

    def _tag(self, kind: Kind, queue: str, msg_id: str, claim: str) -> str:
        mac = self._keyring.blind_index(_SERVICE, f"{kind}:{queue}", f"{msg_id}.{claim}")
        return base64.urlsafe_b64encode(mac[:12]).decode()

    def _public_id(self, kind: Kind, queue: str, msg_id: str, claim: str = "") -> str:
        return f"{msg_id}.{claim}.{self._tag(kind, queue, msg_id, claim)}"

    def _parse_ids(self, kind: Kind, queue: str, ids: object) -> list[tuple[str, str, str]]:
        """(public id, message id, claim) for each id; 400 for the whole list if any is bad."""
        if (not isinstance(ids, (list, tuple)) or len(ids) > MAX_IDS
                or not all(isinstance(i, str) for i in ids)):
            raise _error(f"ids must be a list of at most {MAX_IDS} message ids")
        out = []
        for public in dict.fromkeys(ids):
            match = _ID.fullmatch(public)
            if match is None or not hmac.compare_digest(
                    match.group(3), self._tag(kind, queue, match.group(1), match.group(2) or "")):
                raise _error(f"{public[:64]!r} is not a message id of {kind} {queue!r}",
                             "unknown_id")
            out.append((public, match.group(1), match.group(2) or ""))
        return out

    def _aad(self, kind: Kind, queue: str, msg_id: str) -> bytes:
        return aad("queue-msg", kind, queue, msg_id)

    def _dedup(self, kind: Kind, queue: str, message: object) -> bytes | None:
        if kind != "dedupq":
            return None
        return self._keyring.blind_index(_SERVICE, f"dedup:{queue}", _canonical(message))

    def _insert(self, conn: sqlite3.Connection, kind: Kind, queue: str,
                items: Sequence[tuple[bytes, bytes | None]]) -> list[str]:
        ids = []
        for raw, dedup in items:
            msg_id = _token(12)
            sealed = self._keyring.encrypt(_SERVICE, kind, raw, self._aad(kind, queue, msg_id))
            conn.execute("INSERT INTO queue_messages(kind, queue, msg_id, dedup, payload) "
                         "VALUES (?,?,?,?,?)", (kind, queue, msg_id, dedup, sealed))
            ids.append(self._public_id(kind, queue, msg_id))
        return ids

    def _payload(self, kind: Kind, queue: str, msg_id: str, sealed: bytes) -> Any:
        return json.loads(self._keyring.decrypt(_SERVICE, kind, sealed,
                                                self._aad(kind, queue, msg_id)))

    # ------------------------------------------------------------------ producing

    def send(self, scope: Scope, kind: Kind, name: object, message: object) -> str:
        """Store one message (committed before returning); its (peek) id."""
        queue = self._open(scope, kind, name, "send")
        item = (_encode(message), self._dedup(kind, queue, message))
        with self._storage.transaction() as conn:
            return self._insert(conn, kind, queue, [item])[0]

    def send_batch(self, scope: Scope, kind: Kind, name: object, messages: object) -> list[str]:
        """Store a list of messages atomically (all or none)."""
        queue = self._open(scope, kind, name, "send_batch")
        if not isinstance(messages, list):
            raise _error("sendbatch takes a JSON list of messages")
        if len(messages) > MAX_BATCH:
            raise ApiError(413, "batch_too_large",
                           f"a batch holds at most {MAX_BATCH} messages, got {len(messages)}")
        items = [(_encode(m), self._dedup(kind, queue, m)) for m in messages]
        if not items:
            return []
        with self._storage.transaction() as conn:
            return self._insert(conn, kind, queue, items)

    # ------------------------------------------------------------------ consuming

    def poll(self, scope: Scope, kind: Kind, name: object, *, claim_ttl: object = 30,
             limit: object = 10) -> list[dict[str, Any]]:
        """Claim up to ``limit`` visible messages for ``claim_ttl`` seconds, oldest first."""
        queue = self._open(scope, kind, name, "poll")
        ttl = claim_ttl_value(claim_ttl)
        count = limit_value(limit)
        out: list[dict[str, Any]] = []
        claimed_hashes: set[bytes] = set()
        with self._storage.transaction() as conn:
            now = self._clock()
            last = -1
            while len(out) < count:
                rows = conn.execute(
                    "SELECT seq, msg_id, dedup, payload FROM queue_messages WHERE kind = ? "
                    "AND queue = ? AND seq > ? AND claimed_until <= ? ORDER BY seq LIMIT ?",
                    (kind, queue, last, now, count - len(out))).fetchall()
                if not rows:
                    break
                for seq, msg_id, dedup, sealed in rows:
                    last = seq
                    if dedup is not None and bytes(dedup) in claimed_hashes:
                        continue  # deleted below, as a copy of one claimed in this poll
                    claim = _token(9)
                    conn.execute("UPDATE queue_messages SET claimed_until = ?, claim = ? "
                                 "WHERE seq = ?", (now + ttl, claim, seq))
                    if dedup is not None:
                        claimed_hashes.add(bytes(dedup))
                        conn.execute(
                            "DELETE FROM queue_messages WHERE kind = ? AND queue = ? AND "
                            "dedup = ? AND claimed_until <= ? AND seq != ?",
                            (kind, queue, dedup, now, seq))
                    out.append({"id": self._public_id(kind, queue, msg_id, claim),
                                "payload": self._payload(kind, queue, msg_id, bytes(sealed))})
        return out

    def ack(self, scope: Scope, kind: Kind, name: object, ids: object
            ) -> tuple[list[str], list[str]]:
        """Delete messages; (acked, stale). Stale: gone, or claimed again by another poll."""
        queue = self._open(scope, kind, name, "ack")
        parsed = self._parse_ids(kind, queue, ids)
        acked: list[str] = []
        stale: list[str] = []
        with self._storage.transaction() as conn:
            for public, msg_id, claim in parsed:
                if claim:
                    cur = conn.execute("DELETE FROM queue_messages WHERE kind = ? AND queue = ? "
                                       "AND msg_id = ? AND claim = ?", (kind, queue, msg_id, claim))
                else:
                    cur = conn.execute("DELETE FROM queue_messages WHERE kind = ? AND queue = ? "
                                       "AND msg_id = ?", (kind, queue, msg_id))
                (acked if cur.rowcount else stale).append(public)
        return acked, stale

    def renew(self, scope: Scope, kind: Kind, name: object, ids: object, *,
              claim_ttl: object = 30) -> tuple[list[str], list[str]]:
        """Extend claims (never shortening one); ``claim_ttl`` 0 releases them. (renewed, stale)"""
        queue = self._open(scope, kind, name, "renew")
        ttl = claim_ttl_value(claim_ttl, allow_zero=True)
        parsed = self._parse_ids(kind, queue, ids)
        if any(not claim for _, _, claim in parsed):
            raise _error("renew takes ids returned by poll (a peek id holds no claim)")
        renewed: list[str] = []
        stale: list[str] = []
        with self._storage.transaction() as conn:
            now = self._clock()
            for public, msg_id, claim in parsed:
                # ttl 0 releases the claim (its ids go stale); otherwise never shorten it
                cur = conn.execute(
                    "UPDATE queue_messages SET "
                    "claimed_until = CASE WHEN ? = 0 THEN 0 ELSE MAX(claimed_until, ?) END, "
                    "claim = CASE WHEN ? = 0 THEN '' ELSE claim END "
                    "WHERE kind = ? AND queue = ? AND msg_id = ? AND claim = ?",
                    (ttl, now + ttl, ttl, kind, queue, msg_id, claim))
                (renewed if cur.rowcount else stale).append(public)
        return renewed, stale

    # ------------------------------------------------------------------ inspecting

    def peek(self, scope: Scope, kind: Kind, name: object, *, limit: object = 10
             ) -> list[dict[str, Any]]:
        """Up to ``limit`` messages, claimed or not, oldest first; claims nothing."""
        queue = self._open(scope, kind, name, "peek")
        count = limit_value(limit)
        rows = self._storage.conn.execute(
            "SELECT msg_id, payload FROM queue_messages WHERE kind = ? AND queue = ? "
            "ORDER BY seq LIMIT ?", (kind, queue, count)).fetchall()
        return [{"id": self._public_id(kind, queue, msg_id),
                 "payload": self._payload(kind, queue, msg_id, bytes(sealed))}
                for msg_id, sealed in rows]

    def size(self, scope: Scope, kind: Kind, name: object) -> int:
        """Messages not yet acked, claimed ones included."""
        queue = self._open(scope, kind, name, "size")
        row = self._storage.conn.execute(
            "SELECT COUNT(*) FROM queue_messages WHERE kind = ? AND queue = ?",
            (kind, queue)).fetchone()
        return int(row[0])

    def claim_count(self, scope: Scope, kind: Kind, name: object) -> int:
        """Messages under a claim that has not expired."""
        queue = self._open(scope, kind, name, "claim_count")
        row = self._storage.conn.execute(
            "SELECT COUNT(*) FROM queue_messages WHERE kind = ? AND queue = ? "
            "AND claimed_until > ?", (kind, queue, self._clock())).fetchone()
        return int(row[0])

    # ------------------------------------------------------------------ administration

    def unclaim_all(self, scope: Scope, kind: Kind, name: object) -> int:
        """Release every claim (their ids become stale); how many were claimed."""
        queue = self._open(scope, kind, name, "unclaim_all")
        with self._storage.transaction() as conn:
            live = conn.execute("SELECT COUNT(*) FROM queue_messages WHERE kind = ? AND "
                                "queue = ? AND claimed_until > ?",
                                (kind, queue, self._clock())).fetchone()[0]
            conn.execute("UPDATE queue_messages SET claimed_until = 0, claim = '' "
                         "WHERE kind = ? AND queue = ? AND claim != ''", (kind, queue))
        return int(live)

    def purge(self, scope: Scope, kind: Kind, name: object) -> int:
        """Delete every message, claimed or not; how many."""
        queue = self._open(scope, kind, name, "purge")
        with self._storage.transaction() as conn:
            cur = conn.execute("DELETE FROM queue_messages WHERE kind = ? AND queue = ?",
                               (kind, queue))
        return int(cur.rowcount)

    def move(self, scope: Scope, kind: Kind, source: object, dest: object) -> int:
        """Move every unclaimed message of ``source`` to ``dest`` in one transaction."""
        src = self._open(scope, kind, source, "move")
        dst = self._open(scope, kind, dest, "move")
        if src == dst:
            raise _error("move needs two different queues")
        moved = 0
        with self._storage.transaction() as conn:
            rows = conn.execute(
                "SELECT seq, msg_id, payload FROM queue_messages WHERE kind = ? AND queue = ? "
                "AND claimed_until <= ? ORDER BY seq", (kind, src, self._clock())).fetchall()
            for seq, msg_id, sealed in rows:
                plain = self._keyring.decrypt(_SERVICE, kind, bytes(sealed),
                                              self._aad(kind, src, msg_id))
                new_id = _token(12)  # ids are per queue: a fresh one, so none can clash
                resealed = self._keyring.encrypt(_SERVICE, kind, plain,
                                                 self._aad(kind, dst, new_id))
                dedup = self._dedup(kind, dst, json.loads(plain))
                conn.execute("UPDATE queue_messages SET queue = ?, msg_id = ?, payload = ?, "
                             "dedup = ?, claimed_until = 0, claim = '' WHERE seq = ?",
                             (dst, new_id, resealed, dedup, seq))
                moved += 1
        return moved
