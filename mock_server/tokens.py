"""JWT issue and strict verification (HS256 only).

The header is checked by hand before pyjwt sees the token, so algorithm confusion
(`alg: none` in any casing, HS512, RS256) and key-selection headers (kid, jku, jwk, x5u)
are refused outright. Every failure raises the same error with the same message, so a
client learns nothing about why a token was refused.

Verified claims are cached per exact token string (bounded): a token's signature and claims
never change, only the clock moves, so a hit re-checks expiry alone. Whether the key behind
it still exists (revocation, rotation) is the key store's question, asked on every request.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt

ALGORITHM = "HS256"
FORBIDDEN_HEADERS = frozenset({"kid", "jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256", "crit"})
ALLOWED_HEADERS = frozenset({"alg", "typ"})
MAX_TOKEN_LEN = 4096
CLOCK_SKEW = 30
#: Verified tokens remembered (a dict of token -> claims; cleared whole when full).
VERIFIED_CACHE = 4096


class TokenError(Exception):
    """Any reason a token is not accepted; deliberately without detail."""


@dataclass(frozen=True)
class Claims:
    key_id: str
    version: int
    jti: str
    iat: int
    exp: int


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class TokenService:
    """Issues and verifies tokens bound to (key id, key version)."""

    def __init__(self, secret: bytes, *, ttl: int, max_lifetime: int, issuer: str) -> None:
        if ttl <= 0 or ttl > max_lifetime:
            raise ValueError("token ttl must be positive and within max_token_lifetime")
        self._secret = secret
        self.ttl = ttl
        self.max_lifetime = max_lifetime
        self.issuer = issuer
        self._verified: dict[str, Claims] = {}

    def issue(self, key_id: str, version: int, *, now: float | None = None) -> tuple[str, int]:
        """A token and its expiry (unix seconds)."""
        iat = int(time.time() if now is None else now)
        exp = iat + self.ttl
        claims = {
            "sub": key_id,
            "ver": version,
            "iat": iat,
            "exp": exp,
            "jti": secrets.token_hex(16),
            "iss": self.issuer,
        }
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM, headers={"typ": "JWT"})
        return token, exp

    def _check_header(self, token: str) -> None:
        parts = token.split(".")
        if len(parts) != 3 or not all(parts):
            raise TokenError
        try:
            header = json.loads(_b64decode(parts[0]))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise TokenError from None
        if not isinstance(header, dict) or header.get("alg") != ALGORITHM:
            raise TokenError
        if set(header) - ALLOWED_HEADERS or FORBIDDEN_HEADERS & set(header):
            raise TokenError
        if "typ" in header and header["typ"] != "JWT":
            raise TokenError

    def verify(self, token: object) -> Claims:
        """Claims of a valid token, else TokenError (always the same, on purpose)."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LEN:
            raise TokenError
        known = self._verified.get(token)
        if known is not None:
            if known.exp <= time.time():  # as pyjwt with leeway 0: expired at exp
                self._verified.pop(token, None)
                raise TokenError
            return known
        claims = self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE:
            self._verified.clear()  # cheap bound; a miss only costs one full verification
        self._verified[token] = claims
        return claims

    def _verify(self, token: str) -> Claims:
        self._check_header(token)
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                leeway=0,
                options={"require": ["exp", "iat", "sub", "ver", "jti", "iss"]},
            )
        except jwt.PyJWTError:
            raise TokenError from None
        sub, ver, jti = payload.get("sub"), payload.get("ver"), payload.get("jti")
        iat, exp = payload.get("iat"), payload.get("exp")
        if not (isinstance(sub, str) and isinstance(jti, str) and type(ver) is int):
            raise TokenError
        if not (type(iat) is int and type(exp) is int):
            raise TokenError
        if exp - iat > self.max_lifetime or exp <= iat or iat > time.time() + CLOCK_SKEW:
            raise TokenError
        return Claims(key_id=sub, version=ver, jti=jti, iat=iat, exp=exp)
