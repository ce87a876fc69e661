"""`python -m mock_server`: run the reference server and print .env-ready lines."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from mock_server.config import EVENT_LOOPS, HTTP_PROTOCOLS, ServerConfig
from mock_server.server import ReferenceServer, is_loopback

#: Last line printed at start (a comment, so shells and .env parsers skip it).
READY_LINE = "# ekodb reference server ready"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mock_server",
        description="ekoDB-compatible reference server (HTTPS with a local CA by default).",
    )
    p.add_argument("--data-dir", required=True, type=Path, help="state directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--tls-cert", type=Path)
    p.add_argument("--tls-key", type=Path)
    p.add_argument("--insecure-http", action="store_true", help="plain HTTP, loopback only")
    p.add_argument("--token-ttl", type=int, default=3600, help="JWT lifetime in seconds")
    p.add_argument("--fault-injection", action="store_true", help="enable /api/_faults (tests)")
    p.add_argument("--trusted-proxy", action="append", default=[], metavar="CIDR")
    p.add_argument("--no-rate-limits", action="store_true",
                   help="no per-key request limits (the failed-auth limiter stays)")
    p.add_argument("--rate-limit-window", type=float, default=60.0, metavar="SECONDS",
                   help="window the tier limits and per-key rate_limit count over")
    p.add_argument("--fastapi-routing", action="store_true",
                   help="route every request through FastAPI's router instead of the "
                        "compiled route table (slower; to rule the table out)")
    p.add_argument("--max-connections", type=int, default=1000, metavar="N",
                   help="concurrent HTTP connections; past it, requests get 503")
    p.add_argument("--header-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="time a client has to send a request line and headers")
    p.add_argument("--keep-alive-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="idle time allowed before and between requests")
    p.add_argument("--tls-handshake-timeout", type=float, default=10.0, metavar="SECONDS")
    p.add_argument("--event-loop", choices=EVENT_LOOPS, default="auto",
                   help="auto: uvloop when installed (less CPU per request; pip install "
                        "'ekoclient[server-fast]'), else asyncio")
    p.add_argument("--http", choices=HTTP_PROTOCOLS, default="auto",
                   help="HTTP/1.1 parser; auto: httptools when installed (less CPU per "
                        "request), else h11")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.insecure_http and not is_loopback(args.host):
        print("error: --insecure-http is only allowed on a loopback host", file=sys.stderr)
        return 2
    if (args.tls_cert is None) != (args.tls_key is None):
        print("error: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535 or args.token_ttl <= 0 or not args.rate_limit_window > 0:
        print("error: invalid --port, --token-ttl or --rate-limit-window", file=sys.stderr)
        return 2
    if args.max_connections < 1 or not min(args.header_timeout, args.keep_alive_timeout,
                                           args.tls_handshake_timeout) > 0:
        print("error: --max-connections must be >= 1 and the timeouts positive",
              file=sys.stderr)
        return 2
    config = ServerConfig(
        data_dir=args.data_dir,
        max_connections=args.max_connections,
        compiled_routes=not args.fastapi_routing,
        header_timeout=args.header_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        tls_handshake_timeout=args.tls_handshake_timeout,
        event_loop=args.event_loop,
        http=args.http,
        host=args.host,
        port=args.port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        insecure_http=args.insecure_http,
        token_ttl=args.token_ttl,
        max_token_lifetime=max(24 * 3600, args.token_ttl),
        fault_injection=args.fault_injection,
        trusted_proxies=list(args.trusted_proxy),
        rate_limits_enabled=not args.no_rate_limits,
        rate_limit_window=args.rate_limit_window,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = ReferenceServer(config)
    try:
        server.start()
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    lines = [f"EKODB_URL={server.url}"]
    if server.ca_bundle is not None:
        lines.append(f"EKODB_CA_BUNDLE={server.ca_bundle.resolve()}")
    if server.admin_key is not None:
        lines.append(f"EKODB_API_KEY={server.admin_key}")
    lines.append(READY_LINE)
    print("\n".join(lines), flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0
