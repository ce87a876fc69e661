"""Server side of SDK retries: remember the first response to each Idempotency-Key.

State lives in SQLite so restarts and several processes on one data dir agree. A row is
``pending`` while the first attempt runs, then ``done`` with the stored response. Only 2xx
and 4xx answers are kept (not 5xx, 408, 429), so a failed attempt can be retried for real.
Stored bodies may contain record data, so they are encrypted like everything else.

Exactly once, even under SIGKILL: the request's writes are held in one storage
:class:`~mock_server.storage.Unit` and committed in the same transaction that marks the row
``done`` with its answer. A node killed before that COMMIT leaves neither the write nor the
answer, so the retry (which takes over the dead holder's ``pending`` row) applies it once; a
node killed after it leaves both, so the retry gets the stored answer.

Where the claim runs: on the event loop (:meth:`IdempotencyStore.begin_nowait`, a
``synchronous=NORMAL`` transaction that never waits) whenever the write lock is free, so a
keyed write costs no thread hop for it. When a request of this server holds the lock (its
unit wrote; it commits on this loop) the middleware waits for that on the loop; when anyone
else holds it, :meth:`IdempotencyStore.begin` waits in a thread. The claim stays its own
committed row, not part of the write's transaction: a pending row is what lets a repeat on
another node wait for the first attempt instead of queueing on the database's write lock,
and what lets a write take that lock only once it writes (not for a whole upload).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal

from mock_server.crypto import KeyRing, aad
from mock_server.storage import Storage, Unit, WouldWait, register_schema

register_schema(
    """
    CREATE TABLE IF NOT EXISTS idempotency (
        owner TEXT NOT NULL,
        ikey BLOB NOT NULL,
        fingerprint BLOB NOT NULL,
        state TEXT NOT NULL,
        status INTEGER,
        headers TEXT,
        body BLOB,
        created REAL NOT NULL,
        started REAL NOT NULL,
        holder TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (owner, ikey)
    );
    CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency(created);
    """
)

#: A pending row older than this is from a crashed attempt and may be taken over.
PENDING_LEASE = 120.0


#: Holders of the open stores in this process.
_LIVE: set[str] = set()


def _holder_gone(holder: str, me: str) -> bool:
    """Whether the server instance that claimed a pending row can no longer finish it.

    `holder` is "<pid>:<instance id>". A closed instance in our own process (a restarted
    in-process server) or a dead pid (SIGKILLed server) will never complete the row.
    """
    if holder == me or ":" not in holder:
        return False
    pid_text, _, _ = holder.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return True
    if pid == os.getpid():
        return holder not in _LIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


STORED_HEADERS = frozenset({b"content-type", b"location", b"etag", b"last-modified"})


def storable(status: int) -> bool:
    """Whether a response is final enough to replay."""
    return 200 <= status < 500 and status not in (408, 429)


def fingerprint(method: str, path: str, query: bytes, body: bytes = b"") -> bytes:
    """What a repeat must match: the request's method, path, query and body."""
    head = hashlib.sha256(f"{method.upper()} {path}?".encode() + query).digest()
    return hashlib.sha256(head + hashlib.sha256(body).digest()).digest()


@dataclass(frozen=True)
class Replay:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


Outcome = Literal["proceed", "wait", "conflict"] | Replay


