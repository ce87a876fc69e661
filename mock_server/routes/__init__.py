"""HTTP routes. Add a service by appending its router to ROUTERS (one line).

A write route that is a plain ``def`` declares ``response_model=None``: otherwise FastAPI
validates its answer on a worker thread after the handler, while the write's lock is held
until the answer commits (``storage.Unit``), and writers queued on that lock may hold every
worker thread. ``async def`` routes validate on the loop and need nothing.
"""

from __future__ import annotations

from fastapi import APIRouter

from mock_server.routes import (
    audit,
    auth,
    blobs,
    databus,
    datastore,
    keys,
    system,
    transactions,
    ws,
)
from mock_server.routes import search as search_routes
from mock_server.routes.actions import router as actions_router
from mock_server.routes.kv import router as kv_router
from mock_server.routes.queues import dedupq_router, queue_router
from mock_server.routes.trash import router as trash_router

ROUTERS: list[APIRouter] = [system.router, auth.router, keys.router, audit.router,
                            blobs.router, databus.router, ws.router]
ROUTERS += [queue_router, dedupq_router]
ROUTERS += [datastore.router]
ROUTERS += [search_routes.router, transactions.router]
ROUTERS += [kv_router, actions_router, trash_router]
