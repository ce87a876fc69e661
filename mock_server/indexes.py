"""Declared field indexes for the DataStore: blind (keyed-hash) equality indexes.

A field whose schema says ``"index": {"type": "hash"}`` (or ``"btree"``) gets one row per
record in ``ds_index``: ``(cidx, fidx, tag, ridx)`` where ``fidx`` is a keyed hash of the
field name (per collection) and ``tag`` a keyed HMAC of the value's canonical form under a
key derived from the master key for that one collection and field. The data directory then
shows which records of one field share a value, and nothing else: no plaintext, no order,
and equal values in two fields or two collections get unrelated tags.

Decisions worth knowing:

- The canonical form follows :mod:`mock_server.query`'s equality exactly: JSON kinds never
  mix (``true`` / ``1`` / ``"1"`` differ), ``1`` and ``1.0`` are one number; arrays and
  objects get no row (no ``Eq``/``In`` value can equal them). A tag collision can only add a
  candidate, and the full filter is applied to every decrypted candidate, so the index
  narrows the scan and never changes the answer.
- ``btree`` is served by the same blind index: its exact matches are fast, its ranges still
  scan. An order-revealing index would show every value's rank on disk; we do not build one.
- An index is trusted only once ``ds_index_built`` says it was built from every record
  (a data dir from before indexes may declare one without rows; such fields scan).
- Deletes need no key, so a SQLite trigger removes a record's rows with it (any delete path,
  collection drops included); inserts and updates write rows in the same transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any, Final

from mock_server.crypto import KeyRing, aad
from mock_server.query import Condition, Filter, Logical
from mock_server.schemas import Schema

__all__ = ["INDEX_SCHEMA", "INDEX_TYPES", "BlindIndex", "Plan", "canonical", "indexed_fields",
           "plan"]

#: Index types (ekoDB's schema names) that build a blind equality index here.
INDEX_TYPES: Final = ("hash", "btree")
TAG_BYTES: Final = 16
#: Bound on one lookup statement's parameters (SQLite allows 32,766); more values scan.
MAX_PARAMS: Final = 30_000
_SERVICE: Final = "datastore-index"

#: DDL the DataStore registers after its own (the trigger needs ``ds_records``).
INDEX_SCHEMA: Final = (
    """
    CREATE TABLE IF NOT EXISTS ds_index (
        cidx BLOB NOT NULL,
        fidx BLOB NOT NULL,
        tag BLOB NOT NULL,
        ridx BLOB NOT NULL
    );
    CREATE INDEX IF NOT EXISTS ds_index_lookup ON ds_index(cidx, fidx, tag);
    CREATE INDEX IF NOT EXISTS ds_index_record ON ds_index(cidx, ridx);
    CREATE TABLE IF NOT EXISTS ds_index_built (
        cidx BLOB NOT NULL,
        fidx BLOB NOT NULL,
        PRIMARY KEY (cidx, fidx)
    );
    CREATE TRIGGER IF NOT EXISTS ds_index_gone AFTER DELETE ON ds_records BEGIN
        DELETE FROM ds_index WHERE cidx = OLD.cidx AND ridx = OLD.ridx;
    END;
    """
)

#: Fields and the values any match must have in one of them (the union of these records
#: is a superset of the filter's matches).
Plan = list[tuple[str, tuple[Any, ...]]]


def canonical(value: object) -> bytes | None:
    """The value's bytes as equality sees them, or None for values no filter can equal."""
    if value is None:
        return b"z"
    if isinstance(value, bool):
        return b"b1" if value else b"b0"
    if isinstance(value, int):
        return b"n" + str(value).encode()
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None  # not JSON; never stored
        return b"n" + (str(int(value)) if value.is_integer() else repr(value)).encode()
    if isinstance(value, str):
        return b"s" + value.encode("utf-8", "surrogatepass")
    return None


def indexed_fields(schema: Schema | None) -> frozenset[str]:
    """Top-level fields with a declared hash/btree index."""
    if schema is None:
        return frozenset()
    out: set[str] = set()
    for name, spec in schema.fields.items():
        index = spec.index
        if isinstance(index, Mapping) and str(index.get("type", "")).lower() in INDEX_TYPES:
            out.add(name)
    return frozenset(out)


def _plan_node(node: Condition | Logical, fields: frozenset[str]) -> Plan | None:
    if isinstance(node, Condition):
        if node.field not in fields:
            return None
        if node.operator == "Eq":
            return [(node.field, (node.value,))]
        if node.operator == "In":
            return [(node.field, tuple(node.value))]
        return None
    if node.operator == "And":
        best: Plan | None = None
        for child in node.expressions:
            found = _plan_node(child, fields)
            if found is not None and (best is None or _width(found) < _width(best)):
                best = found
        return best
    if node.operator == "Or":
        union: Plan = []
        for child in node.expressions:
            found = _plan_node(child, fields)
            if found is None:
                return None  # one unindexed branch can match anything: scan
            union.extend(found)
        return union
    return None  # Not: the complement of a lookup is a scan


def _width(p: Plan) -> int:
    return sum(len(values) for _, values in p)


