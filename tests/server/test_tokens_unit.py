"""TokenService in isolation: what it accepts and refuses."""

from __future__ import annotations

import time

import jwt
import pytest

from mock_server.tokens import TokenError, TokenService

SECRET = b"s" * 64


def svc(ttl: int = 60, max_lifetime: int = 3600) -> TokenService:
    return TokenService(SECRET, ttl=ttl, max_lifetime=max_lifetime, issuer="iss")


def claims(**over: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {"sub": "key_1", "ver": 1, "iat": now, "exp": now + 60,
                               "jti": "j", "iss": "iss"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def test_roundtrip() -> None:
    token, exp = svc().issue("key_1", 3)
    c = svc().verify(token)
    assert (c.key_id, c.version, c.exp) == ("key_1", 3, exp)


@pytest.mark.parametrize(
    "token",
    [
        jwt.encode(claims(), SECRET, algorithm="HS512"),
        jwt.encode(claims(), "o" * 64, algorithm="HS256"),
        jwt.encode(claims(exp=None), SECRET, algorithm="HS256"),
        jwt.encode(claims(jti=None), SECRET, algorithm="HS256"),
        jwt.encode(claims(ver="1"), SECRET, algorithm="HS256"),
        jwt.encode(claims(iss="evil"), SECRET, algorithm="HS256"),
        jwt.encode(claims(iat=int(time.time()) - 100, exp=int(time.time()) - 10), SECRET,
                   algorithm="HS256"),
        jwt.encode(claims(exp=int(time.time()) + 10 * 3600), SECRET, algorithm="HS256"),
        jwt.encode(claims(), SECRET, algorithm="HS256", headers={"kid": "a"}),
        "",
        "a.b",
        "a.b.c",
        "x" * 5000,
    ],
)
def test_refused(token: str) -> None:
    with pytest.raises(TokenError):
        svc().verify(token)


def test_a_token_verified_before_is_refused_once_it_expires(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Verified tokens are remembered; expiry still bites on the next check."""
    service = svc()
    token, exp = service.issue("key_1", 1)
    assert service.verify(token).exp == exp  # verified, and now remembered
    monkeypatch.setattr(time, "time", lambda: float(exp))
    with pytest.raises(TokenError):
        service.verify(token)
