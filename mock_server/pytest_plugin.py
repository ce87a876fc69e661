"""pytest plugin: a real ekoDB reference server for your tests (no mocks).

Registered automatically (``pytest11`` entry point) by every install of ``ekoclient``; the
fixtures need the ``server`` extra (``pip install "ekoclient[server]"``).

Design: this module is loaded into *every* pytest run of a project that installed ekoclient,
so at load it imports only the standard library and pytest. The server (uvicorn, FastAPI,
cryptography) is imported when a test first asks for a fixture, and a missing extra then
fails that test with the command that fixes it, instead of breaking the whole run.

Fixtures:

``ekodb_server`` (session scope)
    One in-process server on an ephemeral loopback port with TLS (local CA), a temporary
    data dir, fault injection enabled and a high failed-auth limit. Yields
    :class:`ServerInfo` with ``url``, ``ca_bundle``, ``admin_key``, ``data_dir``, ``config``
    and ``server``::

        def test_insert(ekodb_server):
            client = Client(base_url=ekodb_server.url, api_key=ekodb_server.admin_key,
                            ca_bundle=ekodb_server.ca_bundle)

``ekodb_server_factory`` (function scope)
    ``ekodb_server_factory(token_ttl=5, ...)`` starts another server with custom
    :class:`~mock_server.config.ServerConfig` fields (fresh data dir unless ``data_dir`` is
    given); every server it started is stopped at teardown.

Both run on httptools and uvloop when the ``server-fast`` extra is installed, else on h11 and
asyncio; pass ``http="h11"`` or ``event_loop="asyncio"`` to the factory to pick one.

Rate limits: both fixtures keep per-key limiting on (X-RateLimit-* headers are sent) but
with every tier's limit multiplied by 1,000, so a suite hammering one key is not throttled.
A per-key ``rate_limit`` (``admin.create_key(..., rate_limit=N)``) is exact on any server;
pass ``tier_limits=...`` or ``rate_limit_window=...`` to the factory to test tiers themselves.

For crash tests use :class:`mock_server.testing.ServerProcess` (a real subprocess).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # only for annotations: importing these at load needs the server extra
    from mock_server.config import ServerConfig
    from mock_server.server import ReferenceServer

SERVER_EXTRA_HINT = 'pip install "ekoclient[server]"'


def _server_modules() -> tuple[Any, Any, Any]:
    """(TIER_LIMITS, ServerConfig, ReferenceServer), or a clear failure naming the extra."""
    try:
        from mock_server.config import TIER_LIMITS, ServerConfig
        from mock_server.server import ReferenceServer
    except ImportError as exc:
        missing = exc.name or str(exc)
        pytest.fail(f"the ekodb_server fixtures need the reference server, which needs the "
                    f"'server' extra (missing module {missing!r}): {SERVER_EXTRA_HINT}",
                    pytrace=False)
    return TIER_LIMITS, ServerConfig, ReferenceServer


@dataclass(frozen=True)
class ServerInfo:
    """Where a started reference server lives and how to reach it."""

    url: str
    #: Absolute path of the CA certificate (a str, like EKODB_CA_BUNDLE); None with
    #: insecure_http or a user-supplied certificate.
    ca_bundle: str | None
    admin_key: str
    data_dir: Path
    config: ServerConfig
    server: ReferenceServer


def start_server(data_dir: Path, **overrides: Any) -> ServerInfo:
    """Start a server (TLS, fault injection on) with the given ServerConfig overrides."""
    tier_limits, config_cls, server_cls = _server_modules()
    fields: dict[str, Any] = {"fault_injection": True,
                              "tier_limits": {t: n * 1000 for t, n in tier_limits.items()}}
    fields.update(overrides)
    config: ServerConfig = config_cls(data_dir=data_dir, **fields)
    # environ={}: the user's EKODB_* variables must not leak into a test server
    server: ReferenceServer = server_cls(config, environ={}).start()
    if server.admin_key is None:
        server.stop()
        raise RuntimeError(f"data dir {data_dir} already has an admin key; use a fresh one")
    return ServerInfo(
        server.url,
        str(server.ca_bundle) if server.ca_bundle is not None else None,
        server.admin_key,
        config.data_dir,
        config,
        server,
    )


@pytest.fixture(scope="session")
def ekodb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    # Shared by many tests that all come from 127.0.0.1: a per-IP failed-auth limit of 20
    # would make unrelated tests fail; use ekodb_server_factory to test the limiter itself.
    info = start_server(tmp_path_factory.mktemp("ekodb-server"), failed_auth_limit=10_000)
    try:
        yield info
    finally:
        info.server.stop()


ServerFactory = Callable[..., ServerInfo]


@pytest.fixture
def ekodb_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    started: list[ServerInfo] = []

    def factory(**overrides: Any) -> ServerInfo:
        data_dir = overrides.pop("data_dir", None) or tmp_path_factory.mktemp("ekodb-extra")
        info = start_server(Path(data_dir), **overrides)
        started.append(info)
        return info

    try:
        yield factory
    finally:
        for info in reversed(started):
            info.server.stop()
