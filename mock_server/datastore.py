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
"""

from __future__ import annotations

import copy
import json
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from mock_server.audit import AuditLog
from mock_server.changes import Change, ChangeFeed, Operation
from mock_server.crypto import DecryptionError, KeyRing, aad
from mock_server.errors import ApiError, bad_request, forbidden
from mock_server.permissions import (
    Level,
    PermissionDenied,
    PermissionSpecError,
    Rule,
    Scope,
    validate_resource_name,
)
from mock_server.query import (
    QueryError,
    decode_cursor,
    encode_cursor,
    keyset_page,
    parse_filter,
    parse_page,
    parse_sort,
    validate_field_path,
)
from mock_server.storage import Storage, register_schema

__all__ = ["MAX_BATCH", "Caller", "DataStore", "FindPage", "merge_changes"]

log = logging.getLogger("mock_server.datastore")

MAX_BATCH: Final = 1000
MAX_ID_LENGTH: Final = 64
MAX_FIELD_LIST: Final = 256
ID_BYTES: Final = 16  # 128 random bits, urlsafe base64 -> 22 characters
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
_SERVICE: Final = "datastore"
_FIELD_NAME: Final = re.compile(r"[A-Za-z0-9_-]+")
_FIND_KEYS: Final = ("filter", "sort", "limit", "skip", "cursor", "select_fields",
                     "exclude_fields")


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


class Caller(Protocol):
    """Who is asking (``mock_server.auth.Principal`` fits)."""

    @property
    def key_id(self) -> str: ...

    @property
    def label(self) -> str: ...

    @property
    def scope(self) -> Scope: ...


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
    """First invalid field name along nested objects (arrays are not walked), else None."""
    for key, child in value.items():
        if not isinstance(key, str) or not _FIELD_NAME.fullmatch(key):
            return prefix + str(key)
        if isinstance(child, Mapping):
            bad = _check_names(child, f"{prefix}{key}.")
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


def _narrow(collection: str, record: dict[str, Any], select: tuple[str, ...] | None,
            exclude: tuple[str, ...] | None) -> dict[str, Any]:
    """Apply the request's own select/exclude after the key's rules (can only narrow)."""
    if select is None and not exclude:
        return record
    rule = Rule(read=True, select_fields=select,
                exclude_fields=tuple(p for p in exclude or () if p.split(".", 1)[0] != "id"))
    return Scope(is_admin=False, read_only=True, rules={collection: rule}).project(
        collection, record)


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

    # ---------------------------------------------------------------- crypto & rows

    def _cidx(self, collection: str) -> bytes:
        return self._keyring.blind_index(_SERVICE, "collection", collection)

    def _ridx(self, collection: str, record_id: str) -> bytes:
        return self._keyring.blind_index(_SERVICE + "-record", collection, record_id)

    def _seal(self, collection: str, record_id: str, record: Mapping[str, Any]) -> bytes:
        body = {k: v for k, v in record.items() if k != "id"}
        try:
            text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except ValueError:
            raise _invalid("NaN and Infinity are not JSON values") from None
        return self._keyring.encrypt(_SERVICE, collection, text.encode(),
                                     aad("record", collection, record_id))

    def _open(self, collection: str, record_id: str, sealed: bytes) -> dict[str, Any]:
        try:
            plain = self._keyring.decrypt(_SERVICE, collection, sealed,
                                          aad("record", collection, record_id))
        except DecryptionError:
            log.error("datastore: a record of a collection failed authentication")
            raise _integrity() from None
        body: dict[str, Any] = json.loads(plain)
        return {"id": record_id, **body}

    def _open_id(self, collection: str, ridx: bytes, sealed: bytes) -> str:
        try:
            return self._keyring.decrypt(_SERVICE, collection, sealed,
                                         aad("record-id", collection, ridx.hex())).decode()
        except DecryptionError:
            log.error("datastore: a record id failed authentication")
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
              record_id: object) -> dict[str, Any] | None:
        """One record by id through the blind index (never a scan); None if absent."""
        if not isinstance(record_id, str) or not 1 <= len(record_id) <= MAX_ID_LENGTH:
            return None
        row = conn.execute("SELECT data FROM ds_records WHERE cidx = ? AND ridx = ?",
                           (cidx, self._ridx(collection, record_id))).fetchone()
        return None if row is None else self._open(collection, record_id, row[0])

    def _scan(self, conn: sqlite3.Connection, collection: str,
              cidx: bytes) -> Iterator[dict[str, Any]]:
        """Every record of a collection, in insertion order."""
        rows = conn.execute(
            "SELECT ridx, rid, data FROM ds_records WHERE cidx = ? ORDER BY seq", (cidx,)
        ).fetchall()
        for ridx, rid, data in rows:
            yield self._open(collection, self._open_id(collection, ridx, rid), data)

    def _scan_seq(self, conn: sqlite3.Connection, collection: str,
                  cidx: bytes) -> Iterator[tuple[int, dict[str, Any]]]:
        """Every record with its insertion sequence (the keyset pages' tie-breaker)."""
        rows = conn.execute(
            "SELECT seq, ridx, rid, data FROM ds_records WHERE cidx = ? ORDER BY seq", (cidx,)
        ).fetchall()
        for seq, ridx, rid, data in rows:
            yield seq, self._open(collection, self._open_id(collection, ridx, rid), data)

    def _put_new(self, tx: _Tx, collection: str, cidx: bytes, record: Mapping[str, Any],
                 caller: Caller, operation: str) -> dict[str, Any]:
        record_id = secrets.token_urlsafe(ID_BYTES)
        ridx = self._ridx(collection, record_id)
        stored = {"id": record_id, **copy.deepcopy(dict(record))}
        sealed_id = self._keyring.encrypt(_SERVICE, collection, record_id.encode(),
                                          aad("record-id", collection, ridx.hex()))
        tx.conn.execute("INSERT INTO ds_records(cidx, ridx, rid, data) VALUES (?,?,?,?)",
                        (cidx, ridx, sealed_id, self._seal(collection, record_id, stored)))
        self._record(tx, caller, operation, collection, record_id, "insert", stored,
                     fields=sorted(record))
        return stored

    def _put_update(self, tx: _Tx, collection: str, cidx: bytes, record_id: str,
                    current: Mapping[str, Any], changes: Mapping[str, Any], caller: Caller,
                    operation: str) -> dict[str, Any]:
        updated = merge_changes(current, changes)
        tx.conn.execute("UPDATE ds_records SET data = ? WHERE cidx = ? AND ridx = ?",
                        (self._seal(collection, record_id, updated), cidx,
                         self._ridx(collection, record_id)))
        self._record(tx, caller, operation, collection, record_id, "update", updated,
                     fields=sorted(changes))
        return updated

    def _remove(self, tx: _Tx, collection: str, cidx: bytes, record_id: str, caller: Caller,
                operation: str) -> None:
        tx.conn.execute("DELETE FROM ds_records WHERE cidx = ? AND ridx = ?",
                        (cidx, self._ridx(collection, record_id)))
        self._record(tx, caller, operation, collection, record_id, "delete", None)

    def _record(self, tx: _Tx, caller: Caller, operation: str, collection: str,
                record_id: str, change: Operation, content: Mapping[str, Any] | None,
                fields: Sequence[str] = ()) -> None:
        """Audit (names of fields only, never values) and queue the change event."""
        details = {"fields": list(fields)} if fields else None
        self._audit.record(operation, key_id=caller.key_id, label=caller.label,
                           resource=collection, target_id=record_id, details=details)
        tx.changes.append(Change(collection, record_id, change,
                                 copy.deepcopy(dict(content)) if content is not None else None,
                                 caller.key_id, self._clock()))

    @contextmanager
    def _writing(self) -> Iterator[_Tx]:
        """A write transaction whose change events commit (or roll back) with it."""
        with self._storage.transaction() as conn:
            tx = _Tx(conn)
            yield tx
            self._changes.publish_in_transaction(tx.changes, conn)
            if tx.changes:
                changes = tx.changes
                self._storage.after_commit(lambda: self._changes.publish_committed(changes))

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
            scope.require_writes(collection, changes)
        except PermissionDenied as exc:
            raise _denied(exc) from None
        if current is not None:
            bad = [p for p in _replaced_paths(current, changes)
                   if not scope.writable(collection, p)]
            if bad:
                raise forbidden(f"this API key may not write field(s) "
                                f"{', '.join(_show(p) for p in bad[:10])} of {_show(collection)}")

    @staticmethod
    def _view(caller: Caller, collection: str, record: Mapping[str, Any]) -> dict[str, Any]:
        """What the caller may see of a record it just wrote (only ``id`` without READ)."""
        if not caller.scope.allows(collection, Level.READ):
            return {"id": record["id"]}
        return caller.scope.project(collection, record)

    # ---------------------------------------------------------------- collections

    def create_collection(self, caller: Caller, name: object) -> str:
        collection = _check_collection(name)
        if not caller.scope.allows(collection, Level.ADMIN):
            raise forbidden(f"creating collection {_show(collection)} needs the admin level "
                            "on it (or an admin key)")
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
            self._audit.record("collection.create", key_id=caller.key_id, label=caller.label,
                               resource=collection)
        return collection

    def drop_collection(self, caller: Caller, name: object) -> str:
        collection = _check_collection(name)
        self._require(caller, collection, Level.ADMIN)
        with self._writing() as tx:
            cidx = self._exists(tx.conn, collection)
            tx.conn.execute("DELETE FROM ds_records WHERE cidx = ?", (cidx,))
            tx.conn.execute("DELETE FROM ds_collections WHERE cidx = ?", (cidx,))
            self._audit.record("collection.drop", key_id=caller.key_id, label=caller.label,
                               resource=collection)
        return collection

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
            exclude_fields: tuple[str, ...] | None = None) -> dict[str, Any]:
        name = _check_collection(collection)
        self._require(caller, name, Level.READ)
        conn = self._storage.conn
        record = self._load(conn, name, self._exists(conn, name), record_id)
        if record is None:
            raise ApiError(404, "not_found", "record not found")
        return _narrow(name, caller.scope.project(name, record), select_fields, exclude_fields)

    def update(self, caller: Caller, collection: object, record_id: object,
               changes: object) -> dict[str, Any]:
        """Deep-merge ``changes`` into a record; returns the whole record as the caller sees it."""
        name = _check_collection(collection)
        self._require(caller, name, Level.WRITE)
        body = _check_write(changes, "the changes")
        self._require_fields(caller, name, body)
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
        self._require(caller, name, Level.WRITE)
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

    def find_page(self, caller: Caller, collection: object, body: object) -> FindPage:
        """One page and where the next starts (keyset: sort keys, then insertion order)."""
        name = _check_collection(collection)
        self._require(caller, name, Level.READ)
        if not isinstance(body, dict):
            raise _invalid("the find body must be a JSON object")
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
        conn = self._storage.conn
        rows, has_more = keyset_page(self._scan_seq(conn, name, self._exists(conn, name)),
                                     flt, sort, limit, skip, cursor)
        records = [_narrow(name, caller.scope.project(name, r), select, exclude)
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
        if set(body) != {key}:
            raise _invalid(f"the batch body must have exactly one key, {key!r}")
        items = body[key]
        if not isinstance(items, list):
            raise _invalid(f"{key}: expected an array")
        if len(items) > self._max_batch:
            raise ApiError(413, "batch_too_large",
                           f"{key}: at most {self._max_batch} items per batch, got {len(items)}")
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
                ok.append(self._put_new(tx, name, cidx, item["data"], caller,
                                        "record.batch_insert")["id"])
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
                self._put_update(tx, name, cidx, rid, current, data, caller,
                                 "record.batch_update")
                ok.append(rid)
        return self._result(ok, failed)

    def batch_delete(self, caller: Caller, collection: object, body: object) -> dict[str, Any]:
        """By ids (``{"deletes": [{"id"}]}``) or by filter (needs READ too: it reveals matches)."""
        name = _check_collection(collection)
        self._require(caller, name, Level.WRITE)
        if isinstance(body, dict) and "filter" in body:
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
            for record in self._scan(tx.conn, name, cidx):
                if flt.matches(record):
                    self._remove(tx, name, cidx, record["id"], caller, "record.batch_delete")
                    ok.append(record["id"])
        return self._result(ok, [])
