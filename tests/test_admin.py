"""The admin service through the SDK: keys, rotation, permissions, audit, idempotent writes."""

from __future__ import annotations

import ssl
from typing import Any

import httpx
import pytest

from ekoclient import AsyncClient, Authenticator, Client
from ekoclient.errors import AuthenticationError, PermissionDeniedError, ValidationError
from ekoclient.models import NewApiKey

from .sdk_helpers import admin_token


def test_create_list_rotate_delete_round_trip(admin: Client) -> None:
    new = admin.admin.create_key("round-trip", description="made by a test",
                                 collection_permissions={"orders": ["read", "write"]},
                                 tier="startup")
    assert isinstance(new, NewApiKey) and new.api_key.startswith("eko_")
    assert new.api_key not in repr(new) and new.api_key not in str(new)
    listed = {k.key_id: k for k in admin.admin.list_keys()}
    info = listed[new.key_id]
    assert (info.label, info.description, info.tier) == ("round-trip", "made by a test", "startup")
    assert info.collection_permissions["orders"]
    rotated = admin.admin.rotate_key(new.key_id)
    assert rotated.key_id == new.key_id and rotated.api_key != new.api_key
    view = Authenticator(admin).using_credentials(rotated.api_key)
    assert view.admin.permissions().key_id == new.key_id
    admin.admin.delete_key(new.key_id)
    assert new.key_id not in {k.key_id for k in admin.admin.list_keys()}
    with pytest.raises(AuthenticationError):
        view.admin.permissions()


def test_permissions_are_the_callers_own(admin: Client, scoped_key: str) -> None:
    mine = Authenticator(admin).using_credentials(scoped_key).admin.permissions()
    assert mine.label == "scoped" and not mine.is_admin
    assert set(mine.collection_permissions) == {"things"}


def test_a_scoped_key_cannot_manage_keys(admin: Client, scoped_key: str) -> None:
    view = Authenticator(admin).using_credentials(scoped_key)
    with pytest.raises(PermissionDeniedError):
        view.admin.list_keys()
    with pytest.raises(PermissionDeniedError):
        view.admin.create_key("sneaky", is_admin=True)


def test_update_key_narrows_scope_at_once(admin: Client) -> None:
    new = admin.admin.create_key("narrowed", collection_permissions={"a": ["read"],
                                                                     "b": ["read"]})
    view = Authenticator(admin).using_credentials(new.api_key)
    assert set(view.admin.permissions().collection_permissions) == {"a", "b"}
    admin.admin.update_key(new.key_id, collection_permissions={"a": ["read"]})
    assert set(view.admin.permissions().collection_permissions) == {"a"}


def test_invalid_permissions_are_refused_with_a_clear_message(admin: Client) -> None:
    with pytest.raises(ValidationError) as info:
        admin.admin.create_key("bad", collection_permissions={"things": ["fly"]})
    assert "fly" in info.value.message


def test_audit_log_records_key_events(admin: Client) -> None:
    new = admin.admin.create_key("audited", collection_permissions={"a": ["read"]})
    admin.admin.rotate_key(new.key_id)
    records = admin.admin.audit_log(limit=500)
    ops = {(r.operation, r.target_id) for r in records}
    assert any(t == new.key_id for _, t in ops)
    assert all(new.api_key not in str(r) for r in records)


def test_health_needs_no_key(ekodb_server: Any) -> None:
    with Client(base_url=ekodb_server.url, ca_bundle=ekodb_server.ca_bundle) as client:
        assert client.admin.health()["status"] == "ok"


def test_a_write_whose_answer_is_lost_is_applied_once_when_retried(
        admin: Client, ekodb_server: Any) -> None:
    """The server commits, then answers 503; the SDK retries with the same Idempotency-Key."""
    headers = {"Authorization": f"Bearer {admin_token(ekodb_server)}"}
    tls = ssl.create_default_context(cafile=ekodb_server.ca_bundle)
    rules = {"rules": [{"method": "POST", "path_prefix": "/api/auth/register",
                        "when": "after", "status": 503, "count": 1}]}
    httpx.post(f"{ekodb_server.url}/api/_faults", json=rules, headers=headers,
               verify=tls).raise_for_status()
    try:
        new = admin.admin.create_key("exactly-once", collection_permissions={"a": ["read"]})
    finally:
        httpx.delete(f"{ekodb_server.url}/api/_faults", headers=headers,
                     verify=tls)
    matching = [k for k in admin.admin.list_keys() if k.label == "exactly-once"]
    assert [k.key_id for k in matching] == [new.key_id]


async def test_async_admin_has_the_same_surface(async_admin: AsyncClient) -> None:
    new = await async_admin.admin.create_key("async-one",
                                             collection_permissions={"a": ["read"]})
    keys = await async_admin.admin.list_keys()
    assert new.key_id in {k.key_id for k in keys}
    await async_admin.admin.delete_key(new.key_id)
