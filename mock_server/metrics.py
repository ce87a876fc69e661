"""In-process counters rendered in the Prometheus text format.

Names are part of the contract with the SDK tests: ``ekodb_requests_total``,
``ekodb_token_exchanges_total``, ``ekodb_rate_limited_total``, ``ekodb_failed_auth_total``,
``ekodb_connections_opened_total``, ``ekodb_connections_open``.
"""

from __future__ import annotations

import threading
from collections import defaultdict

_HELP: dict[str, tuple[str, str]] = {
    "ekodb_requests_total": ("counter", "HTTP requests by method, route template and status."),
    "ekodb_token_exchanges_total": ("counter", "API key to token exchanges by result."),
    "ekodb_rate_limited_total": ("counter", "Requests rejected with 429."),
    "ekodb_failed_auth_total": ("counter", "Failed authentications (bad key or token)."),
    "ekodb_connections_opened_total": ("counter", "TCP connections accepted."),
    "ekodb_connections_open": ("gauge", "TCP connections currently open."),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Thread-safe labelled counters and gauges."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: defaultdict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(
            float
        )
        for name in ("ekodb_rate_limited_total", "ekodb_failed_auth_total",
                     "ekodb_connections_opened_total", "ekodb_connections_open"):
            self._values[(name, ())] += 0
        for result in ("ok", "failed"):
            self._values[("ekodb_token_exchanges_total", (("result", result),))] += 0

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._values[key] += amount

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return float(self._values.get((name, tuple(sorted(labels.items()))), 0))

    def render(self) -> str:
        with self._lock:
            items = sorted(self._values.items())
        lines: list[str] = []
        seen: set[str] = set()
        for (name, labels), value in items:
            if name not in seen:
                seen.add(name)
                kind, text = _HELP.get(name, ("counter", name))
                lines.append(f"# HELP {name} {text}")
                lines.append(f"# TYPE {name} {kind}")
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            shown = int(value) if float(value).is_integer() else value
            lines.append(f"{name}{{{label_text}}} {shown}" if labels else f"{name} {shown}")
        return "\n".join(lines) + "\n"
