"""POST /api/auth/token, POST /api/auth/register, GET /api/auth/permissions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.concurrency import run_in_threadpool

from mock_server.asgi import Scope as AsgiScope
from mock_server.auth import Principal
from mock_server.delegation import Child, check_mint
from mock_server.errors import ApiError, forbidden, unauthorized
from mock_server.http_json import openapi_body
from mock_server.keys import IPAddress, KeyValidationError
from mock_server.openapi import (
    AllowedIps,
    LabelText,
    PermissionsDoc,
    RateLimitInt,
    TierText,
    errors,
)
from mock_server.permissions import PermissionSpecError, Scope
from mock_server.routes.deps import CurrentPrincipal, State, json_body
from mock_server.routes.views import key_info, new_key
from mock_server.state import AppState

router = APIRouter()


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    api_key: str = Field(min_length=1, max_length=256)


class RegisterRequest(BaseModel):
    # a key is not both admin and read-only (permissions.Scope)
    model_config = ConfigDict(extra="forbid", json_schema_extra={"not": {
        "required": ["is_admin", "read_only"],
        "properties": {"is_admin": {"const": True}, "read_only": {"const": True}}}})
    label: LabelText = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    is_admin: StrictBool = False
    read_only: StrictBool = False
    collection_permissions: PermissionsDoc = None
    allowed_ips: AllowedIps = Field(default=None, max_length=256)
    tier: TierText = None
    #: Requests per rate-limit window for this key (overrides the tier's limit).
    rate_limit: RateLimitInt = None


def _exchange(state: AppState, api_key: str, ip: IPAddress | None,
              scope: AsgiScope | None = None) -> dict[str, Any]:
    record = state.keys.authenticate(api_key)
    if record is None:
        state.metrics.inc("ekodb_token_exchanges_total", result="failed")
        state.metrics.inc("ekodb_failed_auth_total")
        state.audit.record("auth.token_failed", key_id=None, details={"ip": str(ip)})
        raise unauthorized("invalid API key")
    if not record.ip_allowed(ip):
        state.metrics.inc("ekodb_token_exchanges_total", result="failed")
        state.metrics.inc("ekodb_failed_auth_total")
        state.audit.record("auth.token_failed", key_id=record.key_id, label=record.label,
                           details={"ip": str(ip), "reason": "ip_not_allowed"})
        raise forbidden("client address not allowed for this key")
    # an exchange is a request of the key: it counts against the key's limit (429 when over)
    limits = state.key_limits
    limits.enforce(record.key_id, limits.limit_for(tier=record.tier, is_admin=record.is_admin,
                                                   override=record.rate_limit), scope)
    token, expires_at = state.tokens.issue(record.key_id, record.version)
    state.metrics.inc("ekodb_token_exchanges_total", result="ok")
    return {"token": token, "expires_at": expires_at}


@router.post("/api/auth/token", openapi_extra=openapi_body(TokenRequest),
             responses=errors(401, 403, 429))
async def token(request: Request, state: State) -> dict[str, Any]:
    ip = state.client_ip_of(request.scope)
    limit_key = f"ip:{ip}"
    limit = state.config.failed_auth_limit
    limiter = state.failed_auth
    refused = ApiError(429, "rate_limited", "too many failed authentication attempts")
    decision = await run_in_threadpool(limiter.check, limit_key, limit)
    if not decision.allowed:
        refused.headers.update(decision.headers())
        raise refused
    body = await json_body(request, TokenRequest)
    try:
        answer = await run_in_threadpool(_exchange, state, body.api_key, ip, request.scope)
    except ApiError as exc:
        if exc.status not in (401, 403):  # only failures count against the address
            raise
        # Counting a failure and deciding to reveal it is one atomic step of the shared
        # store: however many attempts ran at once (in any process on the data dir), at
        # most `limit` failures per window are answered as such; the others get 429.
        decision = await run_in_threadpool(limiter.hit, limit_key, limit)
        if not decision.allowed:
            refused.headers.update(decision.headers())
            raise refused from None
        raise
    # A success is revealed only while the address is under its limit, so guesses sent
    # at once cannot learn more than `limit` outcomes; successes consume nothing, so
    # concurrent good exchanges never trip the limit themselves.
    decision = await run_in_threadpool(limiter.check, limit_key, limit)
    if not decision.allowed:
        refused.headers.update(decision.headers())
        raise refused
    return answer


def _register(state: AppState, principal: Principal, body: RegisterRequest) -> dict[str, Any]:
    try:
        Scope.from_raw(body.collection_permissions or {}, is_admin=body.is_admin,
                       read_only=body.read_only)
    except PermissionSpecError as exc:
        raise ApiError(400, "validation_error", f"collection_permissions: {exc}") from None
    child = check_mint(principal.record, Child(
        is_admin=body.is_admin, read_only=body.read_only,
        collection_permissions=body.collection_permissions, allowed_ips=body.allowed_ips,
        tier=body.tier, rate_limit=body.rate_limit), state.key_limits.limit_for)
    delegated = not principal.is_admin
    try:
        with state.storage.transaction():
            # the minter as it is now, inside the write lock: a key deleted, rotated or
            # changed since this request was authenticated must not leave an orphan child
            now = state.keys.get(principal.key_id)
            if now is None or now.version != principal.record.version:
                raise unauthorized("the key making this request was changed or revoked")
            rec, api_key = state.keys.create(
                body.label,
                description=body.description,
                is_admin=child.is_admin,
                read_only=child.read_only,
                collection_permissions=child.collection_permissions,
                allowed_ips=child.allowed_ips,
                tier=child.tier,
                rate_limit=child.rate_limit,
                created_by=principal.key_id if delegated else None,
            )
            state.audit.record("key.created", key_id=principal.key_id, label=principal.label,
                               resource="key", target_id=rec.key_id,
                               details={"is_admin": rec.is_admin, "read_only": rec.read_only})
    except KeyValidationError as exc:
        raise ApiError(400, "validation_error", str(exc)) from None
    return new_key(rec, api_key)


@router.post("/api/auth/register", openapi_extra=openapi_body(RegisterRequest))
async def register(request: Request, principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    body = await json_body(request, RegisterRequest)
    return await run_in_threadpool(_register, state, principal, body)


@router.get("/api/auth/permissions")
def permissions(principal: CurrentPrincipal) -> dict[str, Any]:
    return key_info(principal.record)
