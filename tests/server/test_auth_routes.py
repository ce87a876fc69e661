"""SPEC §4.1 routes against the running server over TLS."""

from __future__ import annotations

import datetime as dt

from mock_server import __version__
from tests.server.conftest import Api, assert_error


def test_health_needs_no_auth(api: Api) -> None:
    r = api.http.get("/api/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "version": __version__}
    assert r.headers["x-request-id"]


def test_token_exchange_shape(api: Api) -> None:
    r = api.http.post("/api/auth/token", json={"api_key": api.info.admin_key})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"token", "expires_at"}
    assert isinstance(body["expires_at"], int)
    assert body["expires_at"] > dt.datetime.now().timestamp() + 3000


def test_bad_api_key_is_401(api: Api) -> None:
    r = api.http.post("/api/auth/token", json={"api_key": "eko_test_nope"})
    assert_error(r, 401, "unauthorized")


def test_register_list_permissions_rotate_update_delete(api: Api) -> None:
    admin = api.admin
    new = api.create_key(
        "team-a", description="for team a", collection_permissions={"users": ["read", "write"]},
        allowed_ips=["127.0.0.1/32", "::ffff:10.0.0.0/104"], tier="startup",
    )
    assert set(new) == {"api_key", "key_id", "label", "created_at"}
    assert new["api_key"].startswith("eko_test_") and new["key_id"].startswith("key_")
    assert dt.datetime.fromisoformat(new["created_at"].replace("Z", "+00:00")).tzinfo

    keys = api.http.get("/api/auth/keys", headers=admin).json()
    mine = next(k for k in keys if k["key_id"] == new["key_id"])
    assert set(mine) == {"key_id", "label", "description", "is_admin", "read_only",
                         "collection_permissions", "allowed_ips", "tier", "rate_limit",
                         "created_at", "created_by"}
    assert mine["allowed_ips"] == ["127.0.0.1/32", "10.0.0.0/8"]
    assert mine["tier"] == "startup" and mine["description"] == "for team a"
    assert new["api_key"] not in api.http.get("/api/auth/keys", headers=admin).text

    perms = api.http.get("/api/auth/permissions", headers=api.headers(new["api_key"])).json()
    assert perms["key_id"] == new["key_id"] and perms["is_admin"] is False
    assert perms["collection_permissions"]["users"]["read"] is True

    r = api.http.put(f"/api/auth/keys/{new['key_id']}", headers=admin,
                     json={"label": "team-a2", "tier": "business"})
    assert r.status_code == 200 and r.json()["label"] == "team-a2"

    rot = api.http.post(f"/api/auth/keys/{new['key_id']}/rotate", headers=admin)
    assert rot.status_code == 200
    assert rot.json()["key_id"] == new["key_id"] and rot.json()["api_key"] != new["api_key"]
    assert_error(api.http.post("/api/auth/token", json={"api_key": new["api_key"]}), 401)
    api.token(rot.json()["api_key"])

    assert api.http.delete(f"/api/auth/keys/{new['key_id']}", headers=admin).status_code == 200
    assert_error(api.http.delete(f"/api/auth/keys/{new['key_id']}", headers=admin), 404)
    assert_error(api.http.post(f"/api/auth/keys/{new['key_id']}/rotate", headers=admin), 404)

    audit = api.http.get("/api/audit", headers=admin,
                         params={"operation": "key.rotated", "limit": 5}).json()["records"]
    assert any(rec["target_id"] == new["key_id"] for rec in audit)
    deleted = api.http.get("/api/audit", headers=admin,
                           params={"operation": "key.deleted"}).json()["records"]
    assert any(rec["target_id"] == new["key_id"] for rec in deleted)


def test_audit_filters_by_key_id(api: Api) -> None:
    sub_admin = api.create_key("sub-admin", is_admin=True)
    sub_headers = api.headers(sub_admin["api_key"])
    made = api.http.post("/api/auth/register", json={"label": "child"}, headers=sub_headers)
    assert made.status_code == 200
    recs = api.http.get("/api/audit", headers=api.admin,
                        params={"key_id": sub_admin["key_id"]}).json()["records"]
    assert [r["operation"] for r in recs] == ["key.created"]
    assert recs[0]["target_id"] == made.json()["key_id"]
    assert recs[0]["label"] == "sub-admin"


def test_scoped_and_read_only_keys_forbidden_on_admin_routes(api: Api) -> None:
    scoped = api.create_key("scoped", collection_permissions={"users": ["read", "write"]})
    ro = api.create_key("ro", read_only=True, collection_permissions={"users": ["read"]})
    for key in (scoped, ro):
        h = api.headers(key["api_key"])
        assert_error(api.http.get("/api/auth/keys", headers=h), 403, "forbidden")
        assert_error(api.http.get("/api/audit", headers=h), 403, "forbidden")
        assert_error(api.http.get("/api/metrics", headers=h), 403, "forbidden")
        assert_error(api.http.post("/api/auth/register", json={"label": "x"}, headers=h), 403)
        assert_error(api.http.delete(f"/api/auth/keys/{key['key_id']}", headers=h), 403)
        assert_error(api.http.post(f"/api/auth/keys/{key['key_id']}/rotate", headers=h), 403)
        assert_error(api.http.put(f"/api/auth/keys/{key['key_id']}", json={"label": "y"},
                                  headers=h), 403)
        assert api.http.get("/api/auth/permissions", headers=h).status_code == 200


