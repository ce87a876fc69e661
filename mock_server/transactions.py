"""Client transactions over the DataStore (issue 15 §2; framework-free).

A transaction spans many requests, so it cannot hold a SQLite transaction (that would
block every writer of every node until the client commits or walks away). It is
optimistic instead: each operation runs the ordinary :class:`~mock_server.datastore.DataStore`
method with :data:`~mock_server.datastore.OVERLAY` set, so every permission, field-rule and
schema check runs as usual, but writes are *staged* in ``ds_tx_writes`` (sealed with the
keyring, like records: nothing readable on disk) and reads see the staged writes over the
committed records. The first time a record is touched its committed version (a hash of its
ciphertext, which changes on every write) is remembered; commit re-checks those versions
inside one write transaction and applies every staged write through the DataStore's own
write path (so audit records and DataBus events happen at commit, once), or refuses with
409 naming the records another writer changed meanwhile.

Isolation levels (ekoDB's names): ``ReadCommitted`` (default; ``ReadUncommitted`` behaves
the same, since no transaction ever sees another's staged writes) fails a commit when a
record it *wrote* changed since it first touched it. ``RepeatableRead`` and
``Serializable`` also fail for records it *read* and when a collection it *queried* (find,
delete by filter, a unique check) changed in any way; under them a re-read that would see
another version fails at once (409) instead. (Queries are validated per collection, not per
predicate: coarse, but never lets a phantom through.) Each operation is atomic (a failing
operation stages nothing); a commit is all or nothing. A transaction belongs to the key
that began it (404 for any other key), expires after ``ttl`` seconds without an operation
(its staged writes are purged), and its outcome is kept as a tombstone so a repeated commit
answers the same.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from mock_server.crypto import DecryptionError, KeyRing, aad
from mock_server.datastore import OVERLAY, Caller, DataStore
from mock_server.errors import ApiError
from mock_server.permissions import Level, PermissionDenied
from mock_server.storage import Storage, register_schema

__all__ = ["ISOLATION_LEVELS", "Transactions"]

register_schema(
    """
    CREATE TABLE IF NOT EXISTS ds_transactions (
        tidx BLOB PRIMARY KEY,
        owner TEXT NOT NULL,
        isolation TEXT NOT NULL,
        state TEXT NOT NULL,
        created REAL NOT NULL,
        touched REAL NOT NULL,
        seq INTEGER NOT NULL DEFAULT 0,
        savepoints TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX IF NOT EXISTS ds_transactions_owner ON ds_transactions(owner, state);
    CREATE INDEX IF NOT EXISTS ds_transactions_age ON ds_transactions(state, touched);
    CREATE TABLE IF NOT EXISTS ds_tx_writes (
        tidx BLOB NOT NULL,
        seq INTEGER NOT NULL,
        cidx BLOB NOT NULL,
        ridx BLOB NOT NULL,
        sealed BLOB NOT NULL,
        PRIMARY KEY (tidx, seq)
    );
    CREATE INDEX IF NOT EXISTS ds_tx_writes_rec ON ds_tx_writes(tidx, cidx, ridx, seq);
    CREATE TABLE IF NOT EXISTS ds_tx_reads (
        tidx BLOB NOT NULL,
        cidx BLOB NOT NULL,
        ridx BLOB NOT NULL,
        seq INTEGER NOT NULL,
        version BLOB NOT NULL,
        written INTEGER,
        sealed BLOB NOT NULL,
        PRIMARY KEY (tidx, cidx, ridx)
    );
    CREATE TABLE IF NOT EXISTS ds_tx_scans (
        tidx BLOB NOT NULL,
        cidx BLOB NOT NULL,
        seq INTEGER NOT NULL,
        digest BLOB NOT NULL,
        sealed BLOB NOT NULL,
        PRIMARY KEY (tidx, cidx)
    );
    """
)

_SERVICE: Final = "transactions"
ISOLATION_LEVELS: Final = {
    "readuncommitted": "ReadUncommitted",
    "readcommitted": "ReadCommitted",
    "repeatableread": "RepeatableRead",
    "serializable": "Serializable",
}
DEFAULT_ISOLATION: Final = "ReadCommitted"
MAX_ACTIVE_PER_KEY: Final = 1000
MAX_WRITES: Final = 10_000
MAX_SAVEPOINTS: Final = 64
TOMBSTONE_SECONDS: Final = 3600.0
_SAVEPOINT: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TX_ID: Final = re.compile(r"tx_[A-Za-z0-9_-]{16,64}")
_ABSENT: Final = b""

T = TypeVar("T")


def _version(sealed: bytes | None) -> bytes:
    """A record's version: any write re-encrypts it under a fresh nonce, so this changes."""
    return _ABSENT if sealed is None else hashlib.sha256(sealed).digest()[:16]


def _show(value: str, limit: int = 64) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _not_found() -> ApiError:
    return ApiError(404, "transaction_not_found",
                    "no such transaction for this API key (it may have been purged)")


def _canon_isolation(raw: object) -> str:
    if raw is None:
        return DEFAULT_ISOLATION
    key = raw.replace("_", "").replace(" ", "").lower() if isinstance(raw, str) else None
    if key not in ISOLATION_LEVELS:
        raise ApiError(400, "validation_error",
                       f"isolation_level must be one of {', '.join(ISOLATION_LEVELS.values())}")
    return ISOLATION_LEVELS[key]


@dataclass
class _Row:
    tidx: bytes
    txid: str
    owner: str
    isolation: str
    state: str
    created: float
    touched: float
    seq: int
    savepoints: list[dict[str, Any]]


class _Overlay:
    """One operation's view of its transaction (see the module docstring)."""

    def __init__(self, owner: Transactions, row: _Row) -> None:
        self._tx = owner
        self._ds = owner._ds
        self.row = row
        self._strict = row.isolation in ("RepeatableRead", "Serializable")

    # -- the Overlay protocol of mock_server.datastore

    def load(self, conn: sqlite3.Connection, collection: str, cidx: bytes,
             record_id: str) -> dict[str, Any] | None:
        ridx = self._ds._ridx(collection, record_id)
        staged = self._staged(conn, cidx, ridx)
        if staged is not None:
            return staged[1]
        row = conn.execute("SELECT data FROM ds_records WHERE cidx = ? AND ridx = ?",
                           (cidx, ridx)).fetchone()
        sealed = None if row is None else bytes(row[0])
        self._base(conn, collection, cidx, ridx, record_id, _version(sealed))
        return None if sealed is None else self._ds._open(collection, record_id, sealed)

    def scan(self, conn: sqlite3.Connection, collection: str,
             cidx: bytes) -> Iterator[dict[str, Any]]:
        staged = self._staged_all(conn, cidx)
        digest = hashlib.sha256()
        out: list[dict[str, Any]] = []
        for ridx, rid, data in conn.execute(
                "SELECT ridx, rid, data FROM ds_records WHERE cidx = ? ORDER BY seq",
                (cidx,)).fetchall():
            ridx = bytes(ridx)
            digest.update(ridx + _version(bytes(data)))
            if ridx in staged:
                record = staged.pop(ridx)
                if record is not None:
                    out.append(record)
                continue
            out.append(self._ds._open(collection, self._ds._open_id(collection, ridx, rid),
                                      data))
        out.extend(r for r in staged.values() if r is not None)  # staged inserts, in order
        if self._strict:
            self._tx._remember_scan(conn, self.row, collection, cidx, digest.digest())
        yield from out

    def stage(self, conn: sqlite3.Connection, collection: str, cidx: bytes, record_id: str,
              record: Mapping[str, Any] | None, changes: Mapping[str, Any] | None) -> None:
        if self.row.seq >= MAX_WRITES:
            raise ApiError(413, "transaction_too_large",
                           f"a transaction stages at most {MAX_WRITES} writes; commit and "
                           "start another")
        self.row.seq += 1
        ridx = self._ds._ridx(collection, record_id)
        doc = {"c": collection, "id": record_id, "data": record, "changes": changes}
        conn.execute("INSERT INTO ds_tx_writes(tidx, seq, cidx, ridx, sealed) VALUES (?,?,?,?,?)",
                     (self.row.tidx, self.row.seq, cidx, ridx,
                      self._tx._seal(self.row, "write", str(self.row.seq), doc)))
        conn.execute("UPDATE ds_tx_reads SET written = ? WHERE tidx = ? AND cidx = ? AND "
                     "ridx = ? AND written IS NULL", (self.row.seq, self.row.tidx, cidx, ridx))

    # -- helpers

    def _staged(self, conn: sqlite3.Connection, cidx: bytes,
                ridx: bytes) -> tuple[bool, dict[str, Any] | None] | None:
        row = conn.execute("SELECT seq, sealed FROM ds_tx_writes WHERE tidx = ? AND cidx = ? "
                           "AND ridx = ? ORDER BY seq DESC LIMIT 1",
                           (self.row.tidx, cidx, ridx)).fetchone()
        if row is None:
            return None
        doc = self._tx._open(self.row, "write", str(row[0]), row[1])
        return True, doc["data"]

    def _staged_all(self, conn: sqlite3.Connection,
                    cidx: bytes) -> dict[bytes, dict[str, Any] | None]:
        """Latest staged state per record of one collection, in first-staged order."""
        out: dict[bytes, dict[str, Any] | None] = {}
        for seq, ridx, sealed in conn.execute(
                "SELECT seq, ridx, sealed FROM ds_tx_writes WHERE tidx = ? AND cidx = ? "
                "ORDER BY seq", (self.row.tidx, cidx)).fetchall():
            out[bytes(ridx)] = self._tx._open(self.row, "write", str(seq), sealed)["data"]
        return out

    def _base(self, conn: sqlite3.Connection, collection: str, cidx: bytes, ridx: bytes,
              record_id: str, version: bytes) -> None:
        """Remember the committed version first seen (strict levels: it may not move)."""
        row = conn.execute("SELECT version FROM ds_tx_reads WHERE tidx = ? AND cidx = ? AND "
                           "ridx = ?", (self.row.tidx, cidx, ridx)).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO ds_tx_reads(tidx, cidx, ridx, seq, version, written, sealed) "
                "VALUES (?,?,?,?,?,NULL,?)",
                (self.row.tidx, cidx, ridx, self.row.seq, version,
                 self._tx._seal(self.row, "read", cidx.hex() + ridx.hex(),
                                {"c": collection, "id": record_id})))
        elif self._strict and bytes(row[0]) != version:
            raise ApiError(409, "transaction_conflict",
                           f"record {_show(record_id)} of {_show(collection)} changed since "
                           f"this {self.row.isolation} transaction read it; roll back and "
                           "retry the transaction")


