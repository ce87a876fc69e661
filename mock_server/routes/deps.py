"""Shared FastAPI dependencies: app state, the authenticated principal, JSON bodies."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from mock_server.auth import Principal
from mock_server.http_json import parse_model
from mock_server.state import AppState
from mock_server.storage import WouldWait

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

#: A write whose request body is at most this large tries the event loop first.
INLINE_WRITE_BYTES = 64 * 1024


def state_of(request: Request) -> AppState:
    state: AppState = request.app.state.ekodb
    return state


async def _state(request: Request) -> AppState:
    # async: FastAPI runs a sync dependency in a worker thread (a hop per request)
    return state_of(request)


async def _principal(request: Request) -> Principal:
    # On the event loop, not in the threadpool: with the token and the decoded key cached
    # it is one primary-key read in WAL mode (readers never wait for writers) plus the
    # shared rate limiter (a few µs under flock), cheaper than the thread hop it saved.
    # Every authenticated request counts once against its key (429 when over).
    return state_of(request).authenticate(request.scope)


CurrentPrincipal = Annotated[Principal, Depends(_principal)]


def is_authentication(call: object) -> bool:
    """Whether a route dependency authenticates the caller (for /openapi.json)."""
    return call is _principal
State = Annotated[AppState, Depends(_state)]


async def json_body(request: Request, model: type[M]) -> M:
    """Read and strictly parse the body (the body cap applies while reading)."""
    raw = await request.body()
    state = state_of(request)
    return parse_model(
        model, raw, request.headers.get("content-type"), max_depth=state.config.max_json_depth
    )


async def run_write(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """Run a write on the event loop when it is small and need not wait, else in the
    threadpool. Only inside an Idempotency-Key unit, whose COMMIT runs on the loop anyway
    (:meth:`mock_server.storage.Storage.on_loop`): a refusal (the write lock is held
    elsewhere, or the write would scan a collection) leaves nothing, and the same call runs
    again from a thread. The hop to a worker thread and back cost a third of a keyed
    insert's CPU."""
    if len(await request.body()) <= INLINE_WRITE_BYTES:
        with suppress(WouldWait), state_of(request).storage.on_loop():
            return fn(*args)
    return await run_in_threadpool(fn, *args)


__all__ = ["CurrentPrincipal", "State", "json_body", "run_in_threadpool", "run_write",
           "state_of"]
