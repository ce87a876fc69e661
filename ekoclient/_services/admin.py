"""Key management and the caller's own permissions (SPEC §4.1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import TypeAdapter
from typing_extensions import Unpack

from .._call import Call, json_call, parse_json, parse_none, segment
from .._http import Response
from .._service import E, Service, WriteOptions, endpoint
from ..models import ApiKeyInfo, AuditRecord, NewApiKey

_KEYS = TypeAdapter(list[ApiKeyInfo])
_AUDIT = TypeAdapter(list[AuditRecord])


def _new_key(response: Response) -> NewApiKey:
    return NewApiKey.model_validate_json(response.content)


def _key_info(response: Response) -> ApiKeyInfo:
    return ApiKeyInfo.model_validate_json(response.content)


def _key_list(response: Response) -> list[ApiKeyInfo]:
    data = response.json()
    return _KEYS.validate_python(data["keys"] if isinstance(data, dict) else data)


def _audit_list(response: Response) -> list[AuditRecord]:
    data = response.json()
    return _AUDIT.validate_python(data["records"] if isinstance(data, dict) else data)


def _key_body(
    label: str | None,
    description: str | None,
    is_admin: bool | None,
    read_only: bool | None,
    collection_permissions: Mapping[str, Any] | None,
    allowed_ips: Sequence[str] | None,
    tier: str | None,
    rate_limit: int | Literal["tier"] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "label": label,
        "description": description,
        "is_admin": is_admin,
        "read_only": read_only,
        "collection_permissions": dict(collection_permissions)
        if collection_permissions is not None else None,
        "allowed_ips": list(allowed_ips) if allowed_ips is not None else None,
        "tier": tier,
        "rate_limit": rate_limit,
    }
    body = {k: v for k, v in body.items() if v is not None}
    if rate_limit == "tier":  # explicit null: drop the per-key override
        body["rate_limit"] = None
    return body


def _create_key(
    label: str,
    *,
    description: str | None = None,
    is_admin: bool = False,
    read_only: bool = False,
    collection_permissions: Mapping[str, Any] | None = None,
    allowed_ips: Sequence[str] | None = None,
    tier: str | None = None,
    rate_limit: int | None = None,
    **write: Unpack[WriteOptions],
) -> Call[NewApiKey]:
    """Create a key. The secret is in the result once; the service keeps only a hash.

    ``rate_limit`` (requests per the server's window, a minute by default) overrides the
    tier's limit for this key.
    """
    body = _key_body(label, description, is_admin, read_only, collection_permissions,
                     allowed_ips, tier, rate_limit)
    return json_call("POST", "/api/auth/register", _new_key, body)


def _update_key(
    key_id: str,
    *,
    label: str | None = None,
    description: str | None = None,
    read_only: bool | None = None,
    collection_permissions: Mapping[str, Any] | None = None,
    allowed_ips: Sequence[str] | None = None,
    tier: str | None = None,
    rate_limit: int | Literal["tier"] | None = None,
    **write: Unpack[WriteOptions],
) -> Call[ApiKeyInfo]:
    """Change a key's scope or settings; tokens already issued see the change at once.

    ``rate_limit=N`` sets the key's own limit, ``rate_limit="tier"`` goes back to its tier's.
    """
    body = _key_body(label, description, None, read_only, collection_permissions,
                     allowed_ips, tier, rate_limit)
    return json_call("PUT", f"/api/auth/keys/{segment(key_id, 'key_id')}", _key_info, body)


def _list_keys() -> Call[list[ApiKeyInfo]]:
    """Every key of the service, without secrets."""
    return json_call("GET", "/api/auth/keys", _key_list)


def _delete_key(key_id: str, **write: Unpack[WriteOptions]) -> Call[None]:
    """Revoke a key: every token minted from it fails from the next request on."""
    return json_call("DELETE", f"/api/auth/keys/{segment(key_id, 'key_id')}", parse_none)


def _rotate_key(key_id: str, **write: Unpack[WriteOptions]) -> Call[NewApiKey]:
    """New secret, same id and permissions; the old secret and its tokens stop working."""
    return json_call("POST", f"/api/auth/keys/{segment(key_id, 'key_id')}/rotate", _new_key)


def _permissions() -> Call[ApiKeyInfo]:
    """The calling key's own permissions."""
    return json_call("GET", "/api/auth/permissions", _key_info)


def _audit_log(
    *,
    limit: int | None = None,
    since: datetime | None = None,
    key_id: str | None = None,
    operation: str | None = None,
) -> Call[list[AuditRecord]]:
    """Audit records of writes and key events, newest first."""
    params: dict[str, str | int] = {}
    if limit is not None:
        params["limit"] = limit
    if since is not None:
        params["since"] = since.isoformat()
    if key_id is not None:
        params["key_id"] = key_id
    if operation is not None:
        params["operation"] = operation
    return json_call("GET", "/api/audit", _audit_list, params=params or None)


def _health() -> Call[dict[str, Any]]:
    """The service's health and version; needs no key."""
    return json_call("GET", "/api/health", parse_json, auth=False)


class Admin(Service[E]):
    """Key management (admin keys, or scoped keys with ``admin`` level) and self-inspection."""

    __slots__ = ()

    create_key = endpoint(_create_key)
    update_key = endpoint(_update_key)
    list_keys = endpoint(_list_keys)
    delete_key = endpoint(_delete_key)
    rotate_key = endpoint(_rotate_key)
    permissions = endpoint(_permissions)
    audit_log = endpoint(_audit_log)
    health = endpoint(_health)
