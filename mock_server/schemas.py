"""Collection schemas: field types and constraints checked on every write (framework-free).

Wire shape is ekoDB's: ``{"fields": {name: {"field_type", "required", "unique", "enums",
"min", "max", "regex", "default", "index"}}, "version", ...}``; updates are
``{"constraints": {name: {attribute: value}}}`` where only the attributes given change (an
explicit ``null`` removes that constraint).

Decisions worth knowing:

- Constraints name top-level fields only. ``null`` (or a missing field) satisfies every
  constraint except ``required``; a default fills a missing field on insert only.
- ``min``/``max`` bound numbers and datetimes (compared as instants: both sides parsed
  with ``datetime.fromisoformat`` and normalised to UTC, a naive one read as UTC); on
  strings, arrays and objects they bound the length. ``regex`` must match the whole string.
- ``regex`` runs on RE2 (``google-re2``): linear time, so a tenant's pattern such as
  ``(a+)+b`` cannot stall the server while it holds the write lock. RE2 has no
  backreferences or lookaround (such a pattern is refused with 400 when the schema is set)
  and its word and digit classes are ASCII; values longer than MAX_REGEX_INPUT characters are
  refused rather than matched.
- ``unique`` is checked against every other record of the collection inside the write
  transaction (writers are serialized), so it holds under concurrent inserts; it costs one
  scan of the collection per write (documented in the README). A unique violation is 400
  ``unique_violation`` naming the field (the issue's "writes that break it get 400").
- A schema update must hold for the records already stored (409 ``schema_conflict``
  naming the field otherwise), so the schema is always true of every record.
- The schema is stored encrypted like the records (enum values and defaults are data).
- ``index`` (``{"type": "hash" | "btree" | "text" | "vector"}``): hash and btree build a
  blind equality index that finds use (:mod:`mock_server.indexes`); declaring one on a
  collection with records builds it from them in the schema update's transaction.
"""

from __future__ import annotations

import functools
import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Final

import re2  # type: ignore[import-untyped]

from mock_server.crypto import DecryptionError, KeyRing, aad
from mock_server.errors import ApiError
from mock_server.storage import register_schema

__all__ = ["FieldSchema", "Schema", "SchemaStore", "parse_constraints", "parse_schema"]

register_schema(
    """
    CREATE TABLE IF NOT EXISTS ds_schemas (
        cidx BLOB PRIMARY KEY,
        data BLOB NOT NULL
    );
    """
)

