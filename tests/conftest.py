"""Shared pytest set-up.

The reference-server fixtures (``ekodb_server``, ``ekodb_server_factory``) come from
``mock_server.pytest_plugin``, registered through the ``pytest11`` entry point when the
project is installed; when it is not (tests run from a bare checkout), load it here.
"""

from __future__ import annotations

from importlib.metadata import entry_points

if not any(ep.value == "mock_server.pytest_plugin" for ep in entry_points(group="pytest11")):
    pytest_plugins = ["mock_server.pytest_plugin"]

# --- SDK fixtures: clients bound to the session's reference server -------------------------

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from ekoclient import AsyncClient, Client


@pytest.fixture
def admin(ekodb_server: Any) -> Iterator[Client]:
    """A sync client holding the server's admin key."""
    with Client(base_url=ekodb_server.url, api_key=ekodb_server.admin_key,
                ca_bundle=ekodb_server.ca_bundle) as client:
        yield client


@pytest.fixture
async def async_admin(ekodb_server: Any) -> AsyncIterator[AsyncClient]:
    """An async client holding the server's admin key."""
    async with AsyncClient(base_url=ekodb_server.url, api_key=ekodb_server.admin_key,
                           ca_bundle=ekodb_server.ca_bundle) as client:
        yield client


@pytest.fixture
def scoped_key(admin: Client) -> str:
    """A fresh key labelled "scoped" that may read and write the "things" collection."""
    return admin.admin.create_key("scoped",
                                  collection_permissions={"things": ["read", "write"]}).api_key
