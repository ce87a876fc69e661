"""Key management: list, delete, rotate, update.

Admin keys manage every key; a delegated admin (``mock_server.delegation``) lists, deletes
and rotates the keys minted under it, and any other id is 404 to it. Deleting a key deletes
the keys minted under it. Only admin keys update keys, and an update that would leave a
minted key beyond its minter is refused (409).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, WithJsonSchema
from starlette.concurrency import run_in_threadpool

from mock_server.auth import Principal
from mock_server.delegation import child_of, exceeds, is_delegated_admin
from mock_server.errors import ApiError, forbidden, not_found
from mock_server.http_json import openapi_body
from mock_server.keys import KeyRecord, KeyValidationError
from mock_server.openapi import LABEL, AllowedIps, PermissionsDoc, RateLimitInt, TierText
from mock_server.routes.deps import CurrentPrincipal, State, json_body
from mock_server.routes.views import key_info, new_key
from mock_server.state import AppState

router = APIRouter()

KeyId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")]


class UpdateKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: label and read_only: absent or a value, never null
    label: Annotated[str | None, WithJsonSchema(LABEL)] = Field(default=None, min_length=1,
                                                              max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    read_only: Annotated[StrictBool | None, WithJsonSchema({"type": "boolean"})] = None
    collection_permissions: PermissionsDoc = None
    allowed_ips: AllowedIps = Field(default=None, max_length=256)
    tier: TierText = None
    #: null clears the override (back to the tier's limit).
    rate_limit: RateLimitInt = None


def _managed(state: AppState, principal: Principal, key_id: str | None = None
             ) -> frozenset[str] | None:
    """None for an admin key (every key); else the ids a delegated admin manages (403 if
    it is none), and 404 when ``key_id`` is not one of them."""
    if principal.is_admin:
        return None
    if not is_delegated_admin(principal.record):
        raise forbidden("admin key required")
    ids = frozenset(state.keys.descendants(principal.key_id))
    if key_id is not None and key_id not in ids:
        raise not_found("no such key")
    return ids


@router.get("/api/auth/keys")
def list_keys(principal: CurrentPrincipal, state: State) -> list[dict[str, Any]]:
    ids = _managed(state, principal)
    return [key_info(rec) for rec in state.keys.list() if ids is None or rec.key_id in ids]


@router.delete("/api/auth/keys/{key_id}", response_model=None)
def delete_key(key_id: KeyId, principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    with state.storage.transaction():
        _managed(state, principal, key_id)
        gone = state.keys.delete(key_id)
        if not gone:
            raise not_found("no such key")
        children = sorted(g for g in gone if g != key_id)
        state.audit.record("key.deleted", key_id=principal.key_id, label=principal.label,
                           resource="key", target_id=key_id,
                           details={"revoked_with_it": children} if children else None)
    return {"deleted": True, "key_id": key_id}


@router.post("/api/auth/keys/{key_id}/rotate", response_model=None)
def rotate_key(key_id: KeyId, principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    with state.storage.transaction():
        _managed(state, principal, key_id)
        result = state.keys.rotate(key_id)
        if result is None:
            raise not_found("no such key")
        state.audit.record("key.rotated", key_id=principal.key_id, label=principal.label,
                           resource="key", target_id=key_id)
    rec, api_key = result
    return new_key(rec, api_key)


def _update(
    state: AppState, principal: Principal, key_id: str, changes: dict[str, Any]
) -> dict[str, Any]:
    try:
        with state.storage.transaction():
            rec = state.keys.update(key_id, changes)
            if rec is None:
                raise not_found("no such key")
            _keep_children_within(state, rec)
            state.audit.record("key.updated", key_id=principal.key_id, label=principal.label,
                               resource="key", target_id=key_id,
                               details={"fields": sorted(changes)})
    except KeyValidationError as exc:
        raise ApiError(400, "validation_error", str(exc)) from None
    return key_info(rec)


def _keep_children_within(state: AppState, minter: KeyRecord) -> None:
    """409 (and the update rolls back) if the changed key would now exceed its own minter,
    or a key it minted would now exceed it."""
    parent = state.keys.get(minter.created_by) if minter.created_by else None
    if parent is not None:
        reason = exceeds(parent, child_of(minter), state.key_limits.limit_for)
        if reason is not None:
            raise ApiError(409, "minted_key_exceeds",
                           f"this key was minted by {parent.key_id} and would exceed it "
                           f"({reason})")
    for child_id in state.keys.descendants(minter.key_id):
        child = state.keys.get(child_id)
        if child is None or child.created_by != minter.key_id:
            continue  # grandchildren are bounded by their own minter
        reason = exceeds(minter, child_of(child), state.key_limits.limit_for)
        if reason is not None:
            raise ApiError(409, "minted_key_exceeds",
                           f"key {child_id} minted by this key would exceed it ({reason}); "
                           "narrow or delete that key first")


@router.put("/api/auth/keys/{key_id}", openapi_extra=openapi_body(UpdateKeyRequest))
async def update_key(
    key_id: KeyId, request: Request, principal: CurrentPrincipal, state: State
) -> dict[str, Any]:
    principal.require_admin(write=True)
    body = await json_body(request, UpdateKeyRequest)
    changes = body.model_dump(exclude_unset=True)
    for name in ("label", "read_only"):
        if name in changes and changes[name] is None:
            raise ApiError(400, "validation_error", f"{name}: may not be null")
    return await run_in_threadpool(_update, state, principal, key_id, changes)