_SERVICE: Final = "datastore-schema"
_FIELD_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
MAX_FIELDS: Final = 256
MAX_ENUMS: Final = 1000
MAX_REGEX: Final = 512
#: The longest string value a schema ``regex`` is matched against (longer: refused).
MAX_REGEX_INPUT: Final = 65_536
_RE2_OPTIONS: Final = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is the caller's 400, not a server log
_UUID: Final = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                          r"[0-9a-fA-F]{12}")


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _instant(v: object) -> datetime | None:
    """An ISO-8601 datetime as an aware UTC instant (naive: read as UTC); else None."""
    if not isinstance(v, str) or not 10 <= len(v) <= 64:
        return None
    try:
        parsed = datetime.fromisoformat(v.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def _is_datetime(v: object) -> bool:
    return _instant(v) is not None


@functools.lru_cache(maxsize=256)
def _pattern(regex: str) -> Any:
    """The compiled RE2 pattern (raises ``re2.error`` for what RE2 cannot run)."""
    return re2.compile(regex, _RE2_OPTIONS)


#: ekoDB's field types (lower-cased) and what a JSON value of each looks like.
TYPES: Final[dict[str, Callable[[object], bool]]] = {
    "string": lambda v: isinstance(v, str),
    "text": lambda v: isinstance(v, str),
    "number": _is_number,
    "float": _is_number,
    "decimal": lambda v: _is_number(v) or (isinstance(v, str) and _decimal(v)),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "set": lambda v: isinstance(v, list) and len({_canon(x) for x in v}) == len(v),
    "vector": lambda v: isinstance(v, list) and all(_is_number(x) for x in v),
    "datetime": _is_datetime,
    "uuid": lambda v: isinstance(v, str) and _UUID.fullmatch(v) is not None,
    "binary": lambda v: isinstance(v, str),
    "bytes": lambda v: isinstance(v, str),
    "duration": lambda v: _is_number(v) or isinstance(v, str),
    "any": lambda v: True,
}


def _decimal(text: str) -> bool:
    return re.fullmatch(r"-?\d{1,64}(\.\d{1,64})?", text) is not None


def _canon(value: object) -> str:
    """Type-aware equality key (1, 1.0 and True differ from each other as JSON does not)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _bad(message: str, code: str = "schema_violation") -> ApiError:
    return ApiError(400, code, message)


def _show(name: str) -> str:
    return repr(name if len(name) <= 64 else name[:64] + "...")


@dataclass(frozen=True)
class FieldSchema:
    """One field's type and constraints."""

    field_type: str
    required: bool = False
    unique: bool = False
    enums: tuple[Any, ...] = ()
    min: Any = None
    max: Any = None
    regex: str | None = None
    default: Any = None
    index: dict[str, Any] | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field_type": self.field_type, "required": self.required,
                               "unique": self.unique}
        if self.enums:
            out["enums"] = list(self.enums)
        for name in ("min", "max", "regex", "default", "index"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    def problem(self, name: str, value: object) -> str | None:
        """Why ``value`` breaks this field's constraints (None when it holds)."""
        if value is None:
            return f"field {_show(name)} is required" if self.required else None
        if not TYPES[self.field_type](value):
            return f"field {_show(name)} must be of type {self.field_type}"
        if self.enums and _canon(value) not in {_canon(e) for e in self.enums}:
            return f"field {_show(name)} must be one of the schema's enums"
        size: object = len(value) if isinstance(value, str | list | dict) else value
        if self.field_type == "datetime":
            size = _instant(value)
        for bound, low in ((self.min, True), (self.max, False)):
            if bound is None:
                continue
            limit = _instant(bound) if self.field_type == "datetime" else bound
            try:
                broken = size < limit if low else size > limit  # type: ignore[operator]
            except TypeError:
                continue  # a bound of another kind (a number bound on a datetime): no check
            if broken:
                if self.field_type == "datetime":
                    what = "no earlier than" if low else "no later than"
                    return f"field {_show(name)} must be {what} {bound}"
                what = "at least" if low else "at most"
                unit = " characters/items long" if isinstance(value, str | list | dict) else ""
                return f"field {_show(name)} must be {what} {bound}{unit}"
        if self.regex is not None and isinstance(value, str):
            if len(value) > MAX_REGEX_INPUT:
                return (f"field {_show(name)} is too long to check against the schema's "
                        f"pattern (at most {MAX_REGEX_INPUT} characters)")
            try:
                matched = _pattern(self.regex).fullmatch(value) is not None
            except re2.error:  # stored before patterns were checked against RE2
                return (f"field {_show(name)}: the schema's pattern is not supported (RE2 "
                        "syntax); update the schema")
            if not matched:
                return f"field {_show(name)} does not match the schema's pattern"
        return None


@dataclass
class Schema:
    """A collection's fields, with ekoDB's bookkeeping (version, timestamps)."""

    fields: dict[str, FieldSchema] = field(default_factory=dict)
    version: int = 1
    created_at: float = field(default_factory=time.time)
    last_modified: float = field(default_factory=time.time)

    def to_wire(self) -> dict[str, Any]:
        return {
            "fields": {n: f.to_wire() for n, f in sorted(self.fields.items())},
            "version": self.version,
            "created_at": _iso(self.created_at),
            "last_modified": _iso(self.last_modified),
            "bypass_ripple": True,
        }

    def conform(self, record: Mapping[str, Any], *, new: bool) -> dict[str, Any]:
        """``record`` with defaults filled (on insert); 400 naming the first broken field."""
        out = dict(record)
        for name, spec in self.fields.items():
            if new and out.get(name) is None and spec.default is not None:
                out[name] = json.loads(json.dumps(spec.default))
            problem = spec.problem(name, out.get(name))
            if problem is not None:
                raise _bad(problem)
        return out

    def unique_fields(self) -> list[str]:
        return [n for n, f in self.fields.items() if f.unique]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


#: ekoDB's index types; hash and btree build a blind equality index
#: (:mod:`mock_server.indexes`), text and vector are served by :mod:`mock_server.search`.
INDEX_KINDS: Final = ("hash", "btree", "text", "vector")
_FIELD_KEYS: Final = ("field_type", "required", "unique", "enums", "min", "max", "regex",
                      "default", "index")
_SCHEMA_KEYS: Final = ("fields", "version", "created_at", "last_modified", "bypass_ripple")


def _field(name: str, raw: Mapping[str, Any], base: FieldSchema | None) -> FieldSchema:
    """A field from its wire attributes over ``base`` (an update) or from nothing."""
    where = f"schema field {_show(name)}"
    unknown = sorted(str(k) for k in raw if k not in _FIELD_KEYS)
    if unknown:
        raise _bad(f"{where}: unknown attribute {_show(unknown[0])}; allowed are "
                   f"{', '.join(_FIELD_KEYS)}", "validation_error")
    attrs: dict[str, Any] = base.__dict__.copy() if base is not None else {}
    for key, value in raw.items():
        if value is None:
            attrs.pop(key, None)
        else:
            attrs[key] = value
    kind = attrs.get("field_type")
    if not isinstance(kind, str) or kind.lower() not in TYPES:
        raise _bad(f"{where}: field_type must be one of {', '.join(TYPES)}", "validation_error")
    attrs["field_type"] = kind.lower()
    for flag in ("required", "unique"):
        if not isinstance(attrs.get(flag, False), bool):
            raise _bad(f"{where}: {flag} must be true or false", "validation_error")
    enums = attrs.get("enums", ())
    if not isinstance(enums, list | tuple) or len(enums) > MAX_ENUMS:
        raise _bad(f"{where}: enums must be an array of at most {MAX_ENUMS} values",
                   "validation_error")
    attrs["enums"] = tuple(enums)
    for bound in ("min", "max"):
        value = attrs.get(bound)
        if value is not None and not (_is_number(value) or _is_datetime(value)):
            raise _bad(f"{where}: {bound} must be a number or an ISO-8601 datetime",
                       "validation_error")
    regex = attrs.get("regex")
    if regex is not None:
        if not isinstance(regex, str) or len(regex) > MAX_REGEX:
            raise _bad(f"{where}: regex must be a string of at most {MAX_REGEX} characters",
                       "validation_error")
        try:
            _pattern(regex)
        except re2.error as exc:
            detail = exc.args[0].decode(errors="replace") if exc.args and isinstance(
                exc.args[0], bytes) else str(exc)
            raise _bad(f"{where}: regex is not valid RE2 syntax (no backreferences or "
                       f"lookaround): {detail[:200]}", "validation_error") from None
    index = attrs.get("index")
    if index is not None and (not isinstance(index, dict)
                              or str(index.get("type", "")).lower() not in INDEX_KINDS):
        raise _bad(f"{where}: index must be an object whose type is one of "
                   f"{', '.join(INDEX_KINDS)} (hash and btree build an equality index)",
                   "validation_error")
    spec = FieldSchema(**attrs)
    if spec.default is not None:
        problem = FieldSchema(**{**attrs, "unique": False}).problem(name, spec.default)
        if problem is not None:
            raise _bad(f"{where}: the default breaks the field's own constraints ({problem})",
                       "validation_error")
    return spec


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name) or name == "id":
        raise _bad(f"schema field name {name!r}: use 1-128 of A-Z a-z 0-9 _ - (not 'id')",
                   "validation_error")
    return name


