"""Admin key management: list, delete, rotate, update."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt
from starlette.concurrency import run_in_threadpool

from mock_server.auth import Principal
from mock_server.errors import ApiError, not_found
from mock_server.http_json import openapi_body
from mock_server.keys import KeyValidationError
from mock_server.routes.deps import CurrentPrincipal, State, json_body
from mock_server.routes.views import key_info, new_key
from mock_server.state import AppState

router = APIRouter()

KeyId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")]


class UpdateKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    read_only: StrictBool | None = None
    collection_permissions: dict[str, Any] | None = None
    allowed_ips: list[str] | None = Field(default=None, max_length=256)
    tier: str | None = None
    #: null clears the override (back to the tier's limit).
    rate_limit: StrictInt | None = None


@router.get("/api/auth/keys")
def list_keys(principal: CurrentPrincipal, state: State) -> list[dict[str, Any]]:
    principal.require_admin()
    return [key_info(rec) for rec in state.keys.list()]


@router.delete("/api/auth/keys/{key_id}", response_model=None)
def delete_key(key_id: KeyId, principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    principal.require_admin(write=True)
    with state.storage.transaction():
        if not state.keys.delete(key_id):
            raise not_found("no such key")
        state.audit.record("key.deleted", key_id=principal.key_id, label=principal.label,
                           resource="key", target_id=key_id)
    return {"deleted": True, "key_id": key_id}


@router.post("/api/auth/keys/{key_id}/rotate", response_model=None)
def rotate_key(key_id: KeyId, principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    principal.require_admin(write=True)
    with state.storage.transaction():
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
            state.audit.record("key.updated", key_id=principal.key_id, label=principal.label,
                               resource="key", target_id=key_id,
                               details={"fields": sorted(changes)})
    except KeyValidationError as exc:
        raise ApiError(400, "validation_error", str(exc)) from None
    return key_info(rec)


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