def plan(flt: Filter | None, fields: frozenset[str]) -> Plan | None:
    """Which index lookups cover every match of ``flt``; None when only a scan does."""
    if flt is None or not fields:
        return None
    return _plan_node(flt.root, fields)


class BlindIndex:
    """Reads and writes ``ds_index`` rows; keys come from the keyring like all others."""

    def __init__(self, keyring: KeyRing) -> None:
        self._keyring = keyring

    def fidx(self, collection: str, field: str) -> bytes:
        return self._keyring.blind_index(_SERVICE + "-field", collection, field)[:TAG_BYTES]

    def tag(self, collection: str, field: str, value: object) -> bytes | None:
        data = canonical(value)
        if data is None:
            return None
        scope = aad(collection, field).decode()
        return self._keyring.blind_index(_SERVICE, scope, data)[:TAG_BYTES]

    def write(self, conn: sqlite3.Connection, collection: str, cidx: bytes, ridx: bytes,
              record: Mapping[str, Any], fields: Iterable[str]) -> None:
        """Replace one record's rows with those of its current content."""
        conn.execute("DELETE FROM ds_index WHERE cidx = ? AND ridx = ?", (cidx, ridx))
        rows = []
        for field in fields:
            if field in record:
                tag = self.tag(collection, field, record[field])
                if tag is not None:
                    rows.append((cidx, self.fidx(collection, field), tag, ridx))
        if rows:
            conn.executemany("INSERT INTO ds_index(cidx, fidx, tag, ridx) VALUES (?,?,?,?)",
                             rows)

    def build(self, conn: sqlite3.Connection, collection: str, cidx: bytes, field: str,
              records: Iterable[tuple[bytes, Mapping[str, Any]]]) -> None:
        """Index ``field`` of existing records (``(ridx, record)``), replacing old rows."""
        fidx = self.fidx(collection, field)
        conn.execute("DELETE FROM ds_index WHERE cidx = ? AND fidx = ?", (cidx, fidx))
        rows = []
        for ridx, record in records:
            if field in record:
                tag = self.tag(collection, field, record[field])
                if tag is not None:
                    rows.append((cidx, fidx, tag, ridx))
        conn.executemany("INSERT INTO ds_index(cidx, fidx, tag, ridx) VALUES (?,?,?,?)", rows)
        conn.execute("INSERT OR IGNORE INTO ds_index_built(cidx, fidx) VALUES (?, ?)",
                     (cidx, fidx))

    def built(self, conn: sqlite3.Connection, collection: str, cidx: bytes,
              fields: frozenset[str]) -> frozenset[str]:
        """Which of ``fields`` have a complete index (a data dir from before indexes existed
        may declare one that was never built: those fields scan until it is)."""
        if not fields:
            return fields
        have = {bytes(f) for (f,) in conn.execute(
            "SELECT fidx FROM ds_index_built WHERE cidx = ?", (cidx,))}
        return frozenset(f for f in fields if self.fidx(collection, f) in have)

    def drop(self, conn: sqlite3.Connection, collection: str, cidx: bytes,
             field: str | None = None) -> None:
        """Forget one field's index (None: every index of the collection)."""
        for table in ("ds_index", "ds_index_built"):
            if field is None:
                conn.execute(f"DELETE FROM {table} WHERE cidx = ?", (cidx,))  # noqa: S608
            else:
                conn.execute(f"DELETE FROM {table} WHERE cidx = ? AND fidx = ?",  # noqa: S608
                             (cidx, self.fidx(collection, field)))

    def rows(self, conn: sqlite3.Connection, collection: str, cidx: bytes,
             lookups: Plan) -> list[tuple[int, bytes, bytes, bytes]] | None:
        """``(seq, ridx, rid, data)`` of the records the lookups name, in seq order, read in
        one statement (one snapshot, like the scan); None when too many values to ask.

        The lookups form a subquery joined to the records by their unique key: SQLite
        otherwise prefers walking the collection in seq order to skip the sort.
        """
        parts: list[str] = []
        params: list[bytes] = []
        for field, values in lookups:
            tags = sorted({t for v in values if (t := self.tag(collection, field, v))})
            if tags:
                marks = ",".join("?" * len(tags))
                parts.append(f"SELECT ridx FROM ds_index WHERE cidx = ? AND fidx = ? AND tag IN ({marks})")  # noqa: E501, S608 - '?' marks only
                params += [cidx, self.fidx(collection, field), *tags]
        getlimit = getattr(conn, "getlimit", None)  # Python 3.11+; older SQLite allow 999
        cap = min(MAX_PARAMS, getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
                  if getlimit is not None else 999)
        if len(params) + 1 > cap:
            return None
        if not parts:
            return []
        sql = ("SELECT r.seq, r.ridx, r.rid, r.data FROM ("  # noqa: S608 - '?' marks only
               f"{' UNION '.join(parts)}) AS m CROSS JOIN ds_records r "
               "ON r.cidx = ? AND r.ridx = m.ridx")
        found = conn.execute(sql, (*params, cidx)).fetchall()
        found.sort(key=lambda row: row[0])
        out: list[tuple[int, bytes, bytes, bytes]] = []
        for row in found:
            if not out or out[-1][0] != row[0]:
                out.append(row)
        return out