class Transactions:
    """Begin, run operations in, commit and roll back client transactions."""

    def __init__(self, storage: Storage, keyring: KeyRing, datastore: DataStore, *,
                 ttl: float = 300.0, clock: Callable[[], float] = time.time) -> None:
        self._storage = storage
        self._keyring = keyring
        self._ds = datastore
        self.ttl = ttl
        self._clock = clock

    # ---------------------------------------------------------------- sealing

    def _seal(self, row: _Row, kind: str, where: str, doc: object) -> bytes:
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return self._keyring.encrypt(_SERVICE, "", text.encode(),
                                     aad("tx-" + kind, row.tidx.hex(), where))

    def _open(self, row: _Row, kind: str, where: str, sealed: bytes) -> Any:
        try:
            plain = self._keyring.decrypt(_SERVICE, "", bytes(sealed),
                                          aad("tx-" + kind, row.tidx.hex(), where))
        except DecryptionError:
            raise ApiError(500, "integrity_error",
                           "a staged transaction write failed its integrity check") from None
        return json.loads(plain)

    def _tidx(self, txid: str) -> bytes:
        return self._keyring.blind_index(_SERVICE, "id", txid)

    # ---------------------------------------------------------------- rows

    def _row(self, conn: sqlite3.Connection, caller: Caller, txid: object) -> _Row:
        """The caller's transaction (404 for unknown ids and for other keys' ones)."""
        if not isinstance(txid, str) or not _TX_ID.fullmatch(txid):
            raise _not_found()
        tidx = self._tidx(txid)
        got = conn.execute("SELECT owner, isolation, state, created, touched, seq, savepoints "
                           "FROM ds_transactions WHERE tidx = ?", (tidx,)).fetchone()
        if got is None or got[0] != caller.key_id:
            raise _not_found()
        row = _Row(tidx, txid, got[0], got[1], got[2], got[3], got[4], got[5], [])
        row.savepoints = self._savepoints_of(row, got[6])
        if row.state == "active" and row.touched < self._clock() - self.ttl:
            row.state = "expired"  # purged by the next sweep (an error here rolls back)
        return row

    def _active(self, conn: sqlite3.Connection, caller: Caller, txid: object) -> _Row:
        row = self._row(conn, caller, txid)
        if row.state == "expired":
            raise ApiError(404, "transaction_expired",
                           f"the transaction expired after {self.ttl:g} s without an "
                           "operation and its writes were discarded; start a new one")
        if row.state != "active":
            raise ApiError(409, "transaction_not_active",
                           f"the transaction is already {row.state.replace('_', ' ')}")
        return row

    def _save(self, conn: sqlite3.Connection, row: _Row) -> None:
        row.touched = self._clock()
        conn.execute("UPDATE ds_transactions SET state = ?, touched = ?, seq = ?, "
                     "savepoints = ? WHERE tidx = ?",
                     (row.state, row.touched, row.seq,
                      self._seal(row, "savepoints", "", row.savepoints), row.tidx))

    def _savepoints_of(self, row: _Row, stored: str | bytes) -> list[dict[str, Any]]:
        """Savepoint names are the caller's data: sealed like staged writes (a row written
        before they were, or never saved, holds the clear default ``'[]'``)."""
        if isinstance(stored, str):
            loaded: list[dict[str, Any]] = json.loads(stored)
            return loaded
        opened: list[dict[str, Any]] = self._open(row, "savepoints", "", stored)
        return opened

    def _finish(self, conn: sqlite3.Connection, row: _Row, state: str) -> None:
        """End the transaction: purge what it staged, keep a tombstone with its outcome."""
        for table in ("ds_tx_writes", "ds_tx_reads", "ds_tx_scans"):
            conn.execute(f"DELETE FROM {table} WHERE tidx = ?", (row.tidx,))  # noqa: S608
        row.state, row.savepoints = state, []
        self._save(conn, row)

    def sweep(self) -> None:
        """The server's periodic task: expire abandoned transactions even when no other
        transaction call comes to sweep (their staged writes leave the disk)."""
        cutoff = self._clock() - self.ttl
        if not self._storage.conn.execute(  # a cheap read first: most rounds find nothing
                "SELECT 1 FROM ds_transactions WHERE (state = 'active' AND touched < ?) OR "
                "(state != 'active' AND touched < ?) LIMIT 1",
                (cutoff, self._clock() - max(self.ttl, TOMBSTONE_SECONDS))).fetchone():
            return
        with self._storage.transaction() as conn:
            self._sweep(conn)

    def _sweep(self, conn: sqlite3.Connection) -> None:
        """Expire abandoned transactions (purging their writes) and drop old tombstones."""
        now = self._clock()
        for (tidx,) in conn.execute("SELECT tidx FROM ds_transactions WHERE state = 'active' "
                                    "AND touched < ?", (now - self.ttl,)).fetchall():
            for table in ("ds_tx_writes", "ds_tx_reads", "ds_tx_scans"):
                conn.execute(f"DELETE FROM {table} WHERE tidx = ?", (tidx,))  # noqa: S608
            conn.execute("UPDATE ds_transactions SET state = 'expired', touched = ? "
                         "WHERE tidx = ?", (now, tidx))
        conn.execute("DELETE FROM ds_transactions WHERE state IN ('committed', 'rolled_back', "
                     "'aborted', 'expired') AND touched < ?",
                     (now - max(self.ttl, TOMBSTONE_SECONDS),))

    def _remember_scan(self, conn: sqlite3.Connection, row: _Row, collection: str,
                       cidx: bytes, digest: bytes) -> None:
        got = conn.execute("SELECT digest FROM ds_tx_scans WHERE tidx = ? AND cidx = ?",
                           (row.tidx, cidx)).fetchone()
        if got is None:
            conn.execute("INSERT INTO ds_tx_scans(tidx, cidx, seq, digest, sealed) "
                         "VALUES (?,?,?,?,?)",
                         (row.tidx, cidx, row.seq, digest,
                          self._seal(row, "scan", cidx.hex(), {"c": collection})))
        elif bytes(got[0]) != digest:
            raise ApiError(409, "transaction_conflict",
                           f"collection {_show(collection)} changed since this "
                           f"{row.isolation} transaction queried it; roll back and retry")

    # ---------------------------------------------------------------- lifecycle

    def begin(self, caller: Caller, body: object) -> dict[str, Any]:
        """``{"isolation_level"?}`` → ``{"transaction_id", "isolation_level", ...}``."""
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ApiError(400, "validation_error", "the body must be a JSON object")
        unknown = sorted(str(k) for k in body if k != "isolation_level")
        if unknown:
            raise ApiError(400, "validation_error",
                           f"unknown key {_show(unknown[0])}; the only key is 'isolation_level'")
        isolation = _canon_isolation(body.get("isolation_level"))
        txid = "tx_" + secrets.token_urlsafe(18)
        now = self._clock()
        with self._storage.transaction() as conn:
            self._sweep(conn)
            (active,) = conn.execute("SELECT COUNT(*) FROM ds_transactions WHERE owner = ? "
                                     "AND state = 'active'", (caller.key_id,)).fetchone()
            if active >= MAX_ACTIVE_PER_KEY:
                raise ApiError(409, "too_many_transactions",
                               f"this API key already has {active} open transactions; "
                               "commit or roll some back first")
            conn.execute("INSERT INTO ds_transactions(tidx, owner, isolation, state, created, "
                         "touched) VALUES (?,?,?,'active',?,?)",
                         (self._tidx(txid), caller.key_id, isolation, now, now))
        return {"transaction_id": txid, "isolation_level": isolation, "status": "active",
                "expires_in": self.ttl}

    def status(self, caller: Caller, txid: object) -> dict[str, Any]:
        conn = self._storage.conn
        row = self._row(conn, caller, txid)
        (writes,) = conn.execute("SELECT COUNT(*) FROM ds_tx_writes WHERE tidx = ?",
                                 (row.tidx,)).fetchone()
        return {"transaction_id": row.txid, "status": row.state,
                "isolation_level": row.isolation, "operations": writes,
                "savepoints": [s["name"] for s in row.savepoints],
                "created_at": row.created,
                "expires_at": row.touched + self.ttl if row.state == "active" else None}

    def within(self, caller: Caller, txid: object, op: Callable[..., T], *args: Any,
               **kwargs: Any) -> T:
        """Run one DataStore operation inside the transaction (atomically: a failing
        operation stages nothing)."""
        with self._storage.transaction() as conn:
            row = self._active(conn, caller, txid)
            token = OVERLAY.set(_Overlay(self, row))
            try:
                result = op(*args, **kwargs)
            finally:
                OVERLAY.reset(token)
            self._save(conn, row)
        return result

    def rollback(self, caller: Caller, txid: object) -> dict[str, Any]:
        """Discard everything; repeating it answers the same."""
        with self._storage.transaction() as conn:
            self._sweep(conn)
            row = self._row(conn, caller, txid)
            if row.state == "committed":
                raise ApiError(409, "transaction_not_active",
                               "the transaction is already committed")
            if row.state == "active":
                self._finish(conn, row, "rolled_back")
        return {"transaction_id": row.txid, "status": row.state}

    def commit(self, caller: Caller, txid: object) -> dict[str, Any]:
        """Apply every staged write at once, or none (409 naming what conflicted)."""
        try:
            with self._storage.transaction() as conn:
                self._sweep(conn)
                row = self._row(conn, caller, txid)
                if row.state == "committed":  # a repeated commit: same answer
                    return {"transaction_id": row.txid, "status": "committed"}
                row = self._active(conn, caller, txid)
                conflicts = self._conflicts(conn, row)
                if conflicts:
                    raise ApiError(409, "transaction_conflict",
                                   "commit refused, the transaction is rolled back: another "
                                   "write changed " + "; ".join(conflicts[:20]))
                applied = self._apply(conn, caller, row)
                self._finish(conn, row, "committed")
        except ApiError as exc:
            if exc.code in ("transaction_not_found", "transaction_expired",
                            "transaction_not_active", "integrity_error"):
                raise
            # everything above rolled back; end the transaction in a transaction of its own
            with self._storage.transaction() as conn:
                row = self._row(conn, caller, txid)
                if row.state == "active":
                    self._finish(conn, row, "aborted")
            if exc.status == 403 or exc.code == "transaction_conflict":
                raise
            raise ApiError(409, "transaction_conflict",
                           f"commit refused, the transaction is rolled back: {exc.message}"
                           ) from None
        return {"transaction_id": row.txid, "status": "committed", "operations": applied}

    def _conflicts(self, conn: sqlite3.Connection, row: _Row) -> list[str]:
        strict = row.isolation in ("RepeatableRead", "Serializable")
        out: list[str] = []
        for cidx, ridx, version, written, sealed in conn.execute(
                "SELECT cidx, ridx, version, written, sealed FROM ds_tx_reads WHERE tidx = ?",
                (row.tidx,)).fetchall():
            if written is None and not strict:
                continue
            now = conn.execute("SELECT data FROM ds_records WHERE cidx = ? AND ridx = ?",
                               (cidx, ridx)).fetchone()
            if _version(None if now is None else bytes(now[0])) != bytes(version):
                doc = self._open(row, "read", bytes(cidx).hex() + bytes(ridx).hex(), sealed)
                out.append(f"record {_show(doc['id'])} of {_show(doc['c'])}")
        if strict:
            for cidx, digest, sealed in conn.execute(
                    "SELECT cidx, digest, sealed FROM ds_tx_scans WHERE tidx = ?",
                    (row.tidx,)).fetchall():
                current = hashlib.sha256()
                for ridx, data in conn.execute("SELECT ridx, data FROM ds_records WHERE "
                                               "cidx = ? ORDER BY seq", (cidx,)).fetchall():
                    current.update(bytes(ridx) + _version(bytes(data)))
                if current.digest() != bytes(digest):
                    doc = self._open(row, "scan", bytes(cidx).hex(), sealed)
                    out.append(f"collection {_show(doc['c'])} (queried by this transaction)")
        return out

    def _apply(self, conn: sqlite3.Connection, caller: Caller, row: _Row) -> int:
        """Write each record's last staged state through the DataStore (events, audit)."""
        latest: dict[tuple[bytes, bytes], tuple[int, bytes]] = {}
        for seq, cidx, ridx, sealed in conn.execute(
                "SELECT seq, cidx, ridx, sealed FROM ds_tx_writes WHERE tidx = ? ORDER BY seq",
                (row.tidx,)).fetchall():
            latest[(bytes(cidx), bytes(ridx))] = (seq, sealed)
        ds = self._ds
        count = 0
        with ds._writing() as tx:
            for (cidx, _ridx), (seq, sealed) in sorted(latest.items(), key=lambda i: i[1][0]):
                doc = self._open(row, "write", str(seq), sealed)
                name, rid, data = doc["c"], doc["id"], doc["data"]
                self._recheck(caller, name, conn, row, cidx, _ridx)
                ds._exists(tx.conn, name)
                current = ds._load(tx.conn, name, cidx, rid)
                if data is None:
                    if current is not None:
                        ds._remove(tx, name, cidx, rid, caller, "record.delete")
                        count += 1
                    continue
                body = {k: v for k, v in data.items() if k != "id"}
                if current is None:
                    ds._put_new(tx, name, cidx, body, caller, "record.insert", record_id=rid)
                else:
                    ds._put_update(tx, name, cidx, rid, current, body, caller,
                                   "record.update", whole=True)
                count += 1
        return count

    def _recheck(self, caller: Caller, collection: str, conn: sqlite3.Connection, row: _Row,
                 cidx: bytes, ridx: bytes) -> None:
        """The key may have been narrowed since the operation: check its rights again."""
        try:
            caller.scope.require(collection, Level.WRITE)
        except PermissionDenied as exc:
            raise ApiError(403, "forbidden", str(exc)) from None
        for seq, sealed in conn.execute(
                "SELECT seq, sealed FROM ds_tx_writes WHERE tidx = ? AND cidx = ? AND ridx = ?",
                (row.tidx, cidx, ridx)).fetchall():
            changes = self._open(row, "write", str(seq), sealed)["changes"]
            if changes:
                self._ds._require_fields(caller, collection, changes)

    # ---------------------------------------------------------------- savepoints

    def _savepoint_name(self, name: object) -> str:
        if not isinstance(name, str) or not _SAVEPOINT.fullmatch(name):
            raise ApiError(400, "validation_error",
                           "a savepoint name is 1-64 characters of A-Z a-z 0-9 _ -")
        return name

    def _find_savepoint(self, row: _Row, name: str) -> int:
        for i in range(len(row.savepoints) - 1, -1, -1):
            if row.savepoints[i]["name"] == name:
                return i
        raise ApiError(404, "savepoint_not_found", f"no savepoint named {_show(name)} in this "
                       "transaction (rolling back to or releasing an earlier one removes it)")

    def savepoint(self, caller: Caller, txid: object, body: object) -> dict[str, Any]:
        """``{"name"}``: mark the current point (a repeated name shadows the older one)."""
        if not isinstance(body, dict) or set(body) != {"name"}:
            raise ApiError(400, "validation_error", "the body must be {\"name\": ...}")
        name = self._savepoint_name(body["name"])
        with self._storage.transaction() as conn:
            row = self._active(conn, caller, txid)
            if len(row.savepoints) >= MAX_SAVEPOINTS:
                raise ApiError(409, "too_many_savepoints",
                               f"a transaction holds at most {MAX_SAVEPOINTS} savepoints")
            row.savepoints.append({"name": name, "seq": row.seq})
            self._save(conn, row)
        return {"transaction_id": row.txid, "savepoint": name}

    def rollback_to(self, caller: Caller, txid: object, name: object) -> dict[str, Any]:
        """Undo what was staged after the savepoint; the savepoint stays."""
        name = self._savepoint_name(name)
        with self._storage.transaction() as conn:
            row = self._active(conn, caller, txid)
            i = self._find_savepoint(row, name)
            mark = int(row.savepoints[i]["seq"])
            conn.execute("DELETE FROM ds_tx_writes WHERE tidx = ? AND seq > ?", (row.tidx, mark))
            conn.execute("DELETE FROM ds_tx_reads WHERE tidx = ? AND seq > ?", (row.tidx, mark))
            conn.execute("DELETE FROM ds_tx_scans WHERE tidx = ? AND seq > ?", (row.tidx, mark))
            conn.execute("UPDATE ds_tx_reads SET written = NULL WHERE tidx = ? AND written > ?",
                         (row.tidx, mark))
            row.savepoints = row.savepoints[:i + 1]
            row.seq = mark
            self._save(conn, row)
        return {"transaction_id": row.txid, "savepoint": name, "status": "rolled_back_to"}

    def release(self, caller: Caller, txid: object, name: object) -> dict[str, Any]:
        """Forget the savepoint (and later ones); what was staged stays."""
        name = self._savepoint_name(name)
        with self._storage.transaction() as conn:
            row = self._active(conn, caller, txid)
            i = self._find_savepoint(row, name)
            row.savepoints = row.savepoints[:i]
            self._save(conn, row)
        return {"transaction_id": row.txid, "released": name}
