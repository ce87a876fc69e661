"""Forged, expired and revoked tokens: all 401 with the same body (except request_id)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest

from tests.server.conftest import Api, assert_error


def b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], sig: bytes = b"") -> str:
    return f"{b64(header)}.{b64(payload)}.{b64(sig) if sig else ''}"


def secret_of(api: Api) -> bytes:
    assert api.info.server.state is not None
    return api.info.server.state.keyring.jwt_secret()


def payload_of(api: Api) -> dict[str, Any]:
    p_b64 = api.token(api.info.admin_key).split(".")[1]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(p_b64 + "=" * (-len(p_b64) % 4)))
    return data


@pytest.fixture
def attacks(api: Api) -> list[tuple[str, str]]:
    """(name, token) pairs built from a real token of a real key."""
    good = api.token(api.info.admin_key)
    h_b64, p_b64, s_b64 = good.split(".")
    payload = json.loads(base64.urlsafe_b64decode(p_b64 + "=" * (-len(p_b64) % 4)))
    now = int(time.time())
    other = "another-secret-that-is-long-enough-for-hs256!!"
    assert api.info.server.state is not None
    # White-box: the real signing secret, so claim checks are tested, not just signatures.
    real = api.info.server.state.keyring.jwt_secret()
    deleted = api.create_key("to-delete")
    deleted_token = api.token(deleted["api_key"])
    api.http.delete(f"/api/auth/keys/{deleted['key_id']}", headers=api.admin)
    tampered = {**payload, "sub": payload["sub"][:-1] + ("0" if payload["sub"][-1] != "0" else "1")}
    out: list[tuple[str, str]] = []
    for alg in ("none", "None", "NONE", "nOnE"):
        out.append((f"alg:{alg}", forge({"alg": alg, "typ": "JWT"}, payload)))
        out.append((f"alg:{alg}+sig", forge({"alg": alg}, payload, b"x") ))
    out += [
        ("HS512 real secret", jwt.encode(payload, real, algorithm="HS512")),
        ("HS384 real secret", jwt.encode(payload, real, algorithm="HS384")),
        ("HS512 header relabelled", f"{b64({'alg': 'HS512', 'typ': 'JWT'})}.{p_b64}.{s_b64}"),
        ("RS256 header", f"{b64({'alg': 'RS256', 'typ': 'JWT'})}.{p_b64}.{s_b64}"),
        ("missing exp", jwt.encode({k: v for k, v in payload.items() if k != "exp"}, real)),
        ("missing ver", jwt.encode({k: v for k, v in payload.items() if k != "ver"}, real)),
        ("missing jti", jwt.encode({k: v for k, v in payload.items() if k != "jti"}, real)),
        ("expired", jwt.encode({**payload, "iat": now - 7200, "exp": now - 3600}, real)),
        ("lifetime too long", jwt.encode({**payload, "exp": now + 365 * 86400}, real)),
        ("kid real secret", jwt.encode(payload, real, headers={"kid": "1"})),
        ("jku real secret", jwt.encode(payload, real, headers={"jku": "https://evil/"})),
        ("future version", jwt.encode({**payload, "ver": payload["ver"] + 1}, real)),
        ("tampered payload", f"{h_b64}.{b64(tampered)}.{s_b64}"),
        ("other secret", jwt.encode(payload, other, algorithm="HS256")),
        ("kid header", f"{b64({'alg': 'HS256', 'typ': 'JWT', 'kid': '../../x'})}.{p_b64}.{s_b64}"),
        ("jku header", f"{b64({'alg': 'HS256', 'jku': 'https://evil/jwks'})}.{p_b64}.{s_b64}"),
        ("garbage", "garbage"),
        ("garbage dots", "a.b.c"),
        ("empty parts", ".."),
        ("unknown key id", f"{h_b64}.{b64({**payload, 'sub': 'key_doesnotexist'})}.{s_b64}"),
        ("deleted key", deleted_token),
        ("signature stripped", f"{h_b64}.{p_b64}."),
    ]
    return out


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_all_token_attacks_get_identical_401(api: Api, attacks: list[tuple[str, str]]) -> None:
    control = jwt.encode(payload_of(api), secret_of(api))
    assert api.http.get("/api/auth/permissions",
                        headers={"Authorization": f"Bearer {control}"}).status_code == 200
    bodies = set()
    for name, token in attacks:
        r = api.http.get("/api/auth/permissions", headers={"Authorization": f"Bearer {token}"})
        err = assert_error(r, 401, "unauthorized")
        bodies.add((err["code"], err["message"]))
        assert r.headers.get("www-authenticate") == "Bearer", name
    assert bodies == {("unauthorized", "invalid or expired token")}
    # and the server still serves a valid token
    assert api.http.get("/api/auth/permissions", headers=api.admin).status_code == 200


def test_short_ttl_token_expires(ekodb_server_factory: Any) -> None:
    info = ekodb_server_factory(token_ttl=1)
    a = Api(info)
    try:
        h = a.admin
        assert a.http.get("/api/auth/permissions", headers=h).status_code == 200
        time.sleep(2.1)
        assert_error(a.http.get("/api/auth/permissions", headers=h), 401)
    finally:
        a.close()
