"""Shared FastAPI dependencies: app state, the authenticated principal, JSON bodies."""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from mock_server.auth import Principal
from mock_server.http_json import parse_model
from mock_server.state import AppState

M = TypeVar("M", bound=BaseModel)


def state_of(request: Request) -> AppState:
    state: AppState = request.app.state.ekodb
    return state


def _principal(request: Request) -> Principal:
    # sync on purpose: FastAPI runs it in the threadpool (it reads SQLite); every
    # authenticated request counts once against its key (429 when over)
    return state_of(request).authenticate(request.scope)


CurrentPrincipal = Annotated[Principal, Depends(_principal)]


def is_authentication(call: object) -> bool:
    """Whether a route dependency authenticates the caller (for /openapi.json)."""
    return call is _principal
State = Annotated[AppState, Depends(state_of)]


async def json_body(request: Request, model: type[M]) -> M:
    """Read and strictly parse the body (the body cap applies while reading)."""
    raw = await request.body()
    state = state_of(request)
    return parse_model(
        model, raw, request.headers.get("content-type"), max_depth=state.config.max_json_depth
    )


__all__ = ["CurrentPrincipal", "State", "json_body", "run_in_threadpool", "state_of"]
