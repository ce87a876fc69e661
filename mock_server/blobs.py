"""BlobStore domain (SPEC §3 BlobStore, §4.4, §4.6): tables of chunked, encrypted blob files.

Framework-free: routes feed uploads in batches of bytes and stream reads out of
:class:`OpenBlob`. Each blob is one file ``<data_dir>/blobs/<table uid>/<hmac(id)>-<version>``
of AES-256-GCM chunks (64 KiB plaintext each); every chunk's associated data names the
table, blob id, upload version, chunk index and whether it is the final chunk, so chunks
cannot be reordered, moved to another blob, or dropped from the end without the read failing.

Replacement is atomic: an upload writes a temp file, renames it to a new version-named file
and then swaps the metadata row in one transaction; readers open the file named by the row
they read (retrying if it was just unlinked), so they see the old blob or the new, never a
mix. Blob ids stay in clear in SQLite so listings can be sorted and resumed ``from`` an id;
bytes, checksums, content types and attributes are encrypted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from mock_server.crypto import DecryptionError, KeyRing, aad
from mock_server.errors import ApiError, bad_request, conflict, not_found, payload_too_large
from mock_server.http_json import parse_json_bytes
from mock_server.storage import Storage, register_schema

register_schema(
    """
    CREATE TABLE IF NOT EXISTS blob_tables (
        name TEXT PRIMARY KEY,
        uid TEXT NOT NULL,
        attributes BLOB NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS blobs (
        tbl TEXT NOT NULL,
        blob_id TEXT NOT NULL,
        version TEXT NOT NULL,
        meta BLOB NOT NULL,
        PRIMARY KEY (tbl, blob_id)
    );
    """
)

#: Plaintext bytes per encrypted chunk.
CHUNK = 64 * 1024
#: Bytes the keyring's AEAD adds to each chunk (format version, nonce, tag).
OVERHEAD = 1 + 12 + 16
SEALED = CHUNK + OVERHEAD
MAX_ATTRIBUTES_BYTES = 8 * 1024
MAX_LIST = 1000
#: Temp files of uploads older than this are from a crashed process and are swept.
STALE_UPLOAD_SECONDS = 3600.0

_TABLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_BLOB_ID = re.compile(r"[A-Za-z0-9._~:@+=,\-]{1,255}")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_CONTENT_TYPE = re.compile(r"[\x20-\x7e]{1,255}")
_RANGE_SPEC = re.compile(r"([0-9]{0,19})\s*-\s*([0-9]{0,19})")

#: Content types served as stored; anything else is served as application/octet-stream.
SAFE_CONTENT_TYPES = frozenset({
    "application/octet-stream", "application/json", "application/pdf", "application/zip",
    "application/gzip", "text/plain", "text/csv", "image/png", "image/jpeg", "image/gif",
    "image/webp", "audio/mpeg", "audio/ogg", "video/mp4", "video/webm",
})
DEFAULT_CONTENT_TYPE = "application/octet-stream"


def blob_corrupted(detail: str) -> ApiError:
    """The stored bytes failed authentication: never serve them."""
    return ApiError(500, "blob_corrupted",
                    f"the stored blob failed its integrity check ({detail}); it will not be "
                    "served")


# --------------------------------------------------------------------------- validation


def check_table(name: str) -> str:
    if not _TABLE.fullmatch(name):
        raise bad_request("table names are 1-128 characters of letters, digits, '_', '.', "
                          "'-', starting with a letter or digit", "invalid_name")
    return name


def check_blob_id(blob_id: str) -> str:
    if not _BLOB_ID.fullmatch(blob_id) or blob_id in (".", ".."):
        raise bad_request("blob ids are 1-255 characters of letters, digits and ._~:@+=,-",
                          "invalid_name")
    return blob_id


def parse_attributes(raw: str | bytes | None, *, max_depth: int = 64) -> dict[str, Any]:
    """Attributes are a JSON object of at most 8 KiB (header or body).

    Parsed by the same strict parser as request bodies (duplicate keys, NaN, deep nesting
    and lone surrogates refused). A header value arrives as latin-1 text: its bytes are the
    UTF-8 the client sent.
    """
    if raw is None or raw == "" or raw == b"":
        return {}
    if len(raw) > MAX_ATTRIBUTES_BYTES:
        raise bad_request(f"attributes exceed {MAX_ATTRIBUTES_BYTES} bytes")
    data = raw.encode("latin-1", "replace") if isinstance(raw, str) else raw
    try:
        value = parse_json_bytes(data, max_depth=max_depth)
    except ApiError as exc:
        raise bad_request(f"attributes: {exc.message}") from None
    return check_attributes(value)


def check_attributes(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_request("attributes must be a JSON object")
    try:
        encoded = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise bad_request("attributes must be plain JSON (no NaN or infinity)") from None
    if len(encoded) > MAX_ATTRIBUTES_BYTES:
        raise bad_request(f"attributes exceed {MAX_ATTRIBUTES_BYTES} bytes")
    return value


def check_content_type(value: str | None) -> str:
    if value is None or not value.strip():
        return DEFAULT_CONTENT_TYPE
    value = value.strip()
    if not _CONTENT_TYPE.fullmatch(value):
        raise bad_request("Content-Type must be 1-255 printable ASCII characters")
    return value


def served_content_type(stored: str) -> str:
    """The type a browser may see: the stored one only if its media type is on the safe list."""
    base = stored.split(";", 1)[0].strip().lower()
    return stored if base in SAFE_CONTENT_TYPES else DEFAULT_CONTENT_TYPE


def parse_md5(value: str | None) -> bytes | None:
    """``Content-MD5`` (base64 of the 16-byte digest, RFC 1864)."""
    if value is None:
        return None
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise bad_request("Content-MD5 must be the base64 of a 16-byte MD5 digest")
    return digest


def parse_sha256(value: str | None) -> bytes | None:
    """``X-Checksum-Sha256`` (64 hex characters)."""
    if value is None:
        return None
    if not _SHA256_HEX.fullmatch(value.strip()):
        raise bad_request("X-Checksum-Sha256 must be 64 hex characters")
    return bytes.fromhex(value.strip())


def parse_range(header: str | None, length: int) -> tuple[int, int] | None:
    """Inclusive (first, last) of a ``Range`` header; None = whole blob.

    One range per request (``bytes=a-b``, ``a-``, ``-n``). A unit other than ``bytes`` is
    ignored (RFC 9110 allows that); a malformed, multiple or unsatisfiable byte range → 416.
    """
    if header is None:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes":
        return None
    match = _RANGE_SPEC.fullmatch(spec.strip())
    if match is None or match.group(1) == match.group(2) == "":
        raise unsatisfiable(length, "only one byte range of the form a-b, a- or -n is supported")
    first_s, last_s = match.group(1), match.group(2)
    if first_s == "":
        suffix = int(last_s)
        if suffix == 0 or length == 0:
            raise unsatisfiable(length)
        return max(0, length - suffix), length - 1
    first = int(first_s)
    last = length - 1 if last_s == "" else min(int(last_s), length - 1)
    if first >= length or (last_s != "" and int(last_s) < first):
        raise unsatisfiable(length)
    return first, last


def unsatisfiable(length: int, why: str = "the range is outside the blob") -> ApiError:
    return ApiError(416, "range_not_satisfiable", why, {"Content-Range": f"bytes */{length}"})


# --------------------------------------------------------------------------- records


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


@dataclass(frozen=True)
class BlobTable:
    name: str
    uid: str
    attributes: dict[str, Any]
    created: float

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "attributes": self.attributes,
                "created_at": _iso(self.created)}


@dataclass(frozen=True)
class BlobMeta:
    table: str
    uid: str
    blob_id: str
    version: str
    length: int
    md5: str
    sha256: str
    content_type: str
    timestamp: float
    attributes: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "blob_id": self.blob_id, "length": self.length,
                "md5": self.md5, "sha256": self.sha256, "content_type": self.content_type,
                "timestamp": _iso(self.timestamp), "attributes": self.attributes}

    @property
    def chunks(self) -> int:
        return max(1, math.ceil(self.length / CHUNK))

    @property
    def file_size(self) -> int:
        return self.length + self.chunks * OVERHEAD


def _chunk_aad(table: str, uid: str, blob_id: str, version: str, index: int,
               final: bool) -> bytes:
    return aad("blob", table, uid, blob_id, version, str(index), "final" if final else "more")


def _meta_aad(table: str, uid: str, blob_id: str, version: str) -> bytes:
    return aad("blob-meta", table, uid, blob_id, version)


# --------------------------------------------------------------------------- store


Audit = Callable[[], object] | None


class BlobStore:
    """Tables and blobs of one data directory."""

    def __init__(self, storage: Storage, keyring: KeyRing, root: Path, max_bytes: int) -> None:
        self._storage = storage
        self._keyring = keyring
        self.root = root
        self.max_bytes = max_bytes
        root.mkdir(parents=True, exist_ok=True)
        self._sweep()

    def _sweep(self) -> None:
        """Remove temp files that a crashed upload left behind (never a live one)."""
        cutoff = time.time() - STALE_UPLOAD_SECONDS
        for tmp in self.root.glob("*/.up-*.tmp"):
            with suppress(OSError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()

    # ------------------------------------------------------------------ tables

    def _table_aad(self, name: str, uid: str) -> bytes:
        return aad("blob-table", name, uid)

    def create_table(self, name: str, attributes: dict[str, Any], audit: Audit = None
                     ) -> BlobTable:
        check_table(name)
        table = BlobTable(name, secrets.token_hex(16), check_attributes(attributes),
                          time.time())
        sealed = self._keyring.encrypt(
            "blob", name, json.dumps(table.attributes).encode(), self._table_aad(name, table.uid))
        (self.root / table.uid).mkdir(parents=True, exist_ok=True)
        try:
            with self._storage.transaction() as conn:
                if conn.execute("SELECT 1 FROM blob_tables WHERE name=?", (name,)).fetchone():
                    raise conflict(f"blob table {name!r} already exists", "table_exists")
                conn.execute("INSERT INTO blob_tables(name, uid, attributes, created) "
                             "VALUES (?,?,?,?)", (name, table.uid, sealed, table.created))
                if audit:
                    audit()
                self._storage.on_rollback(
                    lambda: shutil.rmtree(self.root / table.uid, ignore_errors=True))
        except BaseException:
            shutil.rmtree(self.root / table.uid, ignore_errors=True)
            raise
        return table

    def _table_row(self, name: str, row: tuple[str, str, bytes, float]) -> BlobTable:
        _, uid, sealed, created = row
        try:
            attrs = json.loads(self._keyring.decrypt("blob", name, sealed,
                                                     self._table_aad(name, uid)))
        except DecryptionError:
            raise blob_corrupted("table attributes") from None
        return BlobTable(name, uid, attrs, created)

    def get_table(self, name: str) -> BlobTable:
        check_table(name)
        row = self._storage.conn.execute(
            "SELECT name, uid, attributes, created FROM blob_tables WHERE name=?", (name,)
        ).fetchone()
        if row is None:
            raise not_found(f"no blob table {name!r}")
        return self._table_row(name, row)

    def list_tables(self) -> list[BlobTable]:
        rows = self._storage.conn.execute(
            "SELECT name, uid, attributes, created FROM blob_tables ORDER BY name").fetchall()
        return [self._table_row(row[0], row) for row in rows]

    def drop_table(self, name: str, audit: Audit = None) -> None:
        check_table(name)
        with self._storage.transaction() as conn:
            row = conn.execute("SELECT uid FROM blob_tables WHERE name=?", (name,)).fetchone()
            if row is None:
                raise not_found(f"no blob table {name!r}")
            conn.execute("DELETE FROM blobs WHERE tbl=?", (name,))
            conn.execute("DELETE FROM blob_tables WHERE name=?", (name,))
            if audit:
                audit()
            # Readers that already opened a file keep reading it (POSIX unlink semantics).
            self._storage.after_commit(
                lambda: shutil.rmtree(self.root / row[0], ignore_errors=True))

    # ------------------------------------------------------------------ blobs

    def _file(self, uid: str, blob_id: str, version: str) -> Path:
        name = self._keyring.blind_index("blob", uid, blob_id).hex()[:40]
        return self.root / uid / f"{name}-{version}.blob"

    def path_of(self, meta: BlobMeta) -> Path:
        """Where the current version of a blob lives (for operators and tamper tests)."""
        return self._file(meta.uid, meta.blob_id, meta.version)

    def _meta_row(self, table: str, uid: str, blob_id: str, version: str, sealed: bytes
                  ) -> BlobMeta:
        try:
            doc = json.loads(self._keyring.decrypt("blob", table, sealed,
                                                   _meta_aad(table, uid, blob_id, version)))
        except DecryptionError:
            raise blob_corrupted("metadata") from None
        return BlobMeta(table=table, uid=uid, blob_id=blob_id, version=version,
                        length=doc["length"], md5=doc["md5"], sha256=doc["sha256"],
                        content_type=doc["content_type"], timestamp=doc["timestamp"],
                        attributes=doc["attributes"])

    def metadata(self, table: str, blob_id: str) -> BlobMeta:
        check_blob_id(blob_id)
        t = self.get_table(table)
        row = self._storage.conn.execute(
            "SELECT version, meta FROM blobs WHERE tbl=? AND blob_id=?", (table, blob_id)
        ).fetchone()
        if row is None:
            raise not_found(f"no blob {blob_id!r} in table {table!r}")
        return self._meta_row(table, t.uid, blob_id, row[0], row[1])

    def list_blobs(self, table: str, after: str | None, limit: int) -> list[BlobMeta]:
        t = self.get_table(table)
        rows = self._storage.conn.execute(
            "SELECT blob_id, version, meta FROM blobs WHERE tbl=? AND blob_id>? "
            "ORDER BY blob_id LIMIT ?",
            (table, after or "", max(1, min(limit, MAX_LIST))),
        ).fetchall()
        return [self._meta_row(table, t.uid, bid, ver, sealed) for bid, ver, sealed in rows]

    def delete(self, table: str, blob_id: str, audit: Audit = None) -> None:
        check_blob_id(blob_id)
        t = self.get_table(table)
        with self._storage.transaction() as conn:
            row = conn.execute("SELECT version FROM blobs WHERE tbl=? AND blob_id=?",
                               (table, blob_id)).fetchone()
            if row is None:
                raise not_found(f"no blob {blob_id!r} in table {table!r}")
            conn.execute("DELETE FROM blobs WHERE tbl=? AND blob_id=?", (table, blob_id))
            if audit:
                audit()
            self._storage.after_commit(lambda: self._unlink(t.uid, blob_id, row[0]))

    def begin_upload(self, table: str, blob_id: str, *, content_type: str | None,
                     attributes: dict[str, Any], md5: bytes | None = None,
                     sha256: bytes | None = None) -> Upload:
        check_blob_id(blob_id)
        return Upload(self, self.get_table(table), blob_id, check_content_type(content_type),
                      check_attributes(attributes), md5, sha256)

    def open(self, table: str, blob_id: str) -> OpenBlob:
        """Open the current version for reading; the handle survives a later replacement."""
        for _ in range(8):
            meta = self.metadata(table, blob_id)
            try:
                handle = self._file(meta.uid, blob_id, meta.version).open("rb")
            except FileNotFoundError:
                continue  # replaced or deleted between the row read and the open: read again
            return OpenBlob(self._keyring, meta, handle)
        raise blob_corrupted("its file is missing")

    def _commit(self, upload: Upload, meta: BlobMeta, path: Path, audit: Audit) -> None:
        sealed = self._keyring.encrypt(
            "blob", meta.table,
            json.dumps({"length": meta.length, "md5": meta.md5, "sha256": meta.sha256,
                        "content_type": meta.content_type, "timestamp": meta.timestamp,
                        "attributes": meta.attributes}).encode(),
            _meta_aad(meta.table, meta.uid, meta.blob_id, meta.version))
        with self._storage.transaction() as conn:
            row = conn.execute("SELECT uid FROM blob_tables WHERE name=?",
                               (meta.table,)).fetchone()
            if row is None or row[0] != meta.uid:
                raise not_found(f"blob table {meta.table!r} was dropped during the upload")
            old = conn.execute("SELECT version FROM blobs WHERE tbl=? AND blob_id=?",
                               (meta.table, meta.blob_id)).fetchone()
            conn.execute(
                "INSERT INTO blobs(tbl, blob_id, version, meta) VALUES (?,?,?,?) "
                "ON CONFLICT(tbl, blob_id) DO UPDATE SET version=excluded.version, "
                "meta=excluded.meta", (meta.table, meta.blob_id, meta.version, sealed))
            if audit:
                audit()
            # the old version goes once the new one is durably in; if the swap rolls back
            # (now or, held with an idempotent answer, later) the new file goes instead
            if old is not None:
                self._storage.after_commit(
                    lambda: self._unlink(meta.uid, meta.blob_id, old[0]))
            self._storage.on_rollback(
                lambda: self._unlink(meta.uid, meta.blob_id, meta.version))

    def _unlink(self, uid: str, blob_id: str, version: str) -> None:
        with suppress(FileNotFoundError):
            self._file(uid, blob_id, version).unlink()


class Upload:
    """One streaming upload: hash, chunk, encrypt, write to a temp file; then swap it in.

    Not thread-safe; one upload is fed from one place. ``abort`` (or any failure) removes
    the temp file, so nothing half-written is ever visible.
    """

    def __init__(self, store: BlobStore, table: BlobTable, blob_id: str, content_type: str,
                 attributes: dict[str, Any], md5: bytes | None, sha256: bytes | None) -> None:
        self._store = store
        self._table = table
        self._blob_id = blob_id
        self._content_type = content_type
        self._attributes = attributes
        self._want_md5 = md5
        self._want_sha256 = sha256
        self.version = secrets.token_hex(16)
        self._aead = store._keyring.aead("blob", table.name)
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha256 = hashlib.sha256()
        self._buf = bytearray()
        self._index = 0
        self.length = 0
        self._tmp = store.root / table.uid / f".up-{self.version}.tmp"
        try:
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:
            raise not_found(f"blob table {table.name!r} was dropped") from None
        self._file: BinaryIO | None = os.fdopen(fd, "wb")

    def _emit(self, plain: bytes, final: bool) -> None:
        assert self._file is not None
        t = self._table
        self._file.write(self._aead.encrypt(plain, _chunk_aad(
            t.name, t.uid, self._blob_id, self.version, self._index, final)))
        self._index += 1

    def write(self, pieces: Iterable[bytes]) -> None:
        """Append bytes; full chunks are sealed at once, the last one waits for ``finish``."""
        try:
            buf = self._buf
            for piece in pieces:
                self.length += len(piece)
                if self.length > self._store.max_bytes:
                    raise payload_too_large(self._store.max_bytes)
                self._md5.update(piece)
                self._sha256.update(piece)
                buf += piece
            pos = 0
            view = memoryview(buf)
            try:
                while len(buf) - pos > CHUNK:  # keep >0 bytes back: it may be the final chunk
                    self._emit(bytes(view[pos:pos + CHUNK]), final=False)
                    pos += CHUNK
            finally:
                view.release()
            del buf[:pos]
        except BaseException:
            self.abort()
            raise

    def finish(self, audit: Audit = None) -> BlobMeta:
        """Seal the final chunk, check the client's checksums, publish atomically."""
        try:
            self._emit(bytes(self._buf), final=True)
            self._buf = bytearray()
            assert self._file is not None
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            md5, sha256 = self._md5.digest(), self._sha256.digest()
            if self._want_md5 is not None and md5 != self._want_md5:
                raise ApiError(400, "checksum_mismatch",
                               "the body does not match Content-MD5; nothing was stored")
            if self._want_sha256 is not None and sha256 != self._want_sha256:
                raise ApiError(400, "checksum_mismatch",
                               "the body does not match X-Checksum-Sha256; nothing was stored")
            t = self._table
            meta = BlobMeta(table=t.name, uid=t.uid, blob_id=self._blob_id,
                            version=self.version, length=self.length, md5=md5.hex(),
                            sha256=sha256.hex(), content_type=self._content_type,
                            timestamp=time.time(), attributes=self._attributes)
            path = self._store._file(t.uid, self._blob_id, self.version)
            os.rename(self._tmp, path)
            _fsync_dir(path.parent)
        except BaseException:
            self.abort()
            raise
        try:
            self._store._commit(self, meta, path, audit)
        except BaseException:
            with suppress(OSError):
                path.unlink()
            raise
        return meta

    def abort(self) -> None:
        """Drop the upload: close and remove the temp file (idempotent)."""
        if self._file is not None:
            with suppress(OSError):
                self._file.close()
            self._file = None
        with suppress(OSError):
            self._tmp.unlink()


def _fsync_dir(path: Path) -> None:
    with suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class OpenBlob:
    """A blob file opened for reading: decrypts and authenticates only the chunks asked for."""

    def __init__(self, keyring: KeyRing, meta: BlobMeta, handle: BinaryIO) -> None:
        self.meta = meta
        self._handle: BinaryIO | None = handle
        self._aead = keyring.aead("blob", meta.table)
        self._cached: tuple[int, bytes] | None = None
        try:
            if os.fstat(handle.fileno()).st_size != meta.file_size:
                raise blob_corrupted("its file has the wrong size")
        except BaseException:
            self.close()
            raise

    def chunk(self, index: int) -> bytes:
        """Plaintext of chunk ``index``; raises blob_corrupted if it does not authenticate."""
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        if self._handle is None:
            raise ValueError("blob is closed")
        m = self.meta
        final = index == m.chunks - 1
        size = (m.length - index * CHUNK) + OVERHEAD if final else SEALED
        self._handle.seek(index * SEALED)
        sealed = self._handle.read(size)
        try:
            plain = self._aead.decrypt(sealed, _chunk_aad(m.table, m.uid, m.blob_id, m.version,
                                                          index, final))
        except DecryptionError:
            raise blob_corrupted(f"chunk {index} does not authenticate") from None
        self._cached = (index, plain)
        return plain

    def verify_start(self, first: int) -> None:
        """Authenticate the first chunk a read needs before any header is sent."""
        self.chunk(first // CHUNK if self.meta.length else 0)

    def iter_range(self, first: int, last: int) -> Iterator[bytes]:
        """Plaintext bytes ``first..last`` (inclusive); closes the file when done."""
        try:
            if self.meta.length == 0:
                return
            for index in range(first // CHUNK, last // CHUNK + 1):
                plain = self.chunk(index)
                base = index * CHUNK
                lo = max(first - base, 0)
                hi = min(last + 1 - base, len(plain))
                yield plain if (lo, hi) == (0, len(plain)) else plain[lo:hi]
                self._cached = None
        finally:
            self.close()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
