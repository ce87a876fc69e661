"""Health, metrics and (tests only) fault injection."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from mock_server import __version__
from mock_server.faults import FaultRules
from mock_server.http_json import openapi_body
from mock_server.routes.deps import CurrentPrincipal, State, json_body

router = APIRouter()
faults_router = APIRouter()


@router.get("/api/health")
async def health() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get("/api/metrics", response_class=PlainTextResponse)
def metrics(principal: CurrentPrincipal, state: State) -> PlainTextResponse:
    principal.require_admin()
    return PlainTextResponse(
        state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


@faults_router.post("/api/_faults", openapi_extra=openapi_body(FaultRules))
async def set_faults(
    request: Request, principal: CurrentPrincipal, state: State
) -> dict[str, Any]:
    principal.require_admin(write=True)
    body = await json_body(request, FaultRules)
    state.faults.set(body.rules)
    return {"rules": state.faults.snapshot()}


@faults_router.get("/api/_faults")
def list_faults(principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    principal.require_admin()
    return {"rules": state.faults.snapshot(), "holding": state.faults.holding}


@faults_router.delete("/api/_faults", response_model=None)
def clear_faults(principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    principal.require_admin(write=True)
    state.faults.clear()
    return {"rules": []}
