"""Server configuration: one plain dataclass so tests and the CLI build it the same way."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

GIB = 1024**3
MIB = 1024**2

TIERS: tuple[str, ...] = (
    "free",
    "developer",
    "startup",
    "business",
    "professional",
    "enterprise_basic",
    "enterprise_standard",
)

#: Requests per minute per tier (SPEC §4.5 seed table).
TIER_LIMITS: dict[str, int] = {
    "free": 50,
    "developer": 100,
    "startup": 250,
    "business": 500,
    "professional": 1000,
    "enterprise_basic": 2000,
    "enterprise_standard": 4000,
}


#: Event loops the server can run on (``ServerConfig.event_loop``): "auto" is uvloop when
#: installed, else asyncio.
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
#: HTTP/1.1 parsers (``ServerConfig.http``): "auto" is httptools when installed, else h11.
HTTP_PROTOCOLS = ("auto", "httptools", "h11")


@dataclass
class ServerConfig:
    """Everything a server instance needs; defaults are the safe ones."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure_http: bool = False
    token_ttl: int = 3600
    max_token_lifetime: int = 24 * 3600
    max_body_bytes: int = 16 * MIB
    #: Per-path-prefix body limits; the longest matching prefix wins.
    body_limit_overrides: dict[str, int] = field(
        default_factory=lambda: {"/api/blob/": 8 * GIB}
    )
    max_json_depth: int = 64
    failed_auth_limit: int = 20
    trusted_proxies: list[str] = field(default_factory=list)
    fault_injection: bool = False
    key_env: str = "test"
    idempotency_ttl: int = 24 * 3600
    #: How long a retry waits for a still-running first attempt with the same key.
    idempotency_wait: float = 30.0
    #: Requests per `rate_limit_window` by tier; tiers left out keep the seed value.
    tier_limits: dict[str, int] = field(default_factory=lambda: dict(TIER_LIMITS))
    #: Per-key request limits (tier or the key's own `rate_limit`); off = no limit, no headers.
    rate_limits_enabled: bool = True
    #: The window the tier table and per-key `rate_limit` values count over, in seconds.
    rate_limit_window: float = 60.0
    #: Admin keys have no tier limit unless this is set (an explicit per-key limit applies).
    rate_limit_admin_keys: bool = False
    issuer: str = "ekodb-reference"
    #: Seconds a client transaction may sit without an operation before it expires.
    transaction_ttl: float = 300.0
    #: Threads for blocking work (SQLite, crypto) per process; anyio's default is 40.
    worker_threads: int = 40
    #: Expired KV entries are purged this many seconds after they expire (until then
    #: ``find(include_expired=True)`` lists them; reads miss from the moment they expire).
    kv_purge_grace: float = 60.0
    #: How long deleted records stay restorable from the trash, in seconds.
    trash_retention: float = 7 * 86400.0
    #: How often the sweeper expires records with a TTL and purges KV entries and trash.
    sweep_interval: float = 0.25
    #: WebSockets one API key may hold open at once (per server process); more close 4429.
    ws_max_sockets_per_key: int = 16
    #: Seconds a client has to send a complete request head (line + headers), counted from
    #: the connection (or the previous answer); then 408 and close.
    header_timeout: float = 10.0
    #: Seconds a connection may sit idle before its first request or between requests.
    keep_alive_timeout: float = 5.0
    #: Seconds a client has to complete the TLS handshake.
    tls_handshake_timeout: float = 10.0
    #: Concurrent HTTP connections per process; past it, requests get 503 and the
    #: connection is closed.
    max_connections: int = 1000
    #: Event loop: "asyncio" (the standard library's), "uvloop" (less CPU per request, the
    #: ``server-fast`` extra; refused when it is not installed), or "auto": uvloop when
    #: installed, else asyncio.
    event_loop: str = "auto"
    #: HTTP/1.1 parser: "httptools" (llhttp in C, the ``server-fast`` extra; refused when
    #: it is not installed), "h11" (pure Python), or "auto": httptools when installed.
    http: str = "auto"
    #: Serve routes through :mod:`mock_server.dispatch` (routing and parameters compiled
    #: once); False sends every request through FastAPI's own router, to rule it out.
    compiled_routes: bool = True

    def __post_init__(self) -> None:
        self.data_dir = Path(os.fspath(self.data_dir)).resolve()
        if self.tls_cert is not None:
            self.tls_cert = Path(self.tls_cert)
        if self.tls_key is not None:
            self.tls_key = Path(self.tls_key)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.worker_threads < 1:
            raise ValueError("worker_threads must be >= 1")
        if not self.rate_limit_window > 0:
            raise ValueError("rate_limit_window must be positive")
        for name in ("header_timeout", "keep_alive_timeout", "tls_handshake_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.event_loop not in EVENT_LOOPS:
            raise ValueError("event_loop must be one of " + ", ".join(EVENT_LOOPS))
        if self.http not in HTTP_PROTOCOLS:
            raise ValueError("http must be one of " + ", ".join(HTTP_PROTOCOLS))
        if self.max_connections < 1 or self.ws_max_sockets_per_key < 1:
            raise ValueError("max_connections and ws_max_sockets_per_key must be >= 1")
        for tier, limit in self.tier_limits.items():
            if tier not in TIER_LIMITS or not isinstance(limit, int) or limit < 1:
                raise ValueError(f"tier_limits: {tier!r} must be a known tier with a limit >= 1")

    def body_limit_for(self, path: str) -> int:
        """Body limit for a request path (blob uploads stream, so they get their own cap)."""
        best = ""
        limit = self.max_body_bytes
        for prefix, value in self.body_limit_overrides.items():
            if path.startswith(prefix) and len(prefix) > len(best):
                best, limit = prefix, value
        return limit
