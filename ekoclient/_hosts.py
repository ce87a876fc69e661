"""Which server a call goes to: the sans-I/O host pool.

A :class:`HostPool` spreads calls round-robin over the healthy hosts. A host that fails
(connection error, timeout, 5xx) is benched. One crash is one failure *episode*, however many
calls were in flight on the host when it died: failures reported while it is already benched
do not count again. The cool-down doubles with each episode that follows the last successful
call (a host that keeps relapsing stays out longer), up to a cap. When its cool-down has
passed it is not trusted blindly: the pool asks its owner to probe it (``GET /api/health``)
and takes it back only when the probe succeeds. A failed probe is retried after the base
cool-down (not a doubled one), so a host that comes back is in rotation again within about
one cool-down (1 s by default) of its return. When no host is healthy the one due back
soonest is used, so a call always has somewhere to go and the retry policy, not the pool,
decides when to give up.

Design: the pool does no I/O and reads time only through an injected clock, so every
decision is unit-tested with a fake clock. Probes and discovery refreshes are requested
through callbacks; the executor that owns the pool runs them on its own transport (a thread
for the sync client, a task for the async one), so no caller ever waits on a probe.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

logger = logging.getLogger("ekoclient")

Clock = Callable[[], float]


@runtime_checkable
class HostDiscovery(Protocol):
    """Where the service's hosts are: a fixed list, DNS, a service registry...

    ``hosts()`` returns base URLs (``https://host:port``). It is called once when the client
    is built and, when the object has a ``refresh_interval`` attribute (seconds, not None),
    again every that many seconds in the background; it may block (DNS, HTTP). An empty
    answer or an exception keeps the previous list.
    """

    def hosts(self) -> Sequence[str]: ...


class StaticHosts:
    """A fixed list of hosts: what ``hosts=[...]`` means."""

    refresh_interval: float | None = None

    def __init__(self, urls: Sequence[str]) -> None:
        self._urls = tuple(urls)

    def hosts(self) -> Sequence[str]:
        return self._urls

    def __repr__(self) -> str:
        return f"StaticHosts({list(self._urls)!r})"


@dataclass(frozen=True, slots=True)
class HostStatus:
    """One host as the pool sees it (for dashboards and tests)."""

    url: str
    healthy: bool
    probing: bool
    failures: int
    #: Seconds until the host may be probed again (0 when healthy or due).
    benched_for: float


@dataclass(slots=True)
class _Host:
    url: str
    #: Failures since the last successful call: episodes and failed probes.
    failures: int = 0
    #: Failure episodes since the last successful call (these double the cool-down).
    episodes: int = 0
    #: 0.0 while healthy, else the clock time at which its cool-down ends.
    benched_until: float = 0.0
    probing: bool = False


class HostPool:
    """Round-robin over healthy hosts; failing hosts are benched, probed, then taken back.

    ``on_probe(url)`` is called (at most once per cool-down per host, never under the pool's
    lock) when a benched host's cool-down has passed; its owner must answer with
    :meth:`probe_succeeded` or :meth:`probe_failed`. Without ``on_probe`` a host simply comes
    back when its cool-down ends. ``on_refresh()`` is called every ``refresh_interval``
    seconds; its owner answers with :meth:`update` or :meth:`refresh_failed`.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        cooldown: float = 1.0,
        max_cooldown: float = 30.0,
        clock: Clock = time.monotonic,
        on_probe: Callable[[str], None] | None = None,
        refresh_interval: float | None = None,
        on_refresh: Callable[[], None] | None = None,
    ) -> None:
        if not urls:
            raise ValueError("a host pool needs at least one URL")
        self._cooldown = cooldown
        self._max_cooldown = max(max_cooldown, cooldown)
        self._clock = clock
        self._lock = threading.Lock()
        self.on_probe = on_probe
        self._refresh_interval = refresh_interval if on_refresh is not None else None
        self._on_refresh = on_refresh
        self._refreshing = False
        self._next_refresh = (clock() + refresh_interval
                              if self._refresh_interval is not None and refresh_interval
                              else math.inf)
        self._counter = itertools.count()
        self._hosts: list[_Host] = []
        self._by_url: dict[str, _Host] = {}
        self._healthy: tuple[_Host, ...] = ()
        #: Earliest clock time at which pick() has work to do besides choosing.
        self._next_event = math.inf
        self._single: str | None = None
        self._set_hosts(urls)

    # --- the hot path -----------------------------------------------------------------------

    def pick(self) -> str:
        """The base URL for the next attempt (thread-safe; also used by WebSocket streams)."""
        single = self._single
        if single is not None:
            return single
        if self._next_event <= self._clock():
            self._housekeeping()
        healthy = self._healthy
        if healthy:
            return healthy[next(self._counter) % len(healthy)].url
        with self._lock:
            return min(self._hosts, key=lambda h: h.benched_until).url

    def succeeded(self, url: str) -> None:
        """A real call to ``url`` worked: forget its failures (and un-bench it)."""
        if self._single is not None:
            return
        host = self._by_url.get(url)
        if host is not None and host.failures:
            with self._lock:
                host.failures = host.episodes = 0
                host.benched_until = 0.0
                host.probing = False
                self._recompute()

    def failed(self, url: str) -> None:
        """Bench a host after a connection failure, a timeout or a 5xx.

        A host already benched is not benched again: calls that were in flight when it
        failed report one after another, and they are all the same episode.
        """
        if self._single is not None:
            return
        with self._lock:
            host = self._by_url.get(url)
            if host is None or host.benched_until:
                return
            self._bench(host)
            self._recompute()
        logger.info("host %s benched for %.2fs after %d failure(s)", url,
                    host.benched_until - self._clock(), host.failures)

    # --- probes and discovery, answered by the pool's owner ---------------------------------

    def probe_succeeded(self, url: str) -> None:
        """The health probe answered: put the host back in rotation."""
        with self._lock:
            host = self._by_url.get(url)
            if host is None:
                return
            host.probing = False
            host.benched_until = 0.0  # failures kept: a prompt relapse benches it for longer
            self._recompute()
        logger.info("host %s is healthy again", url)

    def probe_failed(self, url: str) -> None:
        """The health probe failed: probe again after the base cool-down.

        Not a doubled one: probes are cheap, and a host that comes back should be used
        within about a cool-down of its return, not after a wait grown while it was down.
        """
        with self._lock:
            host = self._by_url.get(url)
            if host is None:
                return
            host.probing = False
            host.failures += 1
            host.benched_until = self._clock() + self._cooldown
            self._recompute()

    def update(self, urls: Sequence[str]) -> None:
        """A new host list from discovery; known hosts keep their health state."""
        with self._lock:
            self._refreshing = False
            self._schedule_refresh()
            if urls:
                self._set_hosts(urls)

    def refresh_failed(self) -> None:
        """Discovery failed: keep the current list and try again after the interval."""
        with self._lock:
            self._refreshing = False
            self._schedule_refresh()
            self._recompute()

    # --- views ------------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return [h.url for h in self._hosts]

    def healthy(self) -> list[str]:
        return [h.url for h in self._healthy]

    def has_healthy(self) -> bool:
        """Whether a retry can go to a healthy host right away (so need not back off)."""
        return bool(self._healthy) and self._single is None

    def status(self) -> list[HostStatus]:
        now = self._clock()
        with self._lock:
            return [
                HostStatus(h.url, h.benched_until == 0.0, h.probing, h.failures,
                           max(0.0, h.benched_until - now) if h.benched_until else 0.0)
                for h in self._hosts
            ]

    # --- internals (callers hold the lock unless stated) ------------------------------------

    def _set_hosts(self, urls: Sequence[str]) -> None:
        hosts: list[_Host] = []
        for url in dict.fromkeys(u.rstrip("/") for u in urls):
            hosts.append(self._by_url.get(url) or _Host(url))
        self._hosts = hosts
        self._by_url = {h.url: h for h in hosts}
        dynamic = self._refresh_interval is not None
        self._single = hosts[0].url if len(hosts) == 1 and not dynamic else None
        self._recompute()

    def _bench(self, host: _Host) -> None:
        host.failures += 1
        host.episodes += 1
        wait = min(self._max_cooldown, self._cooldown * 2 ** min(host.episodes - 1, 30))
        host.benched_until = self._clock() + wait

    def _schedule_refresh(self) -> None:
        interval = self._refresh_interval
        self._next_refresh = self._clock() + interval if interval else math.inf

    def _recompute(self) -> None:
        self._healthy = tuple(h for h in self._hosts if h.benched_until == 0.0)
        due = [h.benched_until for h in self._hosts if h.benched_until and not h.probing]
        refresh = math.inf if self._refreshing else self._next_refresh
        self._next_event = min(due, default=math.inf) if due else math.inf
        self._next_event = min(self._next_event, refresh)

    def _housekeeping(self) -> None:
        """Start due probes and refreshes (called without the lock, from pick)."""
        now = self._clock()
        probes: list[str] = []
        refresh = False
        with self._lock:
            for host in self._hosts:
                if host.benched_until and not host.probing and host.benched_until <= now:
                    if self.on_probe is None:
                        host.benched_until = 0.0  # no prober: the cool-down alone decides
                    else:
                        host.probing = True
                        probes.append(host.url)
            if not self._refreshing and self._next_refresh <= now:
                self._refreshing = True
                refresh = True
            self._recompute()
        for url in probes:
            try:
                self.on_probe(url)  # type: ignore[misc]
            except Exception:  # a prober that cannot start counts as a failed probe
                logger.warning("could not start a health probe of %s", url, exc_info=True)
                self.probe_failed(url)
        if refresh and self._on_refresh is not None:
            try:
                self._on_refresh()
            except Exception:
                logger.warning("could not start a host discovery refresh", exc_info=True)
                self.refresh_failed()
