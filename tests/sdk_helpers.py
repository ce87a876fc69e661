"""Helpers for SDK tests that run against the reference server."""

from __future__ import annotations

import re
import ssl
from typing import Any

import httpx


def metric(server: Any, name: str, **labels: str) -> float:
    """Sum of a Prometheus counter on the server, over series matching ``labels``."""
    tls = ssl.create_default_context(cafile=server.ca_bundle)
    response = httpx.get(f"{server.url}/api/metrics", verify=tls,
                         headers={"Authorization": f"Bearer {admin_token(server)}"})
    if response.status_code == 401:  # the cached token outlived a short-TTL server's limit
        _TOKENS.pop(server.url, None)
        response = httpx.get(f"{server.url}/api/metrics", verify=tls,
                             headers={"Authorization": f"Bearer {admin_token(server)}"})
    response.raise_for_status()
    total = 0.0
    for line in response.text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+([0-9.eE+-]+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(4))
    return total


_TOKENS: dict[str, str] = {}


def admin_token(server: Any) -> str:
    """An admin token, exchanged once per server so reading metrics adds no exchanges."""
    if server.url in _TOKENS:
        return _TOKENS[server.url]
    response = httpx.post(f"{server.url}/api/auth/token", json={"api_key": server.admin_key},
                          verify=ssl.create_default_context(cafile=server.ca_bundle))
    response.raise_for_status()
    token = _TOKENS[server.url] = str(response.json()["token"])
    return token
