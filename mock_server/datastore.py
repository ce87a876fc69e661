"""DataStore domain: collections and encrypted records (SPEC §3, §4.1 field rules, §4.3, §4.6).

Framework-free: routes hand in the caller (key id, label, :class:`Scope`) and raw JSON values;
every rule (levels, field rules, validation, encryption, audit, change events) lives here.

Storage. A record row holds ``cidx`` (blind index of the collection name), ``ridx`` (blind
index of the record id, keyed per collection), the record id encrypted under
``aad("record-id", collection, ridx)`` and the content encrypted under
``aad("record", collection, id)`` with a per-collection key. A fetch by id is one indexed
lookup; an id of another collection or a tampered id simply has no row (404). A ciphertext
copied to another row or collection fails authentication: we fail closed with 500
``integrity_error`` (no details) rather than pretend the record does not exist, because
tampering is an operator problem that must not look like a normal miss.

Decisions worth knowing:

- Permission order: the collection-level right (403) is checked before existence (404), so a
  key learns nothing about collections it may not touch; within a collection it may read, an
  unknown / foreign / tampered id is 404.
- Field names are ``[A-Za-z0-9_-]+`` (no dots): every stored field can then be named by a
  filter and by a field rule. ``id`` and top-level ``_`` fields are the server's (400).
- Update deep-merges nested objects; a value of null sets null (it does not delete the
  field); an empty object or any non-object value replaces what was there. Replacing a
  non-object by an object counts as writing that path (so field rules cannot be bypassed).
- Batches: the body's shape, the size limit (413 ``batch_too_large``) and the collection-level
  right are checked for the whole request; each item's content (system or forbidden fields,
  unknown id) fails that item only. A batch is one transaction.
- Dropping a collection publishes no per-record change events (only an audit record).
- Client transactions (:mod:`mock_server.transactions`) run these same methods with
  :data:`OVERLAY` set: the row primitives (``_load``, ``_scan``, ``_put_*``, ``_remove``)
  then read and stage through the transaction, so every check above applies inside it.
- A collection's schema (:mod:`mock_server.schemas`) is applied in ``_put_new`` and
  ``_put_update``, so every write path (single, batch, transaction commit) honours it.
- Declared indexes (:mod:`mock_server.indexes`) are rewritten in ``_record``, which every
  committed record write passes (trash restores too); a trigger removes them with the row.
  Finds use them only outside client transactions (staged writes are not indexed).
- A find without a sort streams its scan (one statement, closed when the page is full:
  ``skip + limit + 1`` matches) and a cursor starts it in SQL (``seq > ?``). Every record
  read is opened whole, id first: the content's associated data names the id, so a filter
  cannot skip the id's decryption (that would take another storage format).
"""

from __future__ import annotations

import contextvars
import copy
import json
import logging
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from mock_server.audit import AuditLog
from mock_server.changes import Change, ChangeFeed, Operation
from mock_server.compat import BATCH_OPTIONS, FIND_OPTIONS, ITEM_OPTIONS, strip_options
from mock_server.crypto import Aead, DecryptionError, KeyRing, aad
from mock_server.errors import ApiError, bad_request, forbidden
from mock_server.indexes import INDEX_SCHEMA, BlindIndex, indexed_fields, plan
from mock_server.permissions import (
    Level,
    PermissionDenied,
    PermissionSpecError,
    Scope,
    project_record,
    validate_resource_name,
)
from mock_server.query import (
    Filter,
    QueryError,
    decode_cursor,
    encode_cursor,
    keyset_page,
    parse_filter,
    parse_page,
    parse_sort,
    validate_field_path,
)
from mock_server.schemas import (
    Schema,
    SchemaStore,
    check_existing,
    check_unique,
    parse_constraints,
    parse_schema,
)
from mock_server.storage import Storage, WouldWait, on_loop, register_schema

__all__ = ["MAX_BATCH", "OVERLAY", "Caller", "DataStore", "FindPage", "Overlay",
           "merge_changes"]

log = logging.getLogger("mock_server.datastore")

MAX_BATCH: Final = 1000
MAX_ID_LENGTH: Final = 64
MAX_FIELD_LIST: Final = 256
ID_BYTES: Final = 16  # 128 random bits, urlsafe base64 -> 22 characters
DEFAULT_LIMIT: Final = 100
#: What opening one stored record costs at least, in bytes of a find's ``inline_limit``.
INLINE_ROW_BYTES: Final = 1024
MAX_LIMIT: Final = 1000
_SERVICE: Final = "datastore"
_FIELD_NAME: Final = re.compile(r"[A-Za-z0-9_-]+")
_CLIENT_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_FIND_KEYS: Final = ("filter", "sort", "limit", "skip", "cursor", "select_fields",
                     "exclude_fields")


class TooLargeInline(WouldWait):
    """Work asked to stay cheap (on an event loop) met a large record, a transaction or a
    whole-collection scan: nothing was done, run it again from a worker thread (a
    :class:`~mock_server.storage.WouldWait`, as a held write lock is)."""


@dataclass(frozen=True)
class FindPage:
    """A find answer: the records, whether more match, and the cursor to get them."""

    records: list[dict[str, Any]]
    has_more: bool
    next_cursor: str | None

register_schema(
    """
    CREATE TABLE IF NOT EXISTS ds_collections (
        cidx BLOB PRIMARY KEY,
        name BLOB NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS ds_records (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        cidx BLOB NOT NULL,
        ridx BLOB NOT NULL,
        rid BLOB NOT NULL,
        data BLOB NOT NULL
    );
    CREATE UNIQUE INDEX IF NOT EXISTS ds_records_key ON ds_records(cidx, ridx);
    CREATE INDEX IF NOT EXISTS ds_records_scan ON ds_records(cidx, seq);
    """
)
register_schema(INDEX_SCHEMA)


class Caller(Protocol):
    """Who is asking (``mock_server.auth.Principal`` fits)."""

    @property
    def key_id(self) -> str: ...

    @property
    def label(self) -> str: ...

    @property
    def scope(self) -> Scope: ...


class Overlay(Protocol):
    """Where record reads and writes go while a client transaction runs an operation.

    Set in :data:`OVERLAY` by :mod:`mock_server.transactions` around one operation; every
    DataStore method then reads the transaction's own writes over the committed records and
    stages its writes instead of storing them (no audit, no change event until commit).
    """

    def load(self, conn: sqlite3.Connection, collection: str, cidx: bytes,
             record_id: str) -> dict[str, Any] | None: ...

    def scan(self, conn: sqlite3.Connection, collection: str,
             cidx: bytes) -> Iterator[dict[str, Any]]: ...

    def stage(self, conn: sqlite3.Connection, collection: str, cidx: bytes, record_id: str,
              record: Mapping[str, Any] | None, changes: Mapping[str, Any] | None) -> None: ...


