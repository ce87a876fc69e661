"""Trash routes (issue 15 item 6, ekoDB's wire shapes). Thin: rules live in
:mod:`mock_server.trash`.

| method | path | level | answer |
|---|---|---|---|
| POST | ``/api/trash/{c}/{id}`` | write (+ every field writable) | ``{"restored": true, "id"}`` |
| POST | ``/api/trash/{c}`` | write (+ every field writable) | ``{"records_restored": n}`` |

No body (the official client sends none); one is ignored.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from mock_server.routes.compat import outside_transactions
from mock_server.routes.deps import CurrentPrincipal, State

router = APIRouter(tags=["datastore"], dependencies=[Depends(outside_transactions)])


@router.post("/api/trash/{collection}/{record_id}", response_model=None)
def restore(collection: str, record_id: str, principal: CurrentPrincipal,
            state: State) -> dict[str, Any]:
    return state.trash.restore(principal, collection, record_id)


@router.post("/api/trash/{collection}", response_model=None)
def restore_all(collection: str, principal: CurrentPrincipal, state: State) -> dict[str, Any]:
    return state.trash.restore_all(principal, collection)
