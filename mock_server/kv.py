"""KV store domain (issue 15 item 1; ekoDB's ``/api/kv/...`` routes). Framework-free.

A key is a resource ``kv:<key>`` for permissions, so grants look like
``{"kv:session.*": ["read", "write"]}``; read-only keys never write. Keys use the resource-name
alphabet (letters, digits, ``_ . -``; 1-128 characters): ``:`` separates a service prefix in
permission patterns and ``*`` is a wildcard, so neither may appear inside a key.

Storage: one row per key, ``kidx`` (blind index of the key) as the primary key, the key and
the JSON value each AES-GCM sealed (the value's associated data names its key, so a value
copied to another row fails to open), and ``expires_at`` in clear (a number, needed for the
purge index). A read after ``expires_at`` misses at once; expired rows are purged by
:meth:`KVStore.purge` (the server's sweeper) ``purge_grace`` seconds later, and until then
``find(include_expired=True)`` still lists them.

``find`` decrypts every key name (they are not searchable in clear): its cost grows with the
number of keys, acceptable for a reference server and documented in the README. It answers
at most MAX_FIND entries: when more match it refuses (400 ``too_many_results``, narrow the
pattern) rather than cut the list silently.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

from mock_server.audit import AuditLog
from mock_server.crypto import DecryptionError, KeyRing, aad
from mock_server.datastore import Caller
from mock_server.errors import ApiError, bad_request, forbidden
from mock_server.permissions import Level
from mock_server.storage import Storage, register_schema

__all__ = ["MAX_KV_BATCH", "MAX_TTL", "KVStore", "parse_ttl"]

MAX_KV_BATCH: Final = 1000
MAX_KEY_LENGTH: Final = 128
MAX_PATTERN_LENGTH: Final = 256
MAX_TTL: Final = 10 * 365 * 86400
MAX_FIND: Final = 10_000
_SERVICE: Final = "kv"
_KEY: Final = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_DURATION: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

register_schema(
    """
    CREATE TABLE IF NOT EXISTS kv_entries (
        kidx BLOB PRIMARY KEY,
        kname BLOB NOT NULL,
        data BLOB NOT NULL,
        expires_at REAL
    );
    CREATE INDEX IF NOT EXISTS kv_entries_expiry ON kv_entries(expires_at)
        WHERE expires_at IS NOT NULL;
    """
)


def _show(value: str, limit: int = 64) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def check_key(key: object, where: str = "key") -> str:
    """A KV key (400 otherwise); see the module docstring for the alphabet."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        shown = _show(key) if isinstance(key, str) else type(key).__name__
        raise bad_request(f"{where} {shown} is not a valid KV key: use 1-{MAX_KEY_LENGTH} "
                          "letters, digits, '_', '.' or '-' (':' and '*' are reserved for "
                          "permission patterns)", "validation_error")
    return key


def parse_ttl(value: object, where: str = "ttl") -> float | None:
    """Seconds from a number or a duration string (``"30"``, ``"30s"``, ``"5m"``, ``"1h"``,
    ``"2d"``, ``"500ms"``); ``None`` means no expiry. 400 for anything else."""
    if value is None:
        return None
    seconds: float | None = None
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and len(value) <= 32:
        match = _DURATION.fullmatch(value)
        if match:
            seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds is None or not math.isfinite(seconds) or not 0 < seconds <= MAX_TTL:
        raise bad_request(f"{where}: expected a positive number of seconds (at most "
                          f"{MAX_TTL}) or a duration such as '30s', '5m', '1h', '2d'",
                          "validation_error")
    return seconds


def _object(body: object, allowed: tuple[str, ...], required: tuple[str, ...] = ()
            ) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object", "validation_error")
    unknown = sorted(str(k) for k in body if k not in allowed)
    if unknown:
        raise bad_request(f"unknown key {_show(unknown[0])}; allowed keys are "
                          f"{', '.join(allowed)}", "validation_error")
    missing = [k for k in required if k not in body]
    if missing:
        raise bad_request(f"missing key {missing[0]!r}", "validation_error")
    return body


def _keys(value: object, where: str = "keys") -> list[str]:
    if not isinstance(value, list):
        raise bad_request(f"{where}: expected an array of keys", "validation_error")
    if len(value) > MAX_KV_BATCH:
        raise ApiError(413, "batch_too_large",
                       f"{where}: at most {MAX_KV_BATCH} keys per request, got {len(value)}")
    return [check_key(k, f"{where}[{i}]") for i, k in enumerate(value)]


