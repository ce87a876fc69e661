"""Trash and record TTL (issue 15 item 6). Framework-free.

Trash. Every record a caller deletes (one, a batch, or by filter: all go through the
DataStore's one removal path) is copied into ``ds_trash`` in the same transaction, still
sealed: the ciphertexts are moved, never decrypted, and their associated data (collection,
record id) is unchanged, so a restored record opens exactly as before. A record is
restorable for ``retention`` seconds and only into the collection it left: a trash row older
than the collection's creation (the collection was dropped and made again) is never
restored. Restoring needs WRITE on the collection and the right to write every field of the
record (a key with ``writable_fields`` cannot bring back fields it could not have written);
it publishes an ``insert`` change event. A record whose id is live again is not restored (409).
A restored record must satisfy the collection's schema as it is now, ``unique`` included
(400 naming the field, like an insert): the schema may have changed since the delete.

Record TTL. ``insert`` with a ``ttl`` (seconds or a duration such as ``"1h"``) schedules the
record's expiry in ``ds_expiry`` in the insert's own transaction. The sweeper deletes due
records through :meth:`DataStore.delete` as a system caller, so the deletion is audited and
emits the DataBus ``delete`` event like any other; expired records skip the trash (expiry
means gone). Deleting a record drops its expiry, so a restored record has no TTL and an id
upserted later is a new record; a dropped collection's expiries never touch its successor.
A record disappears at most one sweep interval (0.25 s by default) after its
TTL. This module reaches into DataStore internals (sealing, rows, events): it is its
companion, kept apart so the DataStore stays readable.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from mock_server.crypto import KeyRing, aad
from mock_server.datastore import Caller, DataStore, _check_collection
from mock_server.errors import ApiError, bad_request, conflict
from mock_server.kv import parse_ttl
from mock_server.permissions import Level, Scope
from mock_server.storage import Storage, register_schema

__all__ = ["EXPIRY_CALLER", "RecordTtl", "Trash"]

_SERVICE: Final = "datastore-ttl"
EXPIRE_BATCH: Final = 500

register_schema(
    """
    CREATE TABLE IF NOT EXISTS ds_trash (
        cidx BLOB NOT NULL,
        ridx BLOB NOT NULL,
        rid BLOB NOT NULL,
        data BLOB NOT NULL,
        deleted_at REAL NOT NULL,
        PRIMARY KEY (cidx, ridx)
    );
    CREATE INDEX IF NOT EXISTS ds_trash_age ON ds_trash(deleted_at);
    CREATE TABLE IF NOT EXISTS ds_expiry (
        cidx BLOB NOT NULL,
        ridx BLOB NOT NULL,
        name BLOB NOT NULL,
        rid BLOB NOT NULL,
        expires_at REAL NOT NULL,
        scheduled_at REAL NOT NULL,
        PRIMARY KEY (cidx, ridx)
    );
    CREATE INDEX IF NOT EXISTS ds_expiry_due ON ds_expiry(expires_at);
    """
)


@dataclass(frozen=True)
class _System:
    """The caller the sweeper deletes expired records as (audited under this id)."""

    key_id: str
    label: str
    scope: Scope


EXPIRY_CALLER: Final = _System("system:ttl", "record-ttl",
                               Scope(is_admin=True, read_only=False, rules={}))


class Trash:
    """Deleted records kept restorable for ``retention`` seconds."""

    def __init__(self, datastore: DataStore, storage: Storage, *, retention: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._ds = datastore
        self._storage = storage
        self._retention = retention
        self._clock = clock
        datastore.removal_hooks.append(self._keep)

    def _keep(self, conn: sqlite3.Connection, collection: str, cidx: bytes, record_id: str,
              caller: Caller) -> None:
        if caller.key_id == EXPIRY_CALLER.key_id:
            return
        conn.execute(
            "INSERT OR REPLACE INTO ds_trash(cidx, ridx, rid, data, deleted_at) "
            "SELECT cidx, ridx, rid, data, ? FROM ds_records WHERE cidx = ? AND ridx = ?",
            (self._clock(), cidx, self._ds._ridx(collection, record_id)))

    def _since(self, conn: sqlite3.Connection, cidx: bytes) -> float:
        """Oldest deletion time still restorable into this collection."""
        (created,) = conn.execute("SELECT created_at FROM ds_collections WHERE cidx = ?",
                                  (cidx,)).fetchone()
        return max(float(created), self._clock() - self._retention)

    def restore(self, caller: Caller, collection: object, record_id: object) -> dict[str, Any]:
        """→ ``{"restored": true, "id"}``; 404 when not in the trash (or past retention)."""
        name = _check_collection(collection)
        self._ds._require(caller, name, Level.WRITE)
        if not isinstance(record_id, str) or not 1 <= len(record_id) <= 64:
            raise ApiError(404, "not_found", "record not in the trash")
        with self._ds._writing() as tx:
            cidx = self._ds._exists(tx.conn, name)
            ridx = self._ds._ridx(name, record_id)
            row = tx.conn.execute(
                "SELECT rid, data FROM ds_trash WHERE cidx = ? AND ridx = ? AND deleted_at >= ?",
                (cidx, ridx, self._since(tx.conn, cidx))).fetchone()
            if row is None:
                raise ApiError(404, "not_found", "record not in the trash (never deleted, "
                               "already restored, or past the retention window)")
            self._bring_back(tx, caller, name, cidx, ridx, record_id, row[0], row[1])
        return {"restored": True, "id": record_id}

    def restore_all(self, caller: Caller, collection: object) -> dict[str, Any]:
        """→ ``{"records_restored": n}``. All or nothing on permissions: a record the key
        may not fully write refuses the whole request (403); ids live again are skipped."""
        name = _check_collection(collection)
        self._ds._require(caller, name, Level.WRITE)
        restored = 0
        with self._ds._writing() as tx:
            cidx = self._ds._exists(tx.conn, name)
            rows = tx.conn.execute(
                "SELECT ridx, rid, data FROM ds_trash WHERE cidx = ? AND deleted_at >= ? "
                "ORDER BY deleted_at", (cidx, self._since(tx.conn, cidx))).fetchall()
            for ridx, rid, data in rows:
                if tx.conn.execute("SELECT 1 FROM ds_records WHERE cidx = ? AND ridx = ?",
                                   (cidx, ridx)).fetchone():
                    continue
                record_id = self._ds._open_id(name, ridx, rid)
                self._bring_back(tx, caller, name, cidx, ridx, record_id, rid, data)
                restored += 1
        return {"records_restored": restored}

    def _bring_back(self, tx: Any, caller: Caller, name: str, cidx: bytes, ridx: bytes,
                    record_id: str, rid: bytes, data: bytes) -> None:
        record = self._ds._open(name, record_id, data)
        fields = {k: v for k, v in record.items() if k != "id"}
        self._ds._require_fields(caller, name, fields)
        # the schema as it is now (unique included): a restore is a write like an insert
        conformed = self._ds._conform(tx.conn, name, cidx, record, new=True)
        if conformed != record:  # a default filled in since: seal the record as restored
            record, data = conformed, self._ds._seal(name, record_id, conformed)
        try:
            tx.conn.execute("INSERT INTO ds_records(cidx, ridx, rid, data) VALUES (?,?,?,?)",
                            (cidx, ridx, rid, data))
        except sqlite3.IntegrityError:
            raise conflict("a record with this id exists again; delete it before restoring",
                           "record_exists") from None
        tx.conn.execute("DELETE FROM ds_trash WHERE cidx = ? AND ridx = ?", (cidx, ridx))
        self._ds._record(tx, caller, "record.restore", name, record_id, "insert", record,
                         fields=sorted(fields))

    def purge(self) -> int:
        """Drop trash past retention, and trash of collections that no longer exist."""
        cutoff = self._clock() - self._retention
        if not self._storage.conn.execute(  # a cheap read first: most rounds find nothing
                "SELECT 1 FROM ds_trash WHERE deleted_at < ? OR cidx NOT IN "
                "(SELECT cidx FROM ds_collections) LIMIT 1", (cutoff,)).fetchone():
            return 0
        with self._storage.transaction() as conn:
            old = conn.execute("DELETE FROM ds_trash WHERE deleted_at < ?",
                               (cutoff,)).rowcount
            orphans = conn.execute("DELETE FROM ds_trash WHERE cidx NOT IN "
                                   "(SELECT cidx FROM ds_collections)").rowcount
        return int(old) + int(orphans)


class RecordTtl:
    """Inserts with a time to live, and the sweeper task that expires them."""

    def __init__(self, datastore: DataStore, storage: Storage, keyring: KeyRing, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._ds = datastore
        self._storage = storage
        self._keyring = keyring
        self._clock = clock
        datastore.removal_hooks.append(self._forget)

    def _forget(self, conn: sqlite3.Connection, collection: str, cidx: bytes, record_id: str,
                caller: Caller) -> None:
        """A deleted record's expiry goes with it (an id upserted later is a new record)."""
        conn.execute("DELETE FROM ds_expiry WHERE cidx = ? AND ridx = ?",
                     (cidx, self._ds._ridx(collection, record_id)))

    def insert(self, caller: Caller, collection: object, record: object,
               query_ttl: str | None = None) -> dict[str, Any]:
        """An insert whose body (ekoDB's shape) or ``?ttl=`` may carry a ``ttl``."""
        ttl: object = query_ttl
        if isinstance(record, dict) and "ttl" in record:
            if query_ttl is not None:
                raise bad_request("give ttl once: in the body or as a query parameter",
                                  "validation_error")
            ttl = record["ttl"]
            record = {k: v for k, v in record.items() if k != "ttl"}
        return self._insert(caller, collection, record, ttl)

    def _insert(self, caller: Caller, collection: object, record: object,
                ttl: object) -> dict[str, Any]:
        seconds = parse_ttl(ttl)
        if seconds is None:
            return self._ds.insert(caller, collection, record)
        with self._storage.transaction() as conn:
            stored = self._ds.insert(caller, collection, record)
            name = _check_collection(collection)
            self._schedule(conn, name, str(stored["id"]), self._clock() + seconds)
        return stored

    def _schedule(self, conn: sqlite3.Connection, collection: str, record_id: str,
                  expires_at: float) -> None:
        cidx = self._ds._cidx(collection)
        ridx = self._ds._ridx(collection, record_id)
        place = aad("expiry", ridx.hex())
        conn.execute(
            "INSERT OR REPLACE INTO ds_expiry(cidx, ridx, name, rid, expires_at, scheduled_at) "
            "VALUES (?,?,?,?,?,?)",
            (cidx, ridx, self._keyring.encrypt(_SERVICE, "", collection.encode(), place),
             self._keyring.encrypt(_SERVICE, "", record_id.encode(), place), expires_at,
             self._clock()))

    def expire_due(self) -> int:
        """Delete the records whose TTL has passed (sweeper task); how many went."""
        rows = self._storage.conn.execute(
            "SELECT e.cidx, e.ridx, e.name, e.rid, e.scheduled_at >= c.created_at "
            "FROM ds_expiry e LEFT JOIN ds_collections c ON c.cidx = e.cidx "
            "WHERE e.expires_at <= ? ORDER BY e.expires_at LIMIT ?",
            (self._clock(), EXPIRE_BATCH)).fetchall()
        gone = 0
        for cidx, ridx, sealed_name, sealed_rid, same_collection in rows:
            place = aad("expiry", ridx.hex())
            name = self._keyring.decrypt(_SERVICE, "", sealed_name, place).decode()
            record_id = self._keyring.decrypt(_SERVICE, "", sealed_rid, place).decode()
            with self._storage.transaction() as conn:
                # re-read under the write lock: since the SELECT above the record may have
                # been deleted (dropping this row) and made again under its id (no TTL)
                if conn.execute("SELECT 1 FROM ds_expiry WHERE cidx = ? AND ridx = ? AND "
                                "expires_at <= ?", (cidx, ridx, self._clock())).fetchone() \
                        is None:
                    continue
                try:
                    if same_collection:  # not a dropped collection's name made again
                        self._ds.delete(EXPIRY_CALLER, name, record_id)
                        gone += 1
                except ApiError as exc:
                    if exc.status != 404:  # already deleted, or the collection dropped
                        raise
                conn.execute("DELETE FROM ds_expiry WHERE cidx = ? AND ridx = ?",
                             (cidx, ridx))
        return gone