#: The client transaction the current operation runs in (None: write for real).
OVERLAY: contextvars.ContextVar[Overlay | None] = contextvars.ContextVar(
    "ekodb_tx_overlay", default=None)


# --------------------------------------------------------------------------- helpers


def _invalid(message: str, code: str = "validation_error") -> ApiError:
    return bad_request(message, code)


def _integrity() -> ApiError:
    return ApiError(500, "integrity_error", "a stored record failed its integrity check")


def _denied(exc: PermissionDenied) -> ApiError:
    return forbidden(str(exc))


def _show(value: str, limit: int = 64) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _check_collection(name: object) -> str:
    """A bare collection name (no service prefix, no wildcard); 400 otherwise."""
    if isinstance(name, str) and ":" in name:
        raise _invalid(f"collection {_show(name)}: names may not contain ':'")
    try:
        return validate_resource_name(name)
    except PermissionSpecError as exc:
        raise _invalid(str(exc)) from None


def _check_names(value: Mapping[str, Any], prefix: str) -> str | None:
    """First invalid field name along nested objects and arrays of objects, else None."""
    for key, child in value.items():
        if not isinstance(key, str) or not _FIELD_NAME.fullmatch(key):
            return prefix + str(key)
        bad = _check_value_names(child, f"{prefix}{key}")
        if bad is not None:
            return bad
    return None


def _check_value_names(value: object, path: str) -> str | None:
    """Field rules reach into arrays (``items.secret``), so their objects' names must be
    addressable too."""
    if isinstance(value, Mapping):
        return _check_names(value, path + ".")
    if isinstance(value, list):
        for item in value:
            bad = _check_value_names(item, path)
            if bad is not None:
                return bad
    return None


def _check_write(value: object, what: str) -> dict[str, Any]:
    """A write body: a JSON object without system fields, with addressable field names."""
    if not isinstance(value, dict):
        raise _invalid(f"{what} must be a JSON object")
    system = sorted(k for k in value if isinstance(k, str) and (k == "id" or k.startswith("_")))
    if system:
        raise _invalid(
            f"{what} may not set system field(s) {', '.join(_show(k) for k in system[:5])}; "
            "'id' and fields starting with '_' belong to the server",
            "system_field",
        )
    bad = _check_names(value, "")
    if bad is not None:
        raise _invalid(
            f"{what} has an invalid field name {_show(bad)}; field names use only "
            "A-Z a-z 0-9 _ - (no dots), so every field can be named by filters and field rules"
        )
    return value


def _replaced_paths(current: Mapping[str, Any], changes: Mapping[str, Any],
                    prefix: str = "") -> list[str]:
    """Paths where a non-empty object replaces an existing non-object (a write of that path)."""
    out: list[str] = []
    for key, value in changes.items():
        if isinstance(value, Mapping) and value and key in current:
            old = current[key]
            if isinstance(old, Mapping):
                out.extend(_replaced_paths(old, value, f"{prefix}{key}."))
            else:
                out.append(prefix + key)
    return out


