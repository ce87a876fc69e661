"""GET /api/audit (admin)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from mock_server.routes.deps import CurrentPrincipal, State

router = APIRouter()


@router.get("/api/audit")
def audit_log(
    principal: CurrentPrincipal,
    state: State,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    since: Annotated[float | None, Query(ge=0, le=1e11)] = None,
    key_id: Annotated[str | None, Query(max_length=64)] = None,
    operation: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    principal.require_admin()
    records = state.audit.query(limit=limit, since=since, key_id=key_id, operation=operation)
    return {"records": [r.to_json() for r in records]}
