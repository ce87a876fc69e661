"""POST /api/auth/token, POST /api/auth/register, GET /api/auth/permissions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt
from starlette.concurrency import run_in_threadpool

from mock_server.asgi import Scope as AsgiScope
from mock_server.auth import Principal
from mock_server.config import TIERS
from mock_server.errors import ApiError, forbidden, unauthorized
from mock_server.http_json import openapi_body
from mock_server.keys import IPAddress, KeyValidationError, normalize_network
from mock_server.openapi import errors
from mock_server.permissions import PermissionSpecError, Scope
from mock_server.routes.deps import CurrentPrincipal, State, json_body
from mock_server.routes.views import key_info, new_key
from mock_server.state import AppState

router = APIRouter()


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    api_key: str = Field(min_length=1, max_length=256)


class RegisterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    is_admin: StrictBool = False
    read_only: StrictBool = False
    collection_permissions: dict[str, Any] | None = None
    allowed_ips: list[str] | None = Field(default=None, max_length=256)
    tier: str | None = None
    #: Requests per rate-limit window for this key (overrides the tier's limit).
    rate_limit: StrictInt | None = None


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


def _check_mint(principal: Principal, body: RegisterRequest) -> None:
    """A non-admin minter needs admin level somewhere and may not grant beyond itself."""
    try:
        wanted = Scope.from_raw(body.collection_permissions or {}, is_admin=body.is_admin,
                                read_only=body.read_only)
    except PermissionSpecError as exc:
        raise ApiError(400, "validation_error", f"collection_permissions: {exc}") from None
    if principal.is_admin:
        return
    if principal.read_only or not any(r.admin for r in principal.scope.rules.values()):
        raise forbidden("admin level required to create keys")
    if body.is_admin or not principal.scope.covers(wanted):
        raise forbidden("cannot create a key with more permissions than the caller")
    own = principal.record.networks
    if own:
        try:
            nets = [normalize_network(n) for n in (body.allowed_ips or [])]
        except ValueError:
            bad = next(n for n in body.allowed_ips or [] if not _is_cidr(n))
            raise ApiError(400, "validation_error",
                           f"allowed_ips: {bad[:64]!r} is not a CIDR") from None
        if not nets:
            body.allowed_ips = list(principal.record.allowed_ips)
        elif not all(
            any(n.version == o.version and n.subnet_of(o) for o in own)  # type: ignore[arg-type]
            for n in nets
        ):
            raise forbidden("allowed_ips must lie within the caller's allowed_ips")
    if body.tier is not None and body.tier in TIERS and principal.tier in TIERS:
        if TIERS.index(body.tier) > TIERS.index(principal.tier):
            raise forbidden("cannot create a key with a higher tier than the caller")
    elif body.tier is None:
        body.tier = principal.tier
    own_limit = principal.record.rate_limit
    if own_limit is not None:  # a child may not escape its minter's per-key limit
        if body.rate_limit is None:
            body.rate_limit = own_limit
        elif body.rate_limit > own_limit:
            raise forbidden("cannot create a key with a higher rate_limit than the caller")


def _is_cidr(text: str) -> bool:
    try:
        normalize_network(text)
    except ValueError:
        return False
    return True


def _register(state: AppState, principal: Principal, body: RegisterRequest) -> dict[str, Any]:
    _check_mint(principal, body)
    try:
        with state.storage.transaction():
            rec, api_key = state.keys.create(
                body.label,
                description=body.description,
                is_admin=body.is_admin,
                read_only=body.read_only,
                collection_permissions=body.collection_permissions,
                allowed_ips=body.allowed_ips,
                tier=body.tier,
                rate_limit=body.rate_limit,
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
