"""HTTP routes. Add a service by appending its router to ROUTERS (one line)."""

from __future__ import annotations

from fastapi import APIRouter

from mock_server.routes import audit, auth, keys, system

ROUTERS: list[APIRouter] = [system.router, auth.router, keys.router, audit.router]