class KVStore:
    """Durable, encrypted key → JSON value entries with optional expiry."""

    def __init__(self, storage: Storage, keyring: KeyRing, audit: AuditLog, *,
                 purge_grace: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        self._storage = storage
        self._keyring = keyring
        self._audit = audit
        self._purge_grace = purge_grace
        self._clock = clock

    # ---------------------------------------------------------------- crypto & rows

    def _kidx(self, key: str) -> bytes:
        return self._keyring.blind_index(_SERVICE, "key", key)

    def _seal_value(self, key: str, value: Any) -> bytes:
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False)
        except ValueError:
            raise bad_request("NaN and Infinity are not JSON values",
                              "validation_error") from None
        return self._keyring.encrypt(_SERVICE, "", text.encode(), aad("kv-value", key))

    def _open_value(self, key: str, sealed: bytes) -> Any:
        try:
            return json.loads(self._keyring.decrypt(_SERVICE, "", sealed, aad("kv-value", key)))
        except DecryptionError:
            raise ApiError(500, "integrity_error",
                           "a stored KV entry failed its integrity check") from None

    def _open_key(self, kidx: bytes, sealed: bytes) -> str:
        try:
            return self._keyring.decrypt(_SERVICE, "", sealed,
                                         aad("kv-key", kidx.hex())).decode()
        except DecryptionError:
            raise ApiError(500, "integrity_error",
                           "a stored KV key failed its integrity check") from None

    # ---------------------------------------------------------------- permissions

    @staticmethod
    def _require(caller: Caller, keys: list[str], level: Level) -> None:
        for key in keys:
            if not caller.scope.allows(f"kv:{key}", level):
                raise forbidden(f"this API key may not {level.value} KV key {_show(key)}")

    def _audit_write(self, caller: Caller, operation: str, keys: list[str]) -> None:
        resource = f"kv:{keys[0]}" if len(keys) == 1 else "kv:*"
        self._audit.record(operation, key_id=caller.key_id, label=caller.label,
                           resource=resource, details={"count": len(keys)})

    # ---------------------------------------------------------------- operations

    def set(self, caller: Caller, key: object, body: object) -> dict[str, Any]:
        """``{"value", "ttl"?}`` → ``{"key", "expires_at"}`` (a set replaces the entry)."""
        name = check_key(key)
        data = _object(body, ("value", "ttl"), ("value",))
        self._require(caller, [name], Level.WRITE)
        expires = self._expiry(parse_ttl(data.get("ttl")))
        with self._storage.transaction() as conn:
            self._put(conn, name, data["value"], expires)
            self._audit_write(caller, "kv.set", [name])
        return {"key": name, "expires_at": expires}

    def _expiry(self, ttl: float | None) -> float | None:
        return None if ttl is None else self._clock() + ttl

    def _put(self, conn: Any, key: str, value: Any, expires: float | None) -> None:
        kidx = self._kidx(key)
        sealed_key = self._keyring.encrypt(_SERVICE, "", key.encode(), aad("kv-key", kidx.hex()))
        conn.execute(
            "INSERT INTO kv_entries(kidx, kname, data, expires_at) VALUES (?,?,?,?) "
            "ON CONFLICT(kidx) DO UPDATE SET kname = excluded.kname, data = excluded.data, "
            "expires_at = excluded.expires_at",
            (kidx, sealed_key, self._seal_value(key, value), expires))

    def _live(self, key: str) -> tuple[bool, Any]:
        row = self._storage.conn.execute(
            "SELECT data, expires_at FROM kv_entries WHERE kidx = ?", (self._kidx(key),)
        ).fetchone()
        if row is None or (row[1] is not None and row[1] <= self._clock()):
            return False, None
        return True, self._open_value(key, row[0])

    def get(self, caller: Caller, key: object) -> dict[str, Any]:
        """→ ``{"value"}``; 404 when absent or expired."""
        name = check_key(key)
        self._require(caller, [name], Level.READ)
        found, value = self._live(name)
        if not found:
            raise ApiError(404, "not_found", "KV key not found (absent or expired)")
        return {"value": value}

    def delete(self, caller: Caller, key: object) -> dict[str, Any]:
        """→ ``{"key", "deleted"}``: deleting an absent key is not an error (idempotent)."""
        name = check_key(key)
        self._require(caller, [name], Level.WRITE)
        with self._storage.transaction() as conn:
            found = self._delete_row(conn, name)
            self._audit_write(caller, "kv.delete", [name])
        return {"key": name, "deleted": found}

    def _delete_row(self, conn: Any, key: str) -> bool:
        now = self._clock()
        row = conn.execute("SELECT expires_at FROM kv_entries WHERE kidx = ?",
                           (self._kidx(key),)).fetchone()
        conn.execute("DELETE FROM kv_entries WHERE kidx = ?", (self._kidx(key),))
        return row is not None and (row[0] is None or row[0] > now)

    def batch_get(self, caller: Caller, body: object) -> list[dict[str, Any]]:
        """``{"keys"}`` → ``[{"key", "value"}]`` for the keys that exist (in request order)."""
        keys = _keys(_object(body, ("keys",), ("keys",))["keys"])
        self._require(caller, keys, Level.READ)
        out: list[dict[str, Any]] = []
        for key in dict.fromkeys(keys):
            found, value = self._live(key)
            if found:
                out.append({"key": key, "value": value})
        return out

    def batch_set(self, caller: Caller, body: object) -> list[list[Any]]:
        """``{"keys", "values", "ttl"?}`` (parallel arrays) → ``[[key, true], ...]``; all or
        nothing: one bad key or a missing grant stores none of them."""
        data = _object(body, ("keys", "values", "ttl"), ("keys", "values"))
        keys = _keys(data["keys"])
        values = data["values"]
        if not isinstance(values, list) or len(values) != len(keys):
            raise bad_request("values: expected an array as long as keys", "validation_error")
        self._require(caller, keys, Level.WRITE)
        expires = self._expiry(parse_ttl(data.get("ttl")))
        with self._storage.transaction() as conn:
            for key, value in zip(keys, values, strict=True):
                self._put(conn, key, value, expires)
            if keys:
                self._audit_write(caller, "kv.batch_set", keys)
        return [[key, True] for key in keys]

    def batch_delete(self, caller: Caller, body: object) -> list[list[Any]]:
        """``{"keys"}`` → ``[[key, existed], ...]``."""
        keys = _keys(_object(body, ("keys",), ("keys",))["keys"])
        self._require(caller, keys, Level.WRITE)
        with self._storage.transaction() as conn:
            out = [[key, self._delete_row(conn, key)] for key in keys]
            if keys:
                self._audit_write(caller, "kv.batch_delete", keys)
        return out

    def find(self, caller: Caller, body: object) -> list[dict[str, Any]]:
        """``{"pattern"?, "include_expired"?}`` → ``[{"key", "value", "expires_at"}]``.

        ``pattern`` is a glob (``*`` any run, ``?`` one character); null or absent lists
        every key. Only keys the caller may read are ever returned, sorted by key.
        """
        data = _object(body, ("pattern", "include_expired"))
        pattern = data.get("pattern")
        if pattern is not None and (not isinstance(pattern, str)
                                    or not 1 <= len(pattern) <= MAX_PATTERN_LENGTH):
            raise bad_request(f"pattern: expected a glob of 1-{MAX_PATTERN_LENGTH} characters "
                              "or null", "validation_error")
        include_expired = data.get("include_expired")
        if include_expired is None:
            include_expired = False
        if not isinstance(include_expired, bool):
            raise bad_request("include_expired: expected true or false", "validation_error")
        matcher = re.compile(fnmatch.translate(pattern)) if pattern is not None else None
        now = self._clock()
        out: list[dict[str, Any]] = []
        for kidx, sealed_key, sealed_value, expires in self._rows():
            if not include_expired and expires is not None and expires <= now:
                continue
            key = self._open_key(kidx, sealed_key)
            if matcher is not None and not matcher.fullmatch(key):
                continue
            if not caller.scope.allows(f"kv:{key}", Level.READ):
                continue
            if len(out) >= MAX_FIND:  # never a silent cut: the caller narrows the pattern
                raise bad_request(f"more than {MAX_FIND} keys match; narrow the pattern "
                                  "(e.g. a longer prefix before '*')", "too_many_results")
            out.append({"key": key, "value": self._open_value(key, sealed_value),
                        "expires_at": expires})
        out.sort(key=lambda entry: str(entry["key"]))
        return out

    def _rows(self) -> Iterator[tuple[bytes, bytes, bytes, float | None]]:
        yield from self._storage.conn.execute(
            "SELECT kidx, kname, data, expires_at FROM kv_entries").fetchall()

    def purge(self) -> int:
        """Remove entries expired more than ``purge_grace`` seconds ago; how many went."""
        cutoff = self._clock() - self._purge_grace
        if not self._storage.conn.execute(  # a cheap read first: most rounds find nothing
                "SELECT 1 FROM kv_entries WHERE expires_at IS NOT NULL AND expires_at <= ? "
                "LIMIT 1", (cutoff,)).fetchone():
            return 0
        with self._storage.transaction() as conn:
            cur = conn.execute("DELETE FROM kv_entries WHERE expires_at IS NOT NULL "
                               "AND expires_at <= ?", (cutoff,))
            return int(cur.rowcount)

    def count(self) -> int:
        """Rows stored, expired or not (for tests and metrics)."""
        row = self._storage.conn.execute("SELECT COUNT(*) FROM kv_entries").fetchone()
        return int(row[0])