def parse_schema(raw: object) -> Schema:
    """ekoDB's schema body into a :class:`Schema` (400 naming what is wrong)."""
    if not isinstance(raw, dict):
        raise _bad("the schema must be a JSON object with 'fields'", "validation_error")
    unknown = sorted(str(k) for k in raw if k not in _SCHEMA_KEYS)
    if unknown:
        raise _bad(f"unknown key {_show(unknown[0])} in the schema; allowed keys are "
                   f"{', '.join(_SCHEMA_KEYS)}", "validation_error")
    fields = raw.get("fields")
    fields = {} if fields is None else fields
    if not isinstance(fields, dict) or len(fields) > MAX_FIELDS:
        raise _bad(f"fields must be an object of at most {MAX_FIELDS} field schemas",
                   "validation_error")
    out: dict[str, FieldSchema] = {}
    for name, spec in fields.items():
        if not isinstance(spec, dict):
            raise _bad(f"schema field {_show(str(name))} must be an object", "validation_error")
        out[_check_name(name)] = _field(name, spec, None)
    version = raw.get("version")
    return Schema(out, version if isinstance(version, int) and version > 0 else 1)


def parse_constraints(raw: object, current: Schema | None) -> Schema:
    """``{"constraints": {field: {attr: value}}}`` applied over ``current``."""
    if not isinstance(raw, dict) or set(raw) != {"constraints"}:
        raise _bad("a schema update takes exactly one key, 'constraints'", "validation_error")
    constraints = raw["constraints"]
    if not isinstance(constraints, dict) or not constraints:
        raise _bad("constraints must be a non-empty object of field -> attributes",
                   "validation_error")
    base = current if current is not None else Schema()
    fields = dict(base.fields)
    for name, attrs in constraints.items():
        if not isinstance(attrs, dict):
            raise _bad(f"constraints[{_show(str(name))}] must be an object", "validation_error")
        fields[_check_name(name)] = _field(name, attrs, fields.get(name))
    if len(fields) > MAX_FIELDS:
        raise _bad(f"a schema has at most {MAX_FIELDS} fields", "validation_error")
    return Schema(fields, base.version + 1 if current is not None else 1, base.created_at,
                  time.time())


