"""FastAPI application factory: routes, middlewares and the error envelope."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from mock_server import __version__
from mock_server.asgi import request_id
from mock_server.config import ServerConfig
from mock_server.dispatch import CompiledRoutes
from mock_server.errors import ApiError, code_for_status, disk_full
from mock_server.middleware import (
    KNOWN_METHODS,
    BodyLimitMiddleware,
    ContextMiddleware,
    FaultMiddleware,
    IdempotencyMiddleware,
)
from mock_server.openapi import install as install_openapi
from mock_server.routes import ROUTERS
from mock_server.routes.deps import is_authentication
from mock_server.routes.system import faults_router
from mock_server.state import AppState

log = logging.getLogger("mock_server")


def _envelope(
    request: Request, status: int, code: str, message: str,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    rid = request_id(request.scope)
    hdrs = dict(headers or {})
    if rid:
        hdrs["X-Request-Id"] = rid
    return JSONResponse(
        {"error": {"code": code, "message": message, "request_id": rid}},
        status_code=status,
        headers=hdrs,
    )


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _envelope(request, exc.status, exc.code, exc.message, exc.headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on this path (Starlette's 405 names only the first
    route that matched the path, so paths served by several routes got a short Allow)."""
    methods: set[str] = set()
    routes = request.app.router.routes
    for method in KNOWN_METHODS:  # ask the routes themselves, as the router does
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in routes):
            methods.add(method)
    return sorted(methods)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        message = "not found"
    if exc.status_code == 405:
        allowed = _allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        message = f"method {request.method} not allowed here; allowed: {', '.join(allowed)}"
    return _envelope(request, exc.status_code, code_for_status(exc.status_code), message,
                     headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in list(exc.errors())[:10]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return _envelope(request, 400, "validation_error", "; ".join(parts) or "invalid request")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    full = disk_full(exc)
    if full is not None:  # a fault of the server's disk, not a bug: say so, and when to retry
        log.error("disk full (request %s): %s", request_id(request.scope), exc)
        return _envelope(request, full.status, full.code, full.message, full.headers)
    log.error("unhandled error (request %s)", request_id(request.scope), exc_info=exc)
    return _envelope(request, 500, "internal_error", "internal server error")


def create_app(
    config: ServerConfig,
    *,
    environ: Mapping[str, str] | None = None,
    state: AppState | None = None,
) -> FastAPI:
    """Build the app; `app.state.ekodb` is the AppState (storage, keys, tokens, metrics…)."""
    st = state if state is not None else AppState.open(config, environ)
    app = FastAPI(
        title="ekoDB reference server",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.state.ekodb = st
    included = [*ROUTERS, *([faults_router] if config.fault_injection else [])]
    for router in included:
        app.include_router(router)
    # /openapi.json documents each operation's real error answers (after all routes)
    install_openapi(app, is_authentication)

    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)

    # Added inner → outer.
    mw: Any = app.add_middleware
    if config.compiled_routes:  # FastAPI's routes without its per-request routing and solving
        mw(CompiledRoutes, routes=[r for router in included for r in router.routes],
           error_handlers=app.exception_handlers,
           dependency_overrides=app.dependency_overrides)
    mw(IdempotencyMiddleware, store=st.idempotency, owner_of=st.owner_of, guard=st,
       wait_seconds=config.idempotency_wait,
       # an answer echoes at most a body plus ids: keep every JSON answer replayable
       max_stored=config.max_body_bytes + 1024 * 1024)
    if config.fault_injection:
        mw(FaultMiddleware, injector=st.faults)
    mw(BodyLimitMiddleware, config=config)
    mw(ContextMiddleware, metrics=st.metrics)
    return app
