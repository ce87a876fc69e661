"""Encryption at rest (SPEC §4.6): master key, HKDF-derived keys, AES-256-GCM, blind indexes.

Every ciphertext carries associated data naming its place (service, collection, id), so a
ciphertext copied to another row fails to decrypt instead of silently moving data.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import os
import secrets
import threading
from collections import OrderedDict
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MASTER_KEY_ENV = "EKODB_MASTER_KEY"
MASTER_KEY_FILE = "master.key"
KEY_BYTES = 32
NONCE_BYTES = 12
_VERSION = b"\x01"


class CryptoError(Exception):
    """Base class for crypto failures."""


class DecryptionError(CryptoError):
    """A ciphertext failed authentication: tampered, truncated, moved or under another key."""


class MasterKeyError(CryptoError):
    """The master key is missing or malformed."""


def _decode_key(text: str) -> bytes:
    text = text.strip()
    candidates: list[bytes] = []
    with contextlib.suppress(ValueError):
        candidates.append(bytes.fromhex(text))
    for decoder in (base64.b64decode, base64.urlsafe_b64decode):
        with contextlib.suppress(binascii.Error, ValueError):
            candidates.append(decoder(text + "=" * (-len(text) % 4)))
    for raw in candidates:
        if len(raw) == KEY_BYTES:
            return raw
    raise MasterKeyError("master key must be 32 bytes, hex or base64 encoded")


def load_master_key(data_dir: Path, env: dict[str, str] | None = None) -> bytes:
    """Master key from EKODB_MASTER_KEY, else from `<data_dir>/master.key` (created 0600)."""
    environ = os.environ if env is None else env
    value = environ.get(MASTER_KEY_ENV)
    if value:
        return _decode_key(value)
    path = data_dir / MASTER_KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(KEY_BYTES)
        tmp = data_dir / f".{MASTER_KEY_FILE}.{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(base64.b64encode(key).decode() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic publish: a concurrent start never sees a partial file
        except FileExistsError:
            pass  # another process won the race; read its key below
        finally:
            tmp.unlink()
    return _decode_key(path.read_text())


class Aead:
    """AES-256-GCM with a random 96-bit nonce; output is version || nonce || ciphertext."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise CryptoError("AES-256 key must be 32 bytes")
        self._aes = AESGCM(key)

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return _VERSION + nonce + self._aes.encrypt(nonce, plaintext, aad)

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < 1 + NONCE_BYTES + 16 or blob[:1] != _VERSION:
            raise DecryptionError("ciphertext malformed")
        nonce = blob[1 : 1 + NONCE_BYTES]
        try:
            return self._aes.decrypt(nonce, blob[1 + NONCE_BYTES :], aad)
        except InvalidTag as exc:
            raise DecryptionError("ciphertext failed authentication") from exc


class KeyRing:
    """Derives purpose keys from the master key with HKDF-SHA256, with a bounded cache.

    Hits read the cache without the lock (a dict read is atomic); only a miss takes it, to
    insert and evict the oldest entry (first in, first out: a hot entry evicted is derived
    again, which is all a miss costs).
    """

    def __init__(self, master_key: bytes, cache_size: int = 1024) -> None:
        if len(master_key) != KEY_BYTES:
            raise MasterKeyError("master key must be 32 bytes")
        self._master = master_key
        self._cache: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
        self._aeads: OrderedDict[tuple[str, str], Aead] = OrderedDict()
        self._size = cache_size
        self._lock = threading.Lock()

    def derive(self, purpose: str, service: str, scope: str = "") -> bytes:
        """A 32-byte key unique to (purpose, service, scope); cached (HKDF per call is slow)."""
        ident = (purpose, service, scope)
        cached = self._cache.get(ident)  # lock-free hit: one dict read is atomic
        if cached is not None:
            return cached
        info = b"ekodb|" + "|".join(ident).encode()
        key = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(
            self._master
        )
        with self._lock:
            self._cache[ident] = key
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return key

    def aead(self, service: str, collection: str = "") -> Aead:
        """AEAD for one (service, collection): e.g. ("datastore", "users"), ("keys", "")."""
        ident = (service, collection)
        found = self._aeads.get(ident)  # lock-free hit (every record decrypt comes here)
        if found is not None:
            return found
        made = Aead(self.derive("enc", service, collection))
        with self._lock:
            self._aeads[ident] = made
            if len(self._aeads) > self._size:
                self._aeads.popitem(last=False)
        return made

    def encrypt(self, service: str, collection: str, plaintext: bytes, aad: bytes) -> bytes:
        return self.aead(service, collection).encrypt(plaintext, aad)

    def decrypt(self, service: str, collection: str, blob: bytes, aad: bytes) -> bytes:
        return self.aead(service, collection).decrypt(blob, aad)

    def blind_index(self, service: str, scope: str, value: str | bytes) -> bytes:
        """Deterministic keyed hash so encrypted values (ids, key hashes) can be looked up."""
        data = value.encode() if isinstance(value, str) else value
        return hmac.digest(self.derive("bidx", service, scope), data, "sha256")  # one-shot C

    def jwt_secret(self) -> bytes:
        """Signing secret shared by every process using the same data dir / master key."""
        return self.derive("jwt", "auth")


def aad(*parts: str) -> bytes:
    """Associated data naming a ciphertext's place, e.g. aad("record", "users", rid)."""
    return "|".join(p.replace("\\", "\\\\").replace("|", "\\|") for p in parts).encode()
