"""API key registry: scoped keys stored as keyed hashes, metadata encrypted at rest.

Every lookup reads SQLite, so several server processes on one data dir agree and
revocation/rotation/narrowing take effect on the very next request. Every change of a key
(update, rotate) bumps its ``version`` and deletion removes the row, so
:meth:`KeyStore.version_of` (one primary-key read, no decryption) is enough to tell whether
a record decoded earlier is still the key's current state.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mock_server.config import TIERS
from mock_server.crypto import KeyRing, aad
from mock_server.permissions import PermissionSpecError, Scope
from mock_server.storage import Storage, register_schema

ADMIN_KEY_ENV = "EKODB_ADMIN_KEY"
MAX_KEY_LEN = 256
MAX_LABEL = 200
MAX_DESCRIPTION = 2000
MAX_IPS = 256

register_schema(
    """
    CREATE TABLE IF NOT EXISTS api_keys (
        key_id TEXT PRIMARY KEY,
        secret_hash BLOB NOT NULL UNIQUE,
        version INTEGER NOT NULL,
        created_at REAL NOT NULL,
        meta BLOB NOT NULL
    );
    CREATE TABLE IF NOT EXISTS server_meta (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS api_key_parents (
        key_id TEXT PRIMARY KEY,
        parent TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS api_key_parents_parent ON api_key_parents(parent);
    """
)

_SELECT = ("SELECT k.key_id, k.version, k.created_at, k.meta, p.parent FROM api_keys k "
           "LEFT JOIN api_key_parents p ON p.key_id = k.key_id")
_TREE = ("WITH RECURSIVE tree(id) AS (SELECT ? UNION SELECT p.key_id FROM api_key_parents p "
         "JOIN tree ON p.parent = tree.id) SELECT id FROM tree")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class KeyValidationError(ValueError):
    """A key field is invalid; the message is safe to show to the client."""


@dataclass(frozen=True)
class KeyRecord:
    """One API key as stored (never includes the secret)."""

    key_id: str
    label: str
    description: str | None
    is_admin: bool
    read_only: bool
    collection_permissions: dict[str, Any]
    allowed_ips: list[str]
    tier: str
    version: int
    created_at: float
    networks: tuple[IPNetwork, ...] = field(default=(), compare=False, repr=False)
    #: Requests per rate-limit window for this key; None = the tier's limit.
    rate_limit: int | None = None
    #: The delegated admin key that minted this one (revoked with it); None otherwise.
    created_by: str | None = None

    def scope(self) -> Scope:
        return Scope.from_raw(
            self.collection_permissions, is_admin=self.is_admin, read_only=self.read_only
        )

    def ip_allowed(self, ip: IPAddress | None) -> bool:
        """True when the key has no allowlist or the address is inside one of its networks."""
        if not self.networks:
            return True
        if ip is None:
            return False
        return any(ip.version == net.version and ip in net for net in self.networks)


def normalize_ip(text: str) -> IPAddress | None:
    """Parse an address; IPv4-mapped IPv6 becomes IPv4 so allowlists match either form."""
    try:
        ip = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def normalize_network(text: str) -> IPNetwork:
    """Parse a CIDR (or bare address); IPv4-mapped IPv6 networks become IPv4 networks."""
    net = ipaddress.ip_network(text.strip(), strict=False)
    if isinstance(net, ipaddress.IPv6Network):
        mapped = net.network_address.ipv4_mapped
        if mapped is not None and net.prefixlen >= 96:
            return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net


def check_exact_network(text: str, net: IPNetwork, what: str) -> None:
    """Refuse a CIDR with host bits set, and a /0 (every address) written as a prefix.

    ``10.0.0.1/8`` used to be widened silently to ``10.0.0.0/8``: whoever wrote it most likely
    meant one address, so it is refused with the two readings spelled out. ``0.0.0.0/0`` or
    ``::/0`` in an allowlist restricts nothing (for its family): no allowlist says that
    explicitly, so an allowlist may not.
    """
    given = text.strip()
    if "/" in given:
        try:
            ipaddress.ip_network(given, strict=True)
        except ValueError:
            addr = given.split("/", 1)[0]
            raise KeyValidationError(
                f"{what}: {given[:64]!r} has host bits set; write {str(net)!r} for the "
                f"network or {addr[:48]!r} for the single address") from None
    if net.prefixlen == 0:
        raise KeyValidationError(
            f"{what}: {given[:64]!r} allows every address; to leave a key unrestricted, "
            "give no allowed_ips (an empty list)")


def validate_allowed_ips(raw: object) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise KeyValidationError("allowed_ips must be a list of CIDR strings")
    if len(raw) > MAX_IPS:
        raise KeyValidationError(f"allowed_ips has more than {MAX_IPS} entries")
    out: list[str] = []
    for item in raw:
        try:
            if "%" in item:  # a zone id names an interface of the client, not a network
                raise ValueError(item)
            net = normalize_network(item)
        except ValueError:
            raise KeyValidationError(f"allowed_ips: {item[:64]!r} is not a CIDR") from None
        check_exact_network(item, net, "allowed_ips")
        if str(net) not in out:
            out.append(str(net))
    return out


def _validate_label(label: object) -> str:
    if not isinstance(label, str) or not label.strip() or len(label) > MAX_LABEL:
        raise KeyValidationError(f"label must be a non-empty string of at most {MAX_LABEL} chars")
    return label


def _validate_description(desc: object) -> str | None:
    if desc is None:
        return None
    if not isinstance(desc, str) or len(desc) > MAX_DESCRIPTION:
        raise KeyValidationError(f"description must be a string of at most {MAX_DESCRIPTION}")
    return desc


def _validate_tier(tier: object) -> str:
    if tier is None:
        return "developer"
    if tier not in TIERS:
        raise KeyValidationError("tier must be one of " + ", ".join(TIERS))
    return str(tier)


MAX_RATE_LIMIT = 100_000_000


def validate_rate_limit(raw: object) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_RATE_LIMIT:
        raise KeyValidationError(f"rate_limit must be an integer from 1 to {MAX_RATE_LIMIT}")
    return raw


def validate_scope(raw: object, *, is_admin: bool, read_only: bool) -> dict[str, Any]:
    """Check a permission map with the permission engine; returns the stored JSON form."""
    perms: object = {} if raw is None else raw
    if not isinstance(perms, dict):
        raise KeyValidationError("collection_permissions must be an object")
    try:
        Scope.from_raw(perms, is_admin=is_admin, read_only=read_only)
    except PermissionSpecError as exc:
        raise KeyValidationError(f"collection_permissions: {exc}") from None
    return dict(perms)


class KeyStore:
    """CRUD over the ``api_keys`` table."""

    def __init__(self, storage: Storage, keyring: KeyRing, env: str = "test") -> None:
        self._storage = storage
        self._keyring = keyring
        self._env = env

    # -- secrets -------------------------------------------------------------------------
    def new_secret(self) -> str:
        return f"eko_{self._env}_{secrets.token_urlsafe(32)}"

    def _hash(self, api_key: str) -> bytes:
        return self._keyring.blind_index("keys", "secret", api_key)

    # -- row codec -----------------------------------------------------------------------
    def _seal(self, key_id: str, meta: Mapping[str, Any]) -> bytes:
        plain = json.dumps(meta, separators=(",", ":")).encode()
        return self._keyring.encrypt("keys", "", plain, aad("apikey", key_id))

    def _row_to_record(self, row: Sequence[Any]) -> KeyRecord:
        key_id, version, created_at, sealed, parent = row
        meta = json.loads(self._keyring.decrypt("keys", "", sealed, aad("apikey", key_id)))
        ips: list[str] = meta.get("allowed_ips") or []
        return KeyRecord(
            key_id=key_id,
            label=meta["label"],
            description=meta.get("description"),
            is_admin=bool(meta["is_admin"]),
            read_only=bool(meta["read_only"]),
            collection_permissions=meta.get("collection_permissions") or {},
            allowed_ips=ips,
            tier=meta.get("tier", "developer"),
            version=int(version),
            created_at=float(created_at),
            networks=tuple(normalize_network(n) for n in ips),
            rate_limit=meta.get("rate_limit"),
            created_by=parent,
        )

    @staticmethod
    def _meta(rec: KeyRecord) -> dict[str, Any]:
        return {
            "label": rec.label,
            "description": rec.description,
            "is_admin": rec.is_admin,
            "read_only": rec.read_only,
            "collection_permissions": rec.collection_permissions,
            "allowed_ips": rec.allowed_ips,
            "tier": rec.tier,
            "rate_limit": rec.rate_limit,
        }

    # -- operations ----------------------------------------------------------------------
    def create(
        self,
        label: object,
        *,
        description: object = None,
        is_admin: bool = False,
        read_only: bool = False,
        collection_permissions: object = None,
        allowed_ips: object = None,
        tier: object = None,
        rate_limit: object = None,
        secret: str | None = None,
        created_by: str | None = None,
    ) -> tuple[KeyRecord, str]:
        """Create a key; returns the record and the secret (shown to the caller once).

        ``created_by``: the delegated admin minting it; the key is then revoked with it.
        """
        perms = validate_scope(collection_permissions, is_admin=is_admin, read_only=read_only)
        ips = validate_allowed_ips(allowed_ips)
        rec = KeyRecord(
            key_id="key_" + secrets.token_hex(12),
            label=_validate_label(label),
            description=_validate_description(description),
            is_admin=bool(is_admin),
            read_only=bool(read_only),
            collection_permissions=perms,
            allowed_ips=ips,
            tier=_validate_tier(tier),
            version=1,
            created_at=time.time(),
            networks=tuple(normalize_network(n) for n in ips),
            rate_limit=validate_rate_limit(rate_limit),
            created_by=created_by,
        )
        api_key = secret or self.new_secret()
        with self._storage.transaction() as conn:
            conn.execute(
                "INSERT INTO api_keys(key_id, secret_hash, version, created_at, meta)"
                " VALUES (?,?,?,?,?)",
                (rec.key_id, self._hash(api_key), rec.version, rec.created_at,
                 self._seal(rec.key_id, self._meta(rec))),
            )
            if created_by is not None:
                conn.execute("INSERT INTO api_key_parents(key_id, parent) VALUES (?,?)",
                             (rec.key_id, created_by))
        return rec, api_key

    def authenticate(self, api_key: object) -> KeyRecord | None:
        """The key owning this secret, or None (constant-time compare of the keyed hash)."""
        if not isinstance(api_key, str) or not api_key or len(api_key) > MAX_KEY_LEN:
            return None
        digest = self._hash(api_key)
        row = self._storage.conn.execute(
            "SELECT k.key_id, k.version, k.created_at, k.meta, p.parent, k.secret_hash "
            "FROM api_keys k LEFT JOIN api_key_parents p ON p.key_id = k.key_id "
            "WHERE k.secret_hash = ?",
            (digest,),
        ).fetchone()
        if row is None or not hmac.compare_digest(bytes(row[5]), digest):
            return None
        return self._row_to_record(row[:5])

    def secret_digest(self, key_id: str) -> bytes | None:
        """The keyed hash of the key's current secret (changes on rotation); None if gone."""
        row = self._storage.conn.execute("SELECT secret_hash FROM api_keys WHERE key_id = ?",
                                         (key_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def version_of(self, key_id: str) -> int | None:
        """The key's current version (None if it does not exist): a cheap freshness check."""
        row = self._storage.conn.execute(
            "SELECT version FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
        return None if row is None else int(row[0])

    def get(self, key_id: str) -> KeyRecord | None:
        row = self._storage.conn.execute(f"{_SELECT} WHERE k.key_id = ?", (key_id,)).fetchone()
        return None if row is None else self._row_to_record(row)

    def list(self) -> list[KeyRecord]:
        rows = self._storage.conn.execute(
            f"{_SELECT} ORDER BY k.created_at, k.key_id").fetchall()
        return [self._row_to_record(r) for r in rows]

    def descendants(self, key_id: str) -> tuple[str, ...]:
        """Ids of the keys ``key_id`` minted, and those they minted, and so on."""
        rows = self._storage.conn.execute(_TREE, (key_id,)).fetchall()
        return tuple(r[0] for r in rows if r[0] != key_id)

    def delete(self, key_id: str) -> tuple[str, ...]:
        """Delete a key and every key minted under it (children of a delegated admin are
        revoked with it); the ids deleted, () if there was no such key."""
        with self._storage.transaction() as conn:
            if conn.execute("SELECT 1 FROM api_keys WHERE key_id = ?", (key_id,)).fetchone() \
                    is None:
                return ()
            ids = tuple(r[0] for r in conn.execute(_TREE, (key_id,)).fetchall())
            for gone in ids:
                conn.execute("DELETE FROM api_keys WHERE key_id = ?", (gone,))
                conn.execute("DELETE FROM api_key_parents WHERE key_id = ?", (gone,))
        return ids

    def rotate(self, key_id: str) -> tuple[KeyRecord, str] | None:
        """New secret, same id and permissions, version + 1 (old tokens stop working)."""
        api_key = self.new_secret()
        with self._storage.transaction() as conn:
            rec = self.get(key_id)
            if rec is None:
                return None
            conn.execute(
                "UPDATE api_keys SET secret_hash = ?, version = version + 1 WHERE key_id = ?",
                (self._hash(api_key), key_id),
            )
        new = self.get(key_id)
        assert new is not None
        return new, api_key

    def update(self, key_id: str, changes: Mapping[str, Any]) -> KeyRecord | None:
        """Change label/description/permissions/read_only/allowed_ips/tier/rate_limit; bumps
        version."""
        with self._storage.transaction() as conn:
            rec = self.get(key_id)
            if rec is None:
                return None
            meta = self._meta(rec)
            if "label" in changes:
                meta["label"] = _validate_label(changes["label"])
            if "description" in changes:
                meta["description"] = _validate_description(changes["description"])
            if "read_only" in changes:
                if not isinstance(changes["read_only"], bool):
                    raise KeyValidationError("read_only must be a boolean")
                meta["read_only"] = changes["read_only"]
            if "tier" in changes:
                meta["tier"] = _validate_tier(changes["tier"])
            if "allowed_ips" in changes:
                meta["allowed_ips"] = validate_allowed_ips(changes["allowed_ips"])
            if "rate_limit" in changes:
                meta["rate_limit"] = validate_rate_limit(changes["rate_limit"])
            if "collection_permissions" in changes or "read_only" in changes:
                meta["collection_permissions"] = validate_scope(
                    changes.get("collection_permissions", meta["collection_permissions"]),
                    is_admin=meta["is_admin"],
                    read_only=meta["read_only"],
                )
            conn.execute(
                "UPDATE api_keys SET meta = ?, version = version + 1 WHERE key_id = ?",
                (self._seal(key_id, meta), key_id),
            )
        return self.get(key_id)

    def bootstrap(self, environ: Mapping[str, str] | None = None) -> str | None:
        """Ensure an admin key exists; returns a newly generated admin secret, else None.

        With ``EKODB_ADMIN_KEY`` set, that secret becomes (or stays) an admin key and nothing
        is returned (the operator already knows it). Otherwise an admin key is generated on the
        first start of a data dir only, guarded by a marker row so concurrent starts agree.
        """
        env = os.environ if environ is None else environ
        given = env.get(ADMIN_KEY_ENV)
        with self._storage.transaction() as conn:
            if given:
                if len(given) < 16 or len(given) > MAX_KEY_LEN:
                    raise KeyValidationError(f"{ADMIN_KEY_ENV} must be 16..{MAX_KEY_LEN} chars")
                if self.authenticate(given) is None:
                    self.create("admin", description="from " + ADMIN_KEY_ENV, is_admin=True,
                                secret=given)
                conn.execute(
                    "INSERT OR IGNORE INTO server_meta(name, value) VALUES ('bootstrapped', '1')"
                )
                return None
            done = conn.execute(
                "SELECT 1 FROM server_meta WHERE name = 'bootstrapped'"
            ).fetchone()
            if done:
                return None
            _, api_key = self.create("admin", description="bootstrap admin key", is_admin=True)
            conn.execute("INSERT INTO server_meta(name, value) VALUES ('bootstrapped', '1')")
            return api_key