class IdempotencyStore:
    """Claim / complete / abandon rows keyed by (key id, idempotency key)."""

    def __init__(self, storage: Storage, keyring: KeyRing, ttl: float) -> None:
        self._storage = storage
        self._keyring = keyring
        self._ttl = ttl
        self._calls = 0
        self.holder = f"{os.getpid()}:{secrets.token_hex(8)}"
        #: Pending rows of ours whose attempt failed but whose DELETE failed too.
        self._abandoned: set[tuple[str, bytes]] = set()
        _LIVE.add(self.holder)

    def close(self) -> None:
        """This instance will finish no more requests: its pending rows may be taken over."""
        _LIVE.discard(self.holder)

    def unit(self) -> AbstractContextManager[Unit]:
        """Hold the writes made in this context until :meth:`complete` commits them."""
        return self._storage.unit()

    def _ikey(self, owner: str, key: str) -> bytes:
        return self._keyring.blind_index("idempotency", owner, key)

    def begin(self, owner: str, key: str, fp: bytes) -> Outcome:
        """Claim the key for a first attempt, or say how to treat a repeat.

        A repeat of a finished or running request is answered from a plain read, without
        the write lock: a write holding that lock (until its answer commits) must not make
        replays and waits queue behind it.
        """
        ikey = self._ikey(owner, key)
        now = time.time()
        self._calls += 1
        if self._abandoned:
            self._retry_abandoned()
        seen = self._peek(owner, ikey, fp, now)
        if seen is not None:
            return seen
        # The claim needs no fsync of its own: lost in a power cut, it leaves no write
        # behind (those commit with the answer, durably), so a retry simply claims again;
        # a killed process keeps it. The COMMIT of the answer syncs it anyway.
        with self._storage.transaction(durable=False) as conn:
            if self._calls % 200 == 1:
                conn.execute("DELETE FROM idempotency WHERE created < ?", (now - self._ttl,))
            outcome, took_over = self._claim(conn, owner, ikey, fp, now)
        if took_over:
            self._abandoned.discard((owner, ikey))
        return outcome

    def peek(self, owner: str, key: str, fp: bytes) -> Outcome | None:
        """How to treat a repeat, from a plain read (no lock, no wait in WAL mode); None
        when the key must be claimed first."""
        return self._peek(owner, self._ikey(owner, key), fp, time.time())

    def _peek(self, owner: str, ikey: bytes, fp: bytes, now: float) -> Outcome | None:
        seen = self._decide(owner, ikey, fp, now, self._storage.conn)
        return None if seen == "proceed" else seen

    @property
    def housekeeping_due(self) -> bool:
        """Whether the next claim has rare bookkeeping to do (expired rows, abandoned ones):
        :meth:`begin`'s, in a thread; :meth:`begin_nowait` declines it."""
        return bool(self._abandoned) or self._calls % 200 == 0

    def begin_nowait(self, owner: str, key: str, fp: bytes) -> Outcome | None:
        """:meth:`begin` for an event loop: None when it would wait (call begin in a thread).

        The claim is taken at once when no other connection holds the write lock (always,
        with one writer at a time): a thread hop saved. It reads under that lock, which it
        got without waiting, so a replay still never queues behind a running write.
        """
        if self.housekeeping_due:
            return None
        ikey = self._ikey(owner, key)
        now = time.time()
        try:
            with self._storage.nowait() as conn:
                outcome, took_over = self._claim(conn, owner, ikey, fp, now)
        except WouldWait:
            return None
        self._calls += 1
        if took_over:
            self._abandoned.discard((owner, ikey))
        return outcome

    def _claim(self, conn: sqlite3.Connection, owner: str, ikey: bytes, fp: bytes,
               now: float) -> tuple[Outcome, bool]:
        """Inside a write transaction: claim the row, or say how to treat a repeat (and
        whether a crashed or abandoned attempt's row was taken over)."""
        seen = self._decide(owner, ikey, fp, now, conn)
        if seen is None:
            conn.execute(
                "INSERT OR REPLACE INTO idempotency(owner, ikey, fingerprint, state, created,"
                " started, holder) VALUES (?,?,?,'pending',?,?,?)",
                (owner, ikey, fp, now, now, self.holder),
            )
            return "proceed", False
        if seen == "proceed":  # take over a crashed (or abandoned) attempt's row
            conn.execute(
                "UPDATE idempotency SET started = ?, holder = ? WHERE owner = ? AND ikey = ?",
                (now, self.holder, owner, ikey),
            )
            return seen, True
        return seen, False

    def _decide(self, owner: str, ikey: bytes, fp: bytes, now: float,
                conn: sqlite3.Connection) -> Outcome | None:
        """What the row says: None (absent or expired: claim it), "proceed" (a crashed
        attempt's: take it over), or the answer to a repeat."""
        row = conn.execute(
            "SELECT fingerprint, state, status, headers, body, created, started, holder"
            " FROM idempotency WHERE owner = ? AND ikey = ?",
            (owner, ikey),
        ).fetchone()
        if row is None or row[5] < now - self._ttl:
            return None
        stored_fp, state, status, headers, body, _created, started, holder = row
        if bytes(stored_fp) != fp:
            return "conflict"
        if state == "done":
            plain = self._keyring.decrypt(
                "idempotency", owner, body, aad("idempotency", owner, ikey.hex())
            )
            hdrs = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in json.loads(headers)]
            return Replay(int(status), hdrs, plain)
        if started < now - PENDING_LEASE or _holder_gone(holder, self.holder) \
                or (holder == self.holder and (owner, ikey) in self._abandoned):
            return "proceed"
        return "wait"

    def complete(
        self, owner: str, key: str, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
        unit: Unit | None = None,
    ) -> bool:
        """Store the answer; with a unit that wrote, in the same COMMIT as its writes.

        Returns False (and rolls the unit back) when this instance no longer holds the row:
        a retry took it over, so its own run is the one that counts.
        """
        ikey = self._ikey(owner, key)
        kept = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in headers
            if k.lower() in STORED_HEADERS
        ]
        sealed = self._keyring.encrypt(
            "idempotency", owner, body, aad("idempotency", owner, ikey.hex())
        )

        def record(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE idempotency SET state = 'done', status = ?, headers = ?, body = ?"
                " WHERE owner = ? AND ikey = ? AND state = 'pending' AND holder = ?",
                (status, json.dumps(kept), sealed, owner, ikey, self.holder),
            )
            return cur.rowcount == 1

        if unit is not None and unit.begun:
            return unit.commit(record)
        with self._storage.transaction() as conn:
            return record(conn)

    def forget(self, owner: str, key: str, unit: Unit | None = None) -> bool:
        """Commit the unit's writes without keeping an answer (too large to store).

        Returns False (and rolls the unit back) when a retry took the key over, as
        :meth:`complete` does.
        """
        ikey = self._ikey(owner, key)

        def drop(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("DELETE FROM idempotency WHERE owner = ? AND ikey = ? AND"
                               " holder = ? AND state = 'pending'", (owner, ikey, self.holder))
            return cur.rowcount == 1

        if unit is not None and unit.begun:
            return unit.commit(drop)
        with self._storage.transaction() as conn:
            return drop(conn)

    def abandon(self, owner: str, key: str) -> None:
        """Forget a pending attempt (it failed with 5xx or crashed) so a retry runs anew.

        Roll back the attempt's unit first: its writes must not outlive the row. When the
        DELETE itself fails (a full disk fails the write that failed the attempt, and then
        this one), the row is remembered as abandoned: a retry here takes it over at once,
        and the next :meth:`begin` deletes it once the disk has room again.
        """
        ikey = self._ikey(owner, key)
        try:
            self._delete_pending(owner, ikey)
        except sqlite3.Error:
            self._abandoned.add((owner, ikey))
            raise

    def _delete_pending(self, owner: str, ikey: bytes) -> None:
        with self._storage.transaction() as conn:
            conn.execute(
                "DELETE FROM idempotency WHERE owner = ? AND ikey = ? AND state = 'pending'"
                " AND holder = ?",
                (owner, ikey, self.holder),
            )

    def _retry_abandoned(self) -> None:
        for owner, ikey in list(self._abandoned):
            try:
                self._delete_pending(owner, ikey)
            except sqlite3.Error:
                return  # still no room: keep them for the next request
            self._abandoned.discard((owner, ikey))