def merge_changes(record: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge: non-empty objects merge into objects, anything else (null too) replaces."""
    out = dict(record)
    for key, value in changes.items():
        old = out.get(key)
        if isinstance(value, Mapping) and value and isinstance(old, Mapping):
            out[key] = merge_changes(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _field_list(value: object, where: str) -> tuple[str, ...] | None:
    """A select/exclude option: null or a list of dotted paths (400 otherwise)."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise _invalid(f"{where}: expected an array of field paths")
    if len(value) > MAX_FIELD_LIST:
        raise _invalid(f"{where}: at most {MAX_FIELD_LIST} field paths are allowed")
    try:
        return tuple(validate_field_path(p, where=f"{where}[{i}]") for i, p in enumerate(value))
    except QueryError as exc:
        raise _invalid(str(exc)) from None


def split_fields(raw: str | None, where: str) -> tuple[str, ...] | None:
    """A comma-separated query parameter into validated paths ("" means no fields)."""
    if raw is None:
        return None
    return _field_list([p.strip() for p in raw.split(",")] if raw else [], where)


def _narrow(record: dict[str, Any], select: tuple[str, ...] | None,
            exclude: tuple[str, ...] | None) -> dict[str, Any]:
    """Apply the request's own select/exclude after the key's rules (can only narrow)."""
    if select is None and not exclude:
        return record
    return project_record(record, select,
                          tuple(p for p in exclude or () if p.split(".", 1)[0] != "id"))


#: Threads reading rows for a scan take turns (see _fetch_chunk).
_SCAN_LOCK: Final = threading.Lock()
#: Rows a scan reads per turn.
SCAN_CHUNK: Final = 64


def _fetch_chunk(cur: sqlite3.Cursor) -> list[Any]:
    """The next rows of a scan, read while no other thread reads scan rows.

    SQLite releases the GIL for every row it steps to; with several threads scanning at
    once, each row then hands the GIL to another thread and back (futex wake-ups, context
    switches). Reading in chunks, one scanner at a time, avoids most of that: 4 clients each
    scanning 200 records went from 4.0 to 2.0 ms of server CPU per find (2.65 with chunks
    but no turns; ``python -m bench.server --ops "find (scan)"``). The lock is never held
    across a ``yield``: a suspended scan must not block the others.
    """
    with _SCAN_LOCK:
        return cur.fetchmany(SCAN_CHUNK)


_raw_decode: Final = json.JSONDecoder().raw_decode


def _decode_json(text: str) -> Any:
    """``json.loads`` for the compact JSON we seal (no whitespace around it): half the
    cost, as it skips the whitespace scans; trailing bytes still fail."""
    value, end = _raw_decode(text)
    if end != len(text):
        raise json.JSONDecodeError("extra data", text, end)
    return value


def _aad_part(value: str) -> bytes:
    """``value`` as one escaped part of :func:`aad` (ids rarely need the escaping)."""
    return aad(value) if "|" in value or "\\" in value else value.encode()


class _RecordCipher:
    """One collection's record cipher and the constant head of its records' associated
    data, built once per collection: a scan opens thousands of records, and ``aad()``
    per record cost as much as the decryption. The bytes are exactly ``aad(...)``'s."""

    __slots__ = ("_body", "_rid", "aead")

    def __init__(self, cipher: Aead, collection: str) -> None:
        self.aead = cipher
        self._body = aad("record", collection, "")  # the record id follows
        self._rid = aad("record-id", collection, "")  # the blind id's hex follows

    def body_aad(self, record_id: str) -> bytes:
        """``aad("record", collection, record_id)``: binds a content to its record."""
        return self._body + _aad_part(record_id)

    def id_aad(self, ridx: bytes) -> bytes:
        """``aad("record-id", collection, ridx.hex())``: binds a sealed id to its row."""
        return self._rid + ridx.hex().encode()

    def open_row(self, ridx: bytes, rid: bytes, data: bytes) -> dict[str, Any]:
        """A stored row's record, ``id`` first (the content's associated data names the id,
        so the id is opened first); :class:`DecryptionError` when either part fails."""
        decrypt = self.aead.decrypt
        record_id = decrypt(rid, self._rid + ridx.hex().encode()).decode()
        body: dict[str, Any] = _decode_json(
            decrypt(data, self._body + _aad_part(record_id)).decode())
        return {"id": record_id, **body}


@dataclass
class _Tx:
    """One write transaction: its connection and the changes to publish with it."""

    conn: sqlite3.Connection
    changes: list[Change] = field(default_factory=list)


# --------------------------------------------------------------------------- the store


class DataStore:
    """Collections of JSON records, encrypted at rest, with the caller's rules enforced."""

    def __init__(self, storage: Storage, keyring: KeyRing, audit: AuditLog,
                 changes: ChangeFeed, *, max_batch: int = MAX_BATCH,
                 clock: Callable[[], float] = time.time) -> None:
        self._storage = storage
        self._keyring = keyring
        self._audit = audit
        self._changes = changes
        self._max_batch = max_batch
        self._clock = clock
        self._schemas = SchemaStore(keyring)
        self._indexes = BlindIndex(keyring)
        self._cidxs: dict[str, bytes] = {}  # collection name -> its blind index
        self._ciphers: dict[str, _RecordCipher] = {}  # collection name -> its record cipher
        #: Called inside the transaction just before a record row is deleted, with
        #: (connection, collection, cidx, record id, caller): the trash keeps a copy.
        self.removal_hooks: list[Callable[[sqlite3.Connection, str, bytes, str, Caller],
                                          None]] = []

    # ---------------------------------------------------------------- crypto & rows

    def _cidx(self, collection: str) -> bytes:
        known = self._cidxs.get(collection)  # an HMAC per request saved (names only)
        if known is None:
            known = self._keyring.blind_index(_SERVICE, "collection", collection)
            if len(self._cidxs) >= 4096:
                self._cidxs.clear()
            self._cidxs[collection] = known
        return known

    def _ridx(self, collection: str, record_id: str) -> bytes:
        return self._keyring.blind_index(_SERVICE + "-record", collection, record_id)

    def _cipher(self, collection: str) -> _RecordCipher:
        known = self._ciphers.get(collection)
        if known is None:
            known = _RecordCipher(self._keyring.aead(_SERVICE, collection), collection)
            if len(self._ciphers) >= 4096:
                self._ciphers.clear()
            self._ciphers[collection] = known
        return known

    def _seal(self, collection: str, record_id: str, record: Mapping[str, Any]) -> bytes:
        body = {k: v for k, v in record.items() if k != "id"}
        try:
            text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except ValueError:
            raise _invalid("NaN and Infinity are not JSON values") from None
        cipher = self._cipher(collection)
        return cipher.aead.encrypt(text.encode(), cipher.body_aad(record_id))

    def _open(self, collection: str, record_id: str, sealed: bytes) -> dict[str, Any]:
        cipher = self._cipher(collection)
        try:
            plain = cipher.aead.decrypt(sealed, cipher.body_aad(record_id))
        except DecryptionError:
            log.error("datastore: a record of a collection failed authentication")
            raise _integrity() from None
        body: dict[str, Any] = _decode_json(plain.decode())
        return {"id": record_id, **body}

    def _open_id(self, collection: str, ridx: bytes, sealed: bytes) -> str:
        cipher = self._cipher(collection)
        try:
            return cipher.aead.decrypt(sealed, cipher.id_aad(ridx)).decode()
        except DecryptionError:
            log.error("datastore: a record id failed authentication")
            raise _integrity() from None

    def _open_row(self, collection: str, ridx: bytes, rid: bytes,
                  data: bytes) -> dict[str, Any]:
        """:meth:`_open_id` then :meth:`_open` in one step (scans open thousands)."""
        try:
            return self._cipher(collection).open_row(ridx, rid, data)
        except DecryptionError:
            log.error("datastore: a stored record of a collection failed authentication")
            raise _integrity() from None

    def _exists(self, conn: sqlite3.Connection, collection: str) -> bytes:
        """The collection's index, or 404 telling the caller to create it."""
        cidx = self._cidx(collection)
        if conn.execute("SELECT 1 FROM ds_collections WHERE cidx = ?", (cidx,)).fetchone():
            return cidx
        raise ApiError(404, "collection_not_found",
                       f"collection {_show(collection)} does not exist; create it first "
                       f"(POST /api/collections/{collection})")

    def _load(self, conn: sqlite3.Connection, collection: str, cidx: bytes,
              record_id: object, inline_limit: int | None = None) -> dict[str, Any] | None:
        """One record by id through the blind index (never a scan); None if absent."""
        if not isinstance(record_id, str) or not 1 <= len(record_id) <= MAX_ID_LENGTH:
            return None
        if (overlay := OVERLAY.get()) is not None:
            if inline_limit is not None:
                raise TooLargeInline
            return overlay.load(conn, collection, cidx, record_id)
        row = conn.execute("SELECT data FROM ds_records WHERE cidx = ? AND ridx = ?",
                           (cidx, self._ridx(collection, record_id))).fetchone()
        if row is not None and inline_limit is not None and len(row[0]) > inline_limit:
            raise TooLargeInline
        return None if row is None else self._open(collection, record_id, row[0])

    def _scan(self, conn: sqlite3.Connection, collection: str,
              cidx: bytes) -> Generator[dict[str, Any], None, None]:
        """Every record of a collection, in insertion order. Never on the event loop
        (:func:`~mock_server.storage.on_loop`): a collection may be large."""
        if on_loop():
            raise TooLargeInline
        if (overlay := OVERLAY.get()) is not None:
            yield from overlay.scan(conn, collection, cidx)
            return
        cur = conn.execute(
            "SELECT ridx, rid, data FROM ds_records WHERE cidx = ? ORDER BY seq", (cidx,))
        try:
            while rows := _fetch_chunk(cur):
                for ridx, rid, data in rows:
                    yield self._open_row(collection, ridx, rid, data)
        finally:
            cur.close()

    def _scan_seq(self, conn: sqlite3.Connection, collection: str, cidx: bytes,
                  after: int = 0, inline_limit: int | None = None,
                  ) -> Generator[tuple[int, dict[str, Any]], None, None]:
        """Every record with its insertion sequence (the keyset pages' tie-breaker), from
        sequence ``after`` on (exclusive; a hint: inside a transaction it is ignored).

        Rows are read and decrypted as the caller iterates, in one statement (one
        snapshot); a caller that stops early must ``close()`` the iterator, which ends the
        statement (an open one would pin its WAL snapshot). ``inline_limit``: see
        :meth:`find_page`."""
        if inline_limit is None and on_loop():
            raise TooLargeInline  # a whole collection: not on the event loop
        if OVERLAY.get() is not None:
            if inline_limit is not None:
                raise TooLargeInline
            # inside a transaction: the overlay's order (committed records, then staged
            # inserts); positions stand in for sequence numbers within the transaction
            with closing(self._scan(conn, collection, cidx)) as records:
                yield from enumerate(records, start=1)
            return
        cur = conn.execute("SELECT seq, ridx, rid, data FROM ds_records "
                           "WHERE cidx = ? AND seq > ? ORDER BY seq", (cidx, after))
        try:
            if inline_limit is None:
                while rows := _fetch_chunk(cur):
                    for seq, ridx, rid, data in rows:
                        yield seq, self._open_row(collection, ridx, rid, data)
                return
            left = inline_limit
            for seq, ridx, rid, data in cur:
                left -= max(len(data), INLINE_ROW_BYTES)
                if left < 0:
                    raise TooLargeInline
                yield seq, self._open_row(collection, ridx, rid, data)
        finally:
            cur.close()

    def _candidates(self, conn: sqlite3.Connection, collection: str, cidx: bytes,
                    flt: Filter | None, after: int = 0, inline_limit: int | None = None,
                    ) -> Generator[tuple[int, dict[str, Any]], None, None]:
        """What the filter must be applied to, in seq order: the records a declared index
        names when it covers every match (:mod:`mock_server.indexes`), else all of them.
        Inside a client transaction staged rows are not indexed, so it always scans.
        ``after``: records up to this sequence are not needed (see :meth:`_scan_seq`).
        Lazy like :meth:`_scan_seq`: close it when stopping early. ``inline_limit``: see
        :meth:`find_page` (an index lookup reads all its candidates at once: not inline)."""
        if flt is not None and OVERLAY.get() is None:
            declared = indexed_fields(self._schemas.get(conn, collection, cidx))
            lookups = plan(flt, self._indexes.built(conn, collection, cidx, declared))
            if lookups is not None and inline_limit is not None:
                raise TooLargeInline
            rows = (None if lookups is None
                    else self._indexes.rows(conn, collection, cidx, lookups))
            if rows is not None:
                for seq, ridx, rid, data in rows:
                    if seq > after:
                        yield seq, self._open_row(collection, ridx, rid, data)
                return
        yield from self._scan_seq(conn, collection, cidx, after, inline_limit)

    def _put_new(self, tx: _Tx, collection: str, cidx: bytes, record: Mapping[str, Any],
                 caller: Caller, operation: str, *,
                 record_id: str | None = None) -> dict[str, Any]:
        record_id = record_id or secrets.token_urlsafe(ID_BYTES)
        ridx = self._ridx(collection, record_id)
        stored = {"id": record_id, **copy.deepcopy(dict(record))}
        stored = self._conform(tx.conn, collection, cidx, stored, new=True)
        if (overlay := OVERLAY.get()) is not None:
            overlay.stage(tx.conn, collection, cidx, record_id, stored, record)
            return stored
        cipher = self._cipher(collection)
        sealed_id = cipher.aead.encrypt(record_id.encode(), cipher.id_aad(ridx))
        tx.conn.execute("INSERT INTO ds_records(cidx, ridx, rid, data) VALUES (?,?,?,?)",
                        (cidx, ridx, sealed_id, self._seal(collection, record_id, stored)))
        self._record(tx, caller, operation, collection, record_id, "insert", stored,
                     fields=sorted(record))
        return stored

    def _put_update(self, tx: _Tx, collection: str, cidx: bytes, record_id: str,
                    current: Mapping[str, Any], changes: Mapping[str, Any], caller: Caller,
                    operation: str, *, whole: bool = False) -> dict[str, Any]:
        """Merge ``changes`` into ``current`` (``whole``: they are the new record)."""
        updated = ({"id": record_id, **copy.deepcopy(dict(changes))} if whole
                   else merge_changes(current, changes))
        updated = self._conform(tx.conn, collection, cidx, updated, new=False)
        if (overlay := OVERLAY.get()) is not None:
            overlay.stage(tx.conn, collection, cidx, record_id, updated, changes)
            return updated
        tx.conn.execute("UPDATE ds_records SET data = ? WHERE cidx = ? AND ridx = ?",
                        (self._seal(collection, record_id, updated), cidx,
                         self._ridx(collection, record_id)))
        self._record(tx, caller, operation, collection, record_id, "update", updated,
                     fields=sorted(changes))
        return updated

    def _remove(self, tx: _Tx, collection: str, cidx: bytes, record_id: str, caller: Caller,
                operation: str) -> None:
        if (overlay := OVERLAY.get()) is not None:
            overlay.stage(tx.conn, collection, cidx, record_id, None, None)
            return
        for hook in self.removal_hooks:
            hook(tx.conn, collection, cidx, record_id, caller)
        tx.conn.execute("DELETE FROM ds_records WHERE cidx = ? AND ridx = ?",
                        (cidx, self._ridx(collection, record_id)))
        self._record(tx, caller, operation, collection, record_id, "delete", None)

    def _record(self, tx: _Tx, caller: Caller, operation: str, collection: str,
                record_id: str, change: Operation, content: Mapping[str, Any] | None,
                fields: Sequence[str] = ()) -> None:
        """Audit (names of fields only, never values), keep declared indexes, and queue the
        change event. Every committed record write passes here (trash restores too)."""
        if content is not None:
            self._reindex(tx.conn, collection, record_id, content)
        details = {"fields": list(fields)} if fields else None
        self._audit.record(operation, key_id=caller.key_id, label=caller.label,
                           resource=collection, target_id=record_id, details=details)
        tx.changes.append(Change(collection, record_id, change,
                                 copy.deepcopy(dict(content)) if content is not None else None,
                                 caller.key_id, self._clock()))

    def _reindex(self, conn: sqlite3.Connection, collection: str, record_id: str,
                 content: Mapping[str, Any]) -> None:
        """Rewrite one record's index rows (deletes: the ``ds_index_gone`` trigger)."""
        cidx = self._cidx(collection)
        fields = indexed_fields(self._schemas.get(conn, collection, cidx))
        if fields:
            self._indexes.write(conn, collection, cidx, self._ridx(collection, record_id),
                                content, fields)

    def _conform(self, conn: sqlite3.Connection, collection: str, cidx: bytes,
                 record: dict[str, Any], *, new: bool) -> dict[str, Any]:
        """The record as the collection's schema makes it (defaults), or 400 naming a field."""
        schema = self._schemas.get(conn, collection, cidx)
        if schema is None:
            return record
        record = schema.conform(record, new=new)
        if schema.unique_fields():
            # closed at once, duplicate or not: an open scan pins its WAL snapshot
            with closing(self._scan(conn, collection, cidx)) as records:
                check_unique(schema, record, records)
        return record

    @contextmanager
    def _writing(self) -> Iterator[_Tx]:
        """A write transaction whose change events commit (or roll back) with it."""
        with self._storage.transaction() as conn:
            tx = _Tx(conn)
            yield tx
            self._changes.publish_in_transaction(tx.changes, conn)
            if tx.changes:
                changes = tx.changes
                self._storage.after_commit(lambda: self._changes.publish_committed(changes),
                                           quick=True)

    # ---------------------------------------------------------------- permission helpers

    @staticmethod
    def _require(caller: Caller, collection: str, level: Level) -> None:
        try:
            caller.scope.require(collection, level)
        except PermissionDenied as exc:
            raise _denied(exc) from None

    @staticmethod
    def _require_fields(caller: Caller, collection: str, changes: Mapping[str, Any],
                        current: Mapping[str, Any] | None = None) -> None:
        """403 naming the fields when any touched (or replaced) path is not writable."""
        scope = caller.scope
        try:
            scope.require_writes(collection, changes, current)
        except PermissionDenied as exc:
            raise _denied(exc) from None
        if current is not None:
            bad = [p for p in _replaced_paths(current, changes)
                   if not scope.writable(collection, p)]
            if bad:
                raise forbidden(f"this API key may not write field(s) "
                                f"{', '.join(_show(p) for p in bad[:10])} of {_show(collection)}")

    @staticmethod
    def require_delete(caller: Caller, collection: str) -> None:
        """403 unless the caller may delete records of ``collection`` (see
        :meth:`Scope.may_delete`); every path that deletes records calls this."""
        try:
            caller.scope.require_delete(collection)
        except PermissionDenied as exc:
            raise _denied(exc) from None

    @staticmethod
    def _view(caller: Caller, collection: str, record: Mapping[str, Any]) -> dict[str, Any]:
        """What the caller may see of a record it just wrote (only ``id`` without READ)."""
        if not caller.scope.allows(collection, Level.READ):
            return {"id": record["id"]}
        return caller.scope.project(collection, record)

    # ---------------------------------------------------------------- collections

    def create_collection(self, caller: Caller, name: object, schema: object = None) -> str:
        """Create a collection, with an ekoDB schema (``{"fields": ...}``) when given."""
        collection = _check_collection(name)
        if not caller.scope.allows(collection, Level.ADMIN):
            raise forbidden(f"creating collection {_show(collection)} needs the admin level "
                            "on it (or an admin key)")
        parsed = parse_schema(schema) if schema is not None else None
        cidx = self._cidx(collection)
        sealed = self._keyring.encrypt(_SERVICE, "", collection.encode(),
                                       aad("collection", cidx.hex()))
        with self._writing() as tx:
            try:
                tx.conn.execute(
                    "INSERT INTO ds_collections(cidx, name, created_at) VALUES (?,?,?)",
                    (cidx, sealed, self._clock()))
            except sqlite3.IntegrityError:
                raise ApiError(409, "collection_exists",
                               f"collection {_show(collection)} already exists") from None
            if parsed is not None:
                self._schemas.put(tx.conn, collection, cidx, parsed)
                self._index_declared(tx.conn, collection, cidx, frozenset(),
                                     indexed_fields(parsed))
            self._audit.record("collection.create", key_id=caller.key_id, label=caller.label,
                               resource=collection)
        return collection

    def drop_collection(self, caller: Caller, name: object) -> str:
        collection = _check_collection(name)
        self._require(caller, collection, Level.ADMIN)
        with self._writing() as tx:
            cidx = self._exists(tx.conn, collection)
            self._indexes.drop(tx.conn, collection, cidx)
            tx.conn.execute("DELETE FROM ds_records WHERE cidx = ?", (cidx,))
            tx.conn.execute("DELETE FROM ds_collections WHERE cidx = ?", (cidx,))
            self._schemas.drop(tx.conn, cidx)
            self._audit.record("collection.drop", key_id=caller.key_id, label=caller.label,
                               resource=collection)
        return collection

    def get_schema(self, caller: Caller, name: object) -> dict[str, Any]:
        """The collection's schema in ekoDB's shape (no fields when it has none)."""
        collection = _check_collection(name)
        self._require(caller, collection, Level.READ)
        conn = self._storage.conn
        schema = self._schemas.get(conn, collection, self._exists(conn, collection))
        return (schema if schema is not None else Schema(version=0)).to_wire()

    def update_schema(self, caller: Caller, name: object, body: object) -> dict[str, Any]:
        """Apply ``{"constraints": {field: {attr: value}}}``; stored records must satisfy it."""
        collection = _check_collection(name)
        self._require(caller, collection, Level.ADMIN)
        with self._writing() as tx:
            cidx = self._exists(tx.conn, collection)
            before = self._schemas.get(tx.conn, collection, cidx)
            schema = parse_constraints(body, before)
            with closing(self._scan(tx.conn, collection, cidx)) as records:
                check_existing(schema, records)  # closed at once, a violation or not
            self._schemas.put(tx.conn, collection, cidx, schema)
            self._index_declared(tx.conn, collection, cidx, indexed_fields(before),
                                 indexed_fields(schema))
            self._audit.record("collection.schema", key_id=caller.key_id, label=caller.label,
                               resource=collection,
                               details={"fields": sorted(schema.fields)})
        return schema.to_wire()

    def _index_declared(self, conn: sqlite3.Connection, collection: str, cidx: bytes,
                        before: frozenset[str], after: frozenset[str]) -> None:
        """Build declared indexes not built yet (from the stored records), drop undeclared
        ones."""
        for field_name in before - after:
            self._indexes.drop(conn, collection, cidx, field_name)
        added = sorted(after - self._indexes.built(conn, collection, cidx, after))
        if not added:
            return
        rows = conn.execute("SELECT ridx, rid, data FROM ds_records WHERE cidx = ?",
                            (cidx,)).fetchall()
        records = [(bytes(ridx), self._open_row(collection, ridx, rid, data))
                   for ridx, rid, data in rows]
        for field_name in added:
            self._indexes.build(conn, collection, cidx, field_name, records)

    def list_collections(self, caller: Caller) -> list[str]:
        """Names the caller may read, sorted."""
        names: list[str] = []
        for cidx, sealed in self._storage.conn.execute(
                "SELECT cidx, name FROM ds_collections").fetchall():
            try:
                name = self._keyring.decrypt(_SERVICE, "", sealed,
                                             aad("collection", cidx.hex())).decode()
            except DecryptionError:
                log.error("datastore: a collection name failed authentication")
                raise _integrity() from None
            if caller.scope.allows(name, Level.READ):
                names.append(name)
        return sorted(names)

    # ---------------------------------------------------------------- single records

    def insert(self, caller: Caller, collection: object, record: object) -> dict[str, Any]:
        """Store a new record; returns it (with its new ``id``) as the caller may see it."""
        name = _check_collection(collection)
        self._require(caller, name, Level.WRITE)
        body = _check_write(record, "a record")
        self._require_fields(caller, name, body)
        with self._writing() as tx:
            stored = self._put_new(tx, name, self._exists(tx.conn, name), body, caller,
                                   "record.insert")
        return self._view(caller, name, stored)

    def get(self, caller: Caller, collection: object, record_id: object, *,
            select_fields: tuple[str, ...] | None = None,
            exclude_fields: tuple[str, ...] | None = None,
            inline_limit: int | None = None) -> dict[str, Any]:
        """One record as the caller may see it.

        ``inline_limit``: the caller runs on an event loop and wants only cheap work;
        a stored record larger than that many bytes raises :class:`TooLargeInline`
        (nothing else happened: ask again from a worker thread).
        """
        name = _check_collection(collection)
        self._require(caller, name, Level.READ)
        conn = self._storage.conn
        cidx = self._cidx(name)
        if OVERLAY.get() is not None:  # a transaction's view: check the collection first
            self._exists(conn, name)
        # A stored record implies its collection (a drop deletes both in one transaction):
        # the existence check is needed only to word the 404.
        record = self._load(conn, name, cidx, record_id, inline_limit)
        if record is None:
            self._exists(conn, name)
            raise ApiError(404, "not_found", "record not found")
        return _narrow(caller.scope.project(name, record), select_fields, exclude_fields)

    def update(self, caller: Caller, collection: object, record_id: object,
               changes: object) -> dict[str, Any]:
        """Deep-merge ``changes`` into a record; returns the whole record as the caller sees it."""
        name = _check_collection(collection)
        self._require(caller, name, Level.WRITE)
        body = _check_write(changes, "the changes")
        # fields are judged against the stored record: an array write is judged by its diff
        with self._writing() as tx:
            cidx = self._exists(tx.conn, name)
            current = self._load(tx.conn, name, cidx, record_id)
            if current is None:
                raise ApiError(404, "not_found", "record not found")
            self._require_fields(caller, name, body, current)
            updated = self._put_update(tx, name, cidx, current["id"], current, body, caller,
                                       "record.update")
        return self._view(caller, name, updated)

    def delete(self, caller: Caller, collection: object, record_id: object) -> str:
        name = _check_collection(collection)
        self.require_delete(caller, name)
        with self._writing() as tx:
            cidx = self._exists(tx.conn, name)
            current = self._load(tx.conn, name, cidx, record_id)
            if current is None:
                raise ApiError(404, "not_found", "record not found")
            self._remove(tx, name, cidx, current["id"], caller, "record.delete")
        return str(current["id"])

    # ---------------------------------------------------------------- queries

    def find(self, caller: Caller, collection: object, body: object) -> list[dict[str, Any]]:
        """``{filter, sort, limit, skip, cursor, select_fields, exclude_fields}`` → page."""
        return self.find_page(caller, collection, body).records

    def find_page(self, caller: Caller, collection: object, body: object, *,
                  inline_limit: int | None = None) -> FindPage:
        """One page and where the next starts (keyset: sort keys, then insertion order).

        ``inline_limit``: the caller runs on an event loop and wants only cheap work: a
        find that would open more than this many bytes of stored records (each counted as
        at least :data:`INLINE_ROW_BYTES`, the fixed cost of opening one), or that sorts,
        uses an index lookup or runs in a transaction, raises :class:`TooLargeInline`
        before or while reading (nothing changed: ask again from a worker thread).
        """
        name = _check_collection(collection)
        self._require(caller, name, Level.READ)
        if not isinstance(body, dict):
            raise _invalid("the find body must be a JSON object")
        body = strip_options(body, FIND_OPTIONS)  # the official client's extra keys
        unknown = sorted(str(k) for k in body if k not in _FIND_KEYS)
        if unknown:
            raise _invalid(f"unknown key {_show(unknown[0])} in the find body; allowed keys "
                           f"are {', '.join(_FIND_KEYS)}")
        try:
            flt = parse_filter(body.get("filter"))
            sort = parse_sort(body.get("sort"))
            limit, skip = parse_page(body.get("limit"), body.get("skip"),
                                     default_limit=DEFAULT_LIMIT, max_limit=MAX_LIMIT)
            cursor = decode_cursor(body.get("cursor"), sort)
        except QueryError as exc:
            raise _invalid(str(exc)) from None
        if cursor is not None and skip:
            raise _invalid("cursor and skip cannot be combined: a cursor already says where "
                           "the page starts")
        select = _field_list(body.get("select_fields"), "select_fields")
        exclude = _field_list(body.get("exclude_fields"), "exclude_fields")
        paths = set(flt.fields() if flt is not None else ()) | {k.field for k in sort}
        self._require_readable(caller, name, paths)
        if inline_limit is not None and (sort or OVERLAY.get() is not None):
            raise TooLargeInline  # a sort reads every match; a transaction reads its own
        conn = self._storage.conn
        # without a sort a cursor is a sequence: the scan starts right after it, in SQL
        after = cursor.seq if cursor is not None and not sort else 0
        candidates = self._candidates(conn, name, self._exists(conn, name), flt, after,
                                      inline_limit)
        try:
            rows, has_more = keyset_page(candidates, flt, sort, limit, skip, cursor)
        finally:
            candidates.close()  # a page without a sort stops reading early
        records = [_narrow(caller.scope.project(name, r, owned=True), select, exclude)
                   for _, r in rows]
        next_cursor = encode_cursor(rows[-1][1], rows[-1][0], sort) if has_more else None
        return FindPage(records, has_more, next_cursor)

    @staticmethod
    def _require_readable(caller: Caller, collection: str, paths: set[str]) -> None:
        """Filtering or sorting on a hidden field would leak it through the results: 403."""
        hidden = sorted(p for p in paths if not caller.scope.readable(collection, p))
        if hidden:
            raise forbidden(f"this API key may not filter or sort on field(s) "
                            f"{', '.join(_show(p) for p in hidden[:10])} of {_show(collection)}")

    # ---------------------------------------------------------------- batches

    def _items(self, body: object, key: str, item_keys: tuple[str, ...]) -> list[dict[str, Any]]:
        """Whole-request shape checks: ``{key: [ {item_keys...} ]}`` within the size limit."""
        if not isinstance(body, dict):
            raise _invalid("the batch body must be a JSON object")
        body = strip_options(body, BATCH_OPTIONS)
        if set(body) != {key}:
            raise _invalid(f"the batch body must have exactly one key, {key!r}")
        items = body[key]
        if not isinstance(items, list):
            raise _invalid(f"{key}: expected an array")
        if len(items) > self._max_batch:
            raise ApiError(413, "batch_too_large",
                           f"{key}: at most {self._max_batch} items per batch, got {len(items)}")
        items = [strip_options(it, ITEM_OPTIONS, f"{key}[{i}].") if isinstance(it, dict)
                 else it for i, it in enumerate(items)]
        for i, item in enumerate(items):
            if not isinstance(item, dict) or set(item) != set(item_keys):
                raise _invalid(f"{key}[{i}]: expected an object with exactly the keys "
                               f"{', '.join(item_keys)}")
            if "id" in item and not isinstance(item["id"], str):
                raise _invalid(f"{key}[{i}].id: expected a string")
            if "data" in item and not isinstance(item["data"], dict):
                raise _invalid(f"{key}[{i}].data: expected a JSON object")
        return items

    def _item_error(self, caller: Caller, collection: str, data: dict[str, Any],
                    current: Mapping[str, Any] | None = None) -> ApiError | None:
        """Why one batch item's content is refused, or None."""
        try:
            _check_write(data, "the data")
            self._require_fields(caller, collection, data, current)
        except ApiError as exc:
            return exc
        return None

    @staticmethod
    def _result(ok: list[str], failed: list[dict[str, Any]]) -> dict[str, Any]:
        return {"successful": ok, "failed": failed}

    def batch_insert(self, caller: Caller, collection: object, body: object) -> dict[str, Any]:
        name = _check_collection(collection)
        self._require(caller, name, Level.WRITE)
        items = self._items(body, "inserts", ("data",))
        ok: list[str] = []
        failed: list[dict[str, Any]] = []
        with self._writing() as tx:
            cidx = self._exists(tx.conn, name)
            for i, item in enumerate(items):
                err = self._item_error(caller, name, item["data"])
                if err is not None:
                    failed.append({"index": i, "code": err.code, "message": err.message})
                    continue
                try:
                    ok.append(self._put_new(tx, name, cidx, item["data"], caller,
                                            "record.batch_insert")["id"])
                except ApiError as exc:  # the schema refused it (nothing written)
                    if exc.status != 400:
                        raise
                    failed.append({"index": i, "code": exc.code, "message": exc.message})
        return self._result(ok, failed)

    def batch_update(self, caller: Caller, collection: object, body: object) -> dict[str, Any]:
        name = _check_collection(collection)
        self._require(caller, name, Level.WRITE)
        items = self._items(body, "updates", ("id", "data"))
        ok: list[str] = []
        failed: list[dict[str, Any]] = []
        with self._writing() as tx:
            cidx = self._exists(tx.conn, name)
            for item in items:
                rid, data = item["id"], item["data"]
                current = self._load(tx.conn, name, cidx, rid)
                err = (ApiError(404, "not_found", "record not found") if current is None
                       else self._item_error(caller, name, data, current))
                if err is not None or current is None:
                    assert err is not None
                    failed.append({"id": rid, "code": err.code, "message": err.message})
                    continue
                try:
                    self._put_update(tx, name, cidx, rid, current, data, caller,
                                     "record.batch_update")
                except ApiError as exc:  # the schema refused it (nothing written)
                    if exc.status != 400:
                        raise
                    failed.append({"id": rid, "code": exc.code, "message": exc.message})
                    continue
                ok.append(rid)
        return self._result(ok, failed)

    def batch_delete(self, caller: Caller, collection: object, body: object) -> dict[str, Any]:
        """By ids (``{"deletes": [{"id"}]}``) or by filter (needs READ too: it reveals matches)."""
        name = _check_collection(collection)
        self.require_delete(caller, name)
        if isinstance(body, dict) and "filter" in body:
            body = strip_options(body, BATCH_OPTIONS)
            if set(body) != {"filter"} or body["filter"] is None:
                raise _invalid("a delete by filter takes exactly one key, 'filter' (not null)")
            return self._delete_matching(caller, name, body["filter"])
        items = self._items(body, "deletes", ("id",))
        ok: list[str] = []
        failed: list[dict[str, Any]] = []
        with self._writing() as tx:
            cidx = self._exists(tx.conn, name)
            for item in items:
                rid = item["id"]
                if self._load(tx.conn, name, cidx, rid) is None:
                    failed.append({"id": rid, "code": "not_found", "message": "record not found"})
                    continue
                self._remove(tx, name, cidx, rid, caller, "record.batch_delete")
                ok.append(rid)
        return self._result(ok, failed)

    def _delete_matching(self, caller: Caller, name: str, raw_filter: object) -> dict[str, Any]:
        self._require(caller, name, Level.READ)
        try:
            flt = parse_filter(raw_filter)
        except QueryError as exc:
            raise _invalid(str(exc)) from None
        assert flt is not None
        self._require_readable(caller, name, set(flt.fields()))
        ok: list[str] = []
        with self._writing() as tx:
            cidx = self._exists(tx.conn, name)
            for _, record in list(self._candidates(tx.conn, name, cidx, flt)):
                if flt.matches(record):
                    self._remove(tx, name, cidx, record["id"], caller, "record.batch_delete")
                    ok.append(record["id"])
        return self._result(ok, [])

    # ---------------------------------------------------------------- search support

    def record_versions(self, collection: str) -> list[tuple[bytes, bytes]]:
        """``(blind id, version)`` of every record, in insertion order, without decrypting.

        The version is the ciphertext's header (format byte + random nonce), new on every
        write, so an in-memory index (:mod:`mock_server.search`) sees what changed since it
        last looked, also when another process wrote. 404 if the collection does not exist.
        """
        conn = self._storage.conn
        cidx = self._exists(conn, collection)
        rows = conn.execute("SELECT ridx, substr(data, 1, 13) FROM ds_records "
                            "WHERE cidx = ? ORDER BY seq", (cidx,)).fetchall()
        return [(bytes(ridx), bytes(tag)) for ridx, tag in rows]

    def load_versions(self, collection: str, ridxs: Sequence[bytes]
                      ) -> dict[bytes, tuple[bytes, dict[str, Any]]]:
        """Decrypt the records with these blind ids: ``ridx -> (version, record)``.

        Records deleted since :meth:`record_versions` are simply absent.
        """
        conn = self._storage.conn
        cidx = self._cidx(collection)
        out: dict[bytes, tuple[bytes, dict[str, Any]]] = {}
        for start in range(0, len(ridxs), 500):
            chunk = list(ridxs[start:start + 500])
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT ridx, rid, data FROM ds_records WHERE cidx = ? AND ridx IN ({marks})"  # noqa: S608 - '?' marks only
            rows = conn.execute(sql, (cidx, *chunk)).fetchall()
            for ridx, rid, data in rows:
                record_id = self._open_id(collection, ridx, rid)
                out[bytes(ridx)] = (bytes(data[:13]), self._open(collection, record_id, data))
        return out

    def require_collection(self, collection: str) -> None:
        """404 ``collection_not_found`` unless the collection exists (for change feeds)."""
        self._exists(self._storage.conn, collection)

    # ---------------------------------------------------------------- extension points
    # Used by mock_server.actions (atomic field actions, upsert, count, distinct): they keep
    # every rule of this module (levels, field rules, encryption, audit, change events).

    def modify(self, caller: Caller, collection: object, record_id: object,
               compute: Callable[[dict[str, Any]], dict[str, Any]], *,
               paths: Sequence[str] = (),
               operation: str = "record.update") -> dict[str, Any]:
        """Read a record, compute changes from it, write them: one transaction, so
        concurrent modifies of one record serialise (``BEGIN IMMEDIATE``) and none is lost.
        The computed changes pass the same checks as an update's body.

        ``paths`` are the fields ``compute`` reads and writes: each must be both readable
        and writable *before* anything is computed (403 naming it), since an error from
        computing on a hidden value (a range or a type error) would reveal that value."""
        name = _check_collection(collection)
        self._require(caller, name, Level.WRITE)
        scope = caller.scope
        hidden = sorted({p for p in paths
                         if not (scope.writable(name, p) and scope.readable(name, p))})
        if hidden:
            raise forbidden(f"this API key may not read and write field(s) "
                            f"{', '.join(_show(p) for p in hidden[:10])} of {_show(name)}; "
                            "an atomic action needs both")
        with self._writing() as tx:
            cidx = self._exists(tx.conn, name)
            current = self._load(tx.conn, name, cidx, record_id)
            if current is None:
                raise ApiError(404, "not_found", "record not found")
            body = _check_write(compute(copy.deepcopy(current)), "the changes")
            self._require_fields(caller, name, body, current)
            updated = self._put_update(tx, name, cidx, current["id"], current, body, caller,
                                       operation)
        return self._view(caller, name, updated)

    def upsert(self, caller: Caller, collection: object, record_id: object,
               record: object) -> tuple[dict[str, Any], bool]:
        """Update (deep merge) the record with this id, or insert it under this id; atomic.
        Returns the record as the caller sees it and whether it was created."""
        name = _check_collection(collection)
        self._require(caller, name, Level.WRITE)
        if not isinstance(record_id, str) or not _CLIENT_ID.fullmatch(record_id):
            raise _invalid(f"an upsert id is 1-{MAX_ID_LENGTH} characters of A-Z a-z 0-9 _ -")
        body = _check_write(record, "a record")
        self._require_fields(caller, name, body)
        with self._writing() as tx:
            cidx = self._exists(tx.conn, name)
            current = self._load(tx.conn, name, cidx, record_id)
            if current is None:
                stored = self._put_new(tx, name, cidx, body, caller, "record.upsert",
                                       record_id=record_id)
            else:
                self._require_fields(caller, name, body, current)
                stored = self._put_update(tx, name, cidx, record_id, current, body, caller,
                                          "record.upsert")
        return self._view(caller, name, stored), current is None

    def exists(self, caller: Caller, collection: object, record_id: object) -> bool:
        """Whether a record with this id exists (READ needed: the same as a get)."""
        name = _check_collection(collection)
        self._require(caller, name, Level.READ)
        conn = self._storage.conn
        return self._load(conn, name, self._exists(conn, name), record_id) is not None

    def matching(self, caller: Caller, collection: object,
                 raw_filter: object) -> Generator[dict[str, Any], None, None]:
        """Records matching a wire filter (None: all), projected through the caller's field
        rules; 403 when the filter names a field the caller may not read. Read as iterated
        (:meth:`_scan_seq`): close it when stopping early."""
        name = _check_collection(collection)
        self._require(caller, name, Level.READ)
        try:
            flt = parse_filter(raw_filter)
        except QueryError as exc:
            raise _invalid(str(exc)) from None
        if flt is not None:
            self._require_readable(caller, name, set(flt.fields()))
        conn = self._storage.conn
        records = self._candidates(conn, name, self._exists(conn, name), flt)
        scope = caller.scope
        return (scope.project(name, r, owned=True) for _, r in records
                if flt is None or flt.matches(r))