def test_scoped_admin_mints_only_narrower_keys(api: Api) -> None:
    team = api.create_key("team-admin", collection_permissions={"team_a_*": ["admin"]})
    h = api.headers(team["api_key"])
    ok = api.http.post("/api/auth/register", headers=h, json={
        "label": "narrow", "collection_permissions": {"team_a_users": ["read"]}})
    assert ok.status_code == 200, ok.text
    assert_error(api.http.post("/api/auth/register", headers=h, json={
        "label": "wider", "collection_permissions": {"team_b_users": ["read"]}}), 403)
    assert_error(api.http.post("/api/auth/register", headers=h, json={
        "label": "admin", "is_admin": True}), 403)


def test_no_auth_header_is_401(api: Api) -> None:
    assert_error(api.http.get("/api/auth/permissions"), 401, "unauthorized")
    assert_error(api.http.get("/api/auth/keys", headers={"Authorization": "Basic x"}), 401)


def test_revocation_bites_next_request(api: Api) -> None:
    key = api.create_key("victim", collection_permissions={"users": ["read"]})
    h = api.headers(key["api_key"])
    assert api.http.get("/api/auth/permissions", headers=h).status_code == 200
    assert api.http.delete(f"/api/auth/keys/{key['key_id']}", headers=api.admin).status_code == 200
    assert_error(api.http.get("/api/auth/permissions", headers=h), 401, "unauthorized")


def test_rotation_bites_next_request(api: Api) -> None:
    key = api.create_key("rotated")
    h = api.headers(key["api_key"])
    assert api.http.get("/api/auth/permissions", headers=h).status_code == 200
    api.http.post(f"/api/auth/keys/{key['key_id']}/rotate", headers=api.admin)
    assert_error(api.http.get("/api/auth/permissions", headers=h), 401)


def test_scope_narrowing_bites_next_request(api: Api) -> None:
    key = api.create_key("narrowed", is_admin=False,
                         collection_permissions={"users": ["read", "write", "admin"]})
    h = api.headers(key["api_key"])
    r = api.http.post("/api/auth/register", headers=h, json={
        "label": "c1", "collection_permissions": {"users": ["read"]}})
    assert r.status_code == 200
    # a minted key may never exceed its minter: narrowing is refused while c1 exists
    narrow = {"collection_permissions": {"users": ["read"]}}
    refused = api.http.put(f"/api/auth/keys/{key['key_id']}", headers=api.admin, json=narrow)
    assert_error(refused, 409, "minted_key_exceeds")
    assert r.json()["key_id"] in refused.json()["error"]["message"]
    assert api.http.delete(f"/api/auth/keys/{r.json()['key_id']}", headers=h).status_code == 200
    narrowed = api.http.put(f"/api/auth/keys/{key['key_id']}", headers=api.admin,
                            json={"collection_permissions": {"users": ["read"]}})
    assert narrowed.status_code == 200
    # the version bump revokes the token outright; a fresh token sees the narrowed scope
    assert_error(api.http.get("/api/auth/permissions", headers=h), 401)
    h2 = api.headers(key["api_key"])
    perms = api.http.get("/api/auth/permissions", headers=h2).json()["collection_permissions"]
    assert perms["users"].get("write") is not True
    assert_error(api.http.post("/api/auth/register", headers=h2, json={
        "label": "c2", "collection_permissions": {"users": ["read"]}}), 403)


def test_ip_allowlist_checked_on_exchange_and_every_request(api: Api) -> None:
    key = api.create_key("ip-bound", allowed_ips=["127.0.0.0/8", "::1/128"])
    h = api.headers(key["api_key"])
    assert api.http.get("/api/auth/permissions", headers=h).status_code == 200
    # Forged X-Forwarded-For from an untrusted peer is ignored.
    r = api.http.get("/api/auth/permissions", headers={**h, "X-Forwarded-For": "8.8.8.8"})
    assert r.status_code == 200
    moved = api.create_key("elsewhere", allowed_ips=["10.1.0.0/16"])
    assert_error(api.http.post("/api/auth/token", json={"api_key": moved["api_key"]}), 403)


def test_register_validation_errors(api: Api) -> None:
    admin = api.admin
    for body in (
        {"label": ""},
        {"label": "x", "tier": "platinum"},
        {"label": "x", "allowed_ips": ["not-an-ip"]},
        {"label": "x", "collection_permissions": {"users": ["fly"]}},
        {"label": "x", "is_admin": True, "read_only": True},
        {"label": "x", "is_admin": "yes"},
        {"label": "x", "unknown_field": 1},
    ):
        assert_error(api.http.post("/api/auth/register", json=body, headers=admin), 400,
                     "validation_error")