def check_existing(schema: Schema, records: Iterable[Mapping[str, Any]]) -> None:
    """409 naming the field when stored records break ``schema`` (before it is adopted)."""
    seen: dict[str, set[str]] = {n: set() for n in schema.unique_fields()}
    for record in records:
        for name, spec in schema.fields.items():
            value = record.get(name)
            if spec.problem(name, value) is not None:
                raise ApiError(409, "schema_conflict",
                               f"stored records break the new constraints of field "
                               f"{_show(name)}; fix them first")
            if name in seen and value is not None:
                key = _canon(value)
                if key in seen[name]:
                    raise ApiError(409, "schema_conflict",
                                   f"field {_show(name)} cannot be unique: stored records "
                                   "share a value")
                seen[name].add(key)


def check_unique(schema: Schema, record: Mapping[str, Any],
                 others: Iterable[Mapping[str, Any]]) -> None:
    """400 ``unique_violation`` naming the field if another record holds the same value."""
    names = [n for n in schema.unique_fields() if record.get(n) is not None]
    if not names:
        return
    wanted = {n: _canon(record[n]) for n in names}
    for other in others:
        if other.get("id") == record.get("id"):
            continue
        for name in names:
            value = other.get(name)
            if value is not None and _canon(value) == wanted[name]:
                raise _bad(f"field {_show(name)} must be unique: another record already has "
                           "this value", "unique_violation")


class SchemaStore:
    """Schemas by collection index, sealed with the keyring."""

    def __init__(self, keyring: KeyRing) -> None:
        self._keyring = keyring

    def get(self, conn: sqlite3.Connection, collection: str, cidx: bytes) -> Schema | None:
        row = conn.execute("SELECT data FROM ds_schemas WHERE cidx = ?", (cidx,)).fetchone()
        if row is None:
            return None
        try:
            plain = self._keyring.decrypt(_SERVICE, collection, row[0],
                                          aad("schema", collection))
        except DecryptionError:
            raise ApiError(500, "integrity_error",
                           "a stored schema failed its integrity check") from None
        doc = json.loads(plain)
        fields = {n: FieldSchema(**{**f, "enums": tuple(f.get("enums", ()))})
                  for n, f in doc["fields"].items()}
        return Schema(fields, doc["version"], doc["created_at"], doc["last_modified"])

    def put(self, conn: sqlite3.Connection, collection: str, cidx: bytes,
            schema: Schema) -> None:
        doc = {"fields": {n: {**f.__dict__, "enums": list(f.enums)}
                          for n, f in schema.fields.items()},
               "version": schema.version, "created_at": schema.created_at,
               "last_modified": schema.last_modified}
        sealed = self._keyring.encrypt(_SERVICE, collection, json.dumps(doc).encode(),
                                       aad("schema", collection))
        conn.execute("INSERT OR REPLACE INTO ds_schemas(cidx, data) VALUES (?, ?)",
                     (cidx, sealed))

    @staticmethod
    def drop(conn: sqlite3.Connection, cidx: bytes) -> None:
        conn.execute("DELETE FROM ds_schemas WHERE cidx = ?", (cidx,))
