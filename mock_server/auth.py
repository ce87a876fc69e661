"""Request authentication: bearer token → fresh key row → Principal.

The key's version is re-read from SQLite on every request, so deletion, rotation, scope
narrowing and allowlist changes bite on the very next request of an issued token, in every
process sharing the data dir. Only the decoded Principal (decrypted row, parsed permissions,
networks) is cached, keyed by (key id, version): every change of a key bumps its version.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from mock_server.asgi import Scope as AsgiScope
from mock_server.errors import ApiError, forbidden, unauthorized
from mock_server.keys import IPAddress, IPNetwork, KeyRecord, KeyStore, normalize_ip
from mock_server.metrics import Metrics
from mock_server.permissions import Level, PermissionDenied, Scope
from mock_server.tokens import TokenError, TokenService

INVALID_TOKEN = "invalid or expired token"
#: Decoded keys remembered per process (cleared whole when full: a miss costs one decode).
PRINCIPAL_CACHE = 4096


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""

    key_id: str
    label: str
    is_admin: bool
    read_only: bool
    tier: str
    scope: Scope
    record: KeyRecord

    def require(self, resource: str, level: Level) -> None:
        """403 unless the key may act on `resource` at `level`."""
        try:
            self.scope.require(resource, level)
        except PermissionDenied as exc:
            raise forbidden(str(exc)) from None

    def require_admin(self, *, write: bool = False) -> None:
        """403 unless this is an admin key (and not read-only, for writes)."""
        if not self.is_admin:
            raise forbidden("admin key required")
        if write and self.read_only:
            raise forbidden("key is read-only")


def parse_networks(cidrs: Sequence[str]) -> tuple[IPNetwork, ...]:
    """Trusted-proxy CIDRs; host bits are refused (ValueError) rather than widened."""
    out: list[IPNetwork] = []
    for cidr in cidrs:
        try:
            out.append(ipaddress.ip_network(cidr.strip(), strict=True))
        except ValueError as exc:
            raise ValueError(f"trusted proxy {cidr[:64]!r}: {exc}") from None
    return tuple(out)


def forwarded_for(scope: AsgiScope) -> str | None:
    """Every X-Forwarded-For header line joined in order (RFC 9110 list semantics): a proxy
    that adds its own line must not be hidden behind a first line the client forged."""
    values = [bytes(v).decode("latin-1") for k, v in scope.get("headers", ())
              if k == b"x-forwarded-for"]
    return ", ".join(values) if values else None


def client_ip(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]
) -> IPAddress | None:
    """Client address; X-Forwarded-For is honoured only when the peer is a trusted proxy,
    walking from the right and skipping trusted hops (left entries are client-forgeable).
    The rightmost untrusted entry decides; if it is not an address, the client is unknown
    (None: keys with an allowlist are refused) rather than the proxy itself."""
    ip = normalize_ip(peer) if peer else None
    if ip is None or not trusted or not forwarded_for:
        return ip

    def is_trusted(addr: IPAddress) -> bool:
        return any(addr.version == n.version and addr in n for n in trusted)

    if not is_trusted(ip):
        return ip
    for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
        addr = normalize_ip(hop)
        if addr is None:
            return None  # the deciding entry is garbage: the client's address is unknown
        ip = addr
        if not is_trusted(addr):
            return addr
    return ip


class Authenticator:
    """Turns a request's credentials into a Principal or raises 401/403."""

    def __init__(self, keys: KeyStore, tokens: TokenService, metrics: Metrics) -> None:
        self.keys = keys
        self.tokens = tokens
        self.metrics = metrics
        #: key id -> Principal decoded from the row at Principal.record.version
        self._principals: dict[str, Principal] = {}

    def _fail(self) -> ApiError:
        self.metrics.inc("ekodb_failed_auth_total")
        return unauthorized(INVALID_TOKEN)

    @staticmethod
    def bearer(authorization: str | None) -> str | None:
        if not authorization:
            return None
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        return value.strip()

    def key_id_of(self, authorization: str | None) -> str | None:
        """Key id of a validly signed token, without touching the database."""
        token = self.bearer(authorization)
        if token is None:
            return None
        try:
            return self.tokens.verify(token).key_id
        except TokenError:
            return None

    def feed_scope(self, key_id: str, secret: bytes | None, ip: IPAddress | None) -> Scope:
        """The current rights of the key behind a long-lived feed (SSE), re-read by key id.

        Any key edit bumps the key's version and so invalidates its tokens, and a token
        expires; neither should end a feed of a key that still exists with the same secret
        (a relabel is not a revocation). A deleted key or a rotated secret (``secret``, its
        digest when the feed opened, no longer matches) gives 401, an address no longer
        allowed 403; rights are checked by the caller on the scope returned.
        """
        record = self.keys.get(key_id)
        if record is None or secret is None or self.keys.secret_digest(key_id) != secret:
            raise unauthorized("the API key was revoked or rotated")
        if not record.ip_allowed(ip):
            raise forbidden("client address not allowed for this key")
        return record.scope()

    def principal(self, authorization: str | None, ip: IPAddress | None) -> Principal:
        token = self.bearer(authorization)
        if token is None:
            self.metrics.inc("ekodb_failed_auth_total")
            raise unauthorized("missing bearer token")
        try:
            claims = self.tokens.verify(token)
        except TokenError:
            raise self._fail() from None
        principal = self._current(claims.key_id, claims.version)
        if principal is None:
            raise self._fail()
        if not principal.record.ip_allowed(ip):
            self.metrics.inc("ekodb_failed_auth_total")
            raise forbidden("client address not allowed for this key")
        return principal

    def _current(self, key_id: str, version: int) -> Principal | None:
        """The Principal of the key at `version`, None unless that is its version now."""
        if self.keys.version_of(key_id) != version:
            return None  # deleted, rotated or changed since the token was issued
        known = self._principals.get(key_id)
        if known is not None and known.record.version == version:
            return known
        record = self.keys.get(key_id)
        if record is None or record.version != version:
            return None
        principal = Principal(
            key_id=record.key_id,
            label=record.label,
            is_admin=record.is_admin,
            read_only=record.read_only,
            tier=record.tier,
            scope=record.scope(),
            record=record,
        )
        if len(self._principals) >= PRINCIPAL_CACHE:
            self._principals.clear()
        self._principals[key_id] = principal
        return principal
