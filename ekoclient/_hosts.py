"""Which server a call goes to.

A :class:`HostPool` spreads calls round-robin over the hosts not currently marked bad. A host
that fails (connection error, timeout, 5xx) is benched for a cool-down that doubles with each
consecutive failure; when every host is benched the one due back soonest is used, so a call
always has somewhere to go and the retry policy, not the pool, decides when to give up.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class _Host:
    url: str
    failures: int = 0
    benched_until: float = 0.0


class HostPool:
    """Round-robin over healthy hosts with a doubling cool-down for failing ones."""

    def __init__(self, urls: Sequence[str], *, cooldown: float = 1.0,
                 max_cooldown: float = 30.0) -> None:
        if not urls:
            raise ValueError("a host pool needs at least one URL")
        self._hosts = [_Host(url.rstrip("/")) for url in urls]
        self._single = self._hosts[0].url if len(self._hosts) == 1 else None
        self._cycle = itertools.cycle(self._hosts)
        self._cooldown = cooldown
        self._max_cooldown = max_cooldown
        self._lock = threading.Lock()

    @property
    def urls(self) -> list[str]:
        return [h.url for h in self._hosts]

    def pick(self) -> str:
        """The base URL for the next attempt."""
        if self._single is not None:
            return self._single
        now = time.monotonic()
        with self._lock:
            for _ in range(len(self._hosts)):
                host = next(self._cycle)
                if host.benched_until <= now:
                    return host.url
            return min(self._hosts, key=lambda h: h.benched_until).url

    def failed(self, url: str) -> None:
        """Bench a host after a connection failure or a 5xx."""
        if self._single is not None:
            return
        with self._lock:
            for host in self._hosts:
                if host.url == url:
                    host.failures += 1
                    wait = min(self._max_cooldown, self._cooldown * 2 ** (host.failures - 1))
                    host.benched_until = time.monotonic() + wait

    def succeeded(self, url: str) -> None:
        """Forget a host's failures once it answers again."""
        if self._single is not None:
            return
        for host in self._hosts:
            if host.url == url and host.failures:
                with self._lock:
                    host.failures = 0
                    host.benched_until = 0.0

    def healthy(self) -> list[str]:
        now = time.monotonic()
        return [h.url for h in self._hosts if h.benched_until <= now]
