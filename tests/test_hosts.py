"""Host pool decisions (fake clock, no I/O) and the executors' failover glue (scripted faults).

The end-to-end behaviour against real server processes is in tests/test_failover.py; here
are the decisions themselves and the timings a real server cannot produce on demand.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence

import httpx
import pytest

from ekoclient import AsyncClient, Client, HostDiscovery, StaticHosts
from ekoclient._hosts import HostPool
from ekoclient.errors import ConfigurationError, TransportError

from .fakes import make_token

A, B, C = "https://a.test", "https://b.test", "https://c.test"
KEY = "eko_test_" + "k" * 40


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool(urls: Sequence[str] = (A, B, C), **kw: object) -> tuple[HostPool, FakeClock, list[str]]:
    clock = FakeClock()
    probes: list[str] = []
    p = HostPool(urls, cooldown=1.0, max_cooldown=8.0, clock=clock, on_probe=probes.append,
                 **kw)  # type: ignore[arg-type]
    return p, clock, probes


# --- pool decisions ---------------------------------------------------------------------------


def test_calls_are_spread_evenly_over_healthy_hosts() -> None:
    p, _, _ = pool()
    assert Counter(p.pick() for _ in range(300)) == {A: 100, B: 100, C: 100}


def test_a_failed_host_is_skipped_until_its_cooldown_ends() -> None:
    p, clock, probes = pool()
    p.failed(B)
    assert B not in {p.pick() for _ in range(20)}
    clock.now += 0.99
    assert B not in {p.pick() for _ in range(20)} and probes == []


def test_after_the_cooldown_a_host_is_probed_once_before_it_is_used_again() -> None:
    p, clock, probes = pool()
    p.failed(B)
    clock.now += 1.0
    picked = {p.pick() for _ in range(20)}
    assert probes == [B]  # one probe, however many calls are made meanwhile
    assert B not in picked
    p.probe_succeeded(B)
    assert B in {p.pick() for _ in range(20)}


def test_a_failed_probe_is_retried_after_the_base_cooldown() -> None:
    """A host down for long is probed every cool-down, so its return is noticed within one."""
    p, clock, probes = pool()
    p.failed(B)
    waits = []
    for _ in range(6):
        clock.now += 100  # long enough for any cool-down
        p.pick()
        p.probe_failed(B)
        (status,) = [s for s in p.status() if s.url == B]
        waits.append(status.benched_for)
    assert waits == [1.0] * 6
    assert len(probes) == 6 and status.failures == 7


def test_a_crash_seen_by_many_calls_in_flight_is_one_failure() -> None:
    """16 calls in flight on a node that dies report 16 failures: one episode, 1 s bench."""
    p, clock, probes = pool()
    for _ in range(16):
        p.failed(B)
    (status,) = [s for s in p.status() if s.url == B]
    assert status.failures == 1 and status.benched_for == 1.0
    clock.now += 1.0
    p.pick()
    assert probes == [B]
    p.probe_succeeded(B)
    assert B in p.healthy()


def test_a_host_back_after_1_7_s_is_in_rotation_within_a_second() -> None:
    p, clock, probes = pool()
    died = clock.now
    for _ in range(16):
        p.failed(B)
    back = died + 1.7  # the node answers again from here on
    while B not in p.healthy():
        clock.now += 0.05
        p.pick()
        if probes:
            url = probes.pop()
            (p.probe_succeeded if clock.now >= back else p.probe_failed)(url)
    assert clock.now - back <= 1.0


def test_relapses_double_the_cooldown() -> None:
    """A host that fails again before any call succeeded on it stays out longer."""
    p, clock, probes = pool()
    p.failed(A)
    clock.now += 1.0
    p.pick()
    p.probe_succeeded(A)
    p.failed(A)  # relapse: second episode
    clock.now += 1.5
    p.pick()
    assert probes == [A]  # the first probe only
    clock.now += 0.5
    p.pick()
    assert probes == [A, A]


def test_a_successful_call_clears_the_failure_count() -> None:
    p, _, _ = pool()
    p.failed(A)
    p.succeeded(A)
    assert p.healthy() == [A, B, C]
    p.failed(A)
    (status,) = [s for s in p.status() if s.url == A]
    assert status.failures == 1 and status.benched_for == 1.0


def test_with_every_host_benched_the_one_due_back_soonest_is_used() -> None:
    p, clock, _ = pool()
    p.failed(A)
    clock.now += 1.0
    p.pick()
    p.probe_succeeded(A)
    p.failed(A)  # a relapse: benched 2 s
    clock.now += 0.1
    p.failed(B)
    clock.now += 0.1
    p.failed(C)
    assert not p.has_healthy()
    assert {p.pick() for _ in range(10)} == {B}


def test_a_prober_that_cannot_start_counts_as_a_failed_probe() -> None:
    clock = FakeClock()

    def broken(url: str) -> None:
        raise RuntimeError("no event loop")

    p = HostPool((A, B), cooldown=1.0, clock=clock, on_probe=broken)
    p.failed(A)
    clock.now += 1.0
    assert p.pick() == B
    (status,) = [s for s in p.status() if s.url == A]
    assert status.failures == 2 and not status.probing


def test_without_a_prober_a_host_returns_when_its_cooldown_ends() -> None:
    clock = FakeClock()
    p = HostPool((A, B), cooldown=1.0, clock=clock)
    p.failed(A)
    clock.now += 1.0
    assert A in {p.pick() for _ in range(4)}


def test_a_single_host_is_never_benched() -> None:
    p, _, _ = pool((A,))
    p.failed(A)
    assert p.pick() == A and not p.has_healthy()


def test_discovery_updates_keep_known_hosts_state() -> None:
    p, _, _ = pool()
    p.failed(B)
    p.update([B, C, "https://d.test/"])
    assert p.urls == [B, C, "https://d.test"]
    assert p.healthy() == [C, "https://d.test"]
    p.update([])  # an empty answer keeps the list
    assert p.urls == [B, C, "https://d.test"]


def test_discovery_refreshes_on_its_interval_one_at_a_time() -> None:
    clock = FakeClock()
    refreshes: list[float] = []
    p = HostPool((A,), clock=clock, refresh_interval=10.0,
                 on_refresh=lambda: refreshes.append(clock.now))
    clock.now += 9.9
    p.pick()
    assert refreshes == []
    clock.now += 0.1
    p.pick()
    p.pick()  # still in flight: no second refresh
    assert len(refreshes) == 1
    p.update([A, B])
    clock.now += 10.0
    p.pick()
    assert len(refreshes) == 2
    p.refresh_failed()
    assert p.urls == [A, B]


# --- executors: failover inside the retry policy (scripted hosts) -----------------------------


class Hosts:
    """A fake network of hosts; each host is up, down (connect error) or answering 503."""

    def __init__(self) -> None:
        self.mode: dict[str, str] = {}
        self.seen: list[tuple[str, str, str | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = f"https://{request.url.host}"
        mode = self.mode.get(host, "up")
        if request.url.path == "/api/auth/token":
            if mode != "up":
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(200, json={"token": make_token(), "expires_at": 0})
        self.seen.append((host, request.url.path, request.headers.get("idempotency-key")))
        if mode == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if mode == "503":
            return httpx.Response(503, json={"error": {"code": "unavailable", "message": "x",
                                                       "request_id": "r"}})
        if request.url.path == "/api/health":
            return httpx.Response(200, json={"status": "ok", "version": "t"})
        return httpx.Response(200, json={"key_id": "k", "label": "l"})

    def calls(self, path: str = "/api/auth/permissions") -> list[str]:
        return [h for h, p, _ in self.seen if p == path]


def sync_client(net: Hosts, **kw: object) -> Client:
    options: dict[str, object] = {
        "hosts": [A, B, C], "api_key": KEY, "transport": httpx.MockTransport(net),
        "retry": {"max_attempts": 5, "initial": 0.5, "maximum": 0.5},
        "host_cooldown": 0.05, **kw,
    }
    return Client(**options)  # type: ignore[arg-type]


def retry_waits(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The waits the executor announced before each retry ("retry 2 in 0.00s")."""
    return [r.getMessage().rsplit(" in ", 1)[1] for r in caplog.records
            if "; retry " in r.getMessage()]


@pytest.mark.parametrize("fault", ["down", "503"])
def test_a_failing_host_fails_over_to_the_next_without_backoff(
        fault: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ekoclient")
    net = Hosts()
    with sync_client(net) as client:
        client.admin.permissions()  # token + one call to A
        net.mode[B] = fault
        for _ in range(6):
            client.admin.permissions()
    assert retry_waits(caplog) == ["0.00s"]  # one failover, no backoff sleep
    assert net.calls().count(B) == 1  # benched after its first failure
    assert Counter(net.calls())[C] >= 3


def test_a_failed_over_write_keeps_its_idempotency_key() -> None:
    net = Hosts()
    net.mode[A] = "down"
    with sync_client(net) as client:
        client.admin.delete_key("k1")
    writes = [(h, k) for h, p, k in net.seen if p.startswith("/api/auth/keys/")]
    assert [h for h, _ in writes] == [A, B]
    assert writes[0][1] is not None and writes[0][1] == writes[1][1]


def test_with_every_host_down_a_transport_error_comes_after_the_attempt_bound() -> None:
    net = Hosts()
    with sync_client(net, retry={"max_attempts": 4, "initial": 0.01, "maximum": 0.02}) \
            as client:
        client.admin.permissions()
        net.seen.clear()
        net.mode.update({A: "down", B: "down", C: "down"})
        with pytest.raises(TransportError) as info:
            client.admin.permissions()
    assert len(net.calls()) == 4
    assert "4 attempt(s) over 3 hosts" in str(info.value)
    assert KEY not in str(info.value)


def wait_until(predicate: object, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_sync_client_probes_a_benched_host_in_the_background_and_takes_it_back() -> None:
    net = Hosts()
    with sync_client(net) as client:
        net.mode[A] = "down"
        client.admin.permissions()
        assert [s.healthy for s in client.host_status()] == [False, True, True]
        net.mode[A] = "up"
        time.sleep(0.06)
        client.admin.permissions()  # the pick after the cool-down starts the probe
        wait_until(lambda: all(s.healthy for s in client.host_status()))
        assert net.calls("/api/health") == [A]
        net.seen.clear()
        for _ in range(6):
            client.admin.permissions()
    assert Counter(net.calls()) == {A: 2, B: 2, C: 2}


def test_a_failed_probe_keeps_the_host_out_of_rotation() -> None:
    net = Hosts()
    with sync_client(net) as client:
        net.mode[A] = "down"
        client.admin.permissions()
        time.sleep(0.06)
        client.admin.permissions()
        wait_until(lambda: net.calls("/api/health") == [A]
                   and not client.host_status()[0].probing)
        status = client.host_status()[0]
        assert not status.healthy and status.failures == 2
        net.seen.clear()
        for _ in range(4):
            client.admin.permissions()
        assert A not in net.calls()


async def test_async_client_fails_over_and_probes_with_a_task(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ekoclient")
    net = Hosts()
    async with AsyncClient(hosts=[A, B], api_key=KEY, transport=httpx.MockTransport(net),
                           retry={"initial": 0.5, "maximum": 0.5},
                           host_cooldown=0.05) as client:
        await client.admin.permissions()
        net.mode[B] = "down"
        for _ in range(4):
            await client.admin.permissions()
        assert retry_waits(caplog) == ["0.00s"]
        net.mode[B] = "up"
        await asyncio.sleep(0.06)
        await client.admin.permissions()
        for _ in range(100):
            if all(s.healthy for s in client.host_status()):
                break
            await asyncio.sleep(0.01)
        assert net.calls("/api/health") == [B]
        assert all(s.healthy for s in client.host_status())


# --- discovery --------------------------------------------------------------------------------


class Registry:
    """A discovery whose answer the test changes, refreshed every 20 ms."""

    refresh_interval = 0.02

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls

    def hosts(self) -> Sequence[str]:
        return list(self.urls)


def test_static_hosts_and_custom_discoveries_satisfy_the_protocol() -> None:
    assert isinstance(StaticHosts([A]), HostDiscovery)
    assert isinstance(Registry([A]), HostDiscovery)


def test_a_client_follows_its_discovery_as_the_host_list_changes() -> None:
    net = Hosts()
    registry = Registry([A])
    client = (Client.builder().discovery(registry).api_key(KEY)
              .transport(httpx.MockTransport(net)).build())
    with client:
        client.admin.permissions()
        registry.urls = [B, C]
        wait_until(lambda: (client.admin.permissions() is not None
                            and [s.url for s in client.host_status()] == [B, C]))
        net.seen.clear()
        for _ in range(4):
            client.admin.permissions()
    assert Counter(net.calls()) == {B: 2, C: 2}


def test_discovery_answers_are_held_to_the_url_rules() -> None:
    with pytest.raises(ConfigurationError, match="plain http"):
        Client(discovery=StaticHosts(["http://db.example.com"]), api_key=KEY)
    with pytest.raises(ConfigurationError, match="not both"):
        Client(discovery=StaticHosts([A]), hosts=[B], api_key=KEY)
    net = Hosts()
    registry = Registry([A])
    with Client(discovery=registry, api_key=KEY, transport=httpx.MockTransport(net)) as client:
        registry.urls = ["http://db.example.com"]  # refused at refresh: the old list stays
        time.sleep(0.05)
        client.admin.permissions()
        time.sleep(0.05)
        client.admin.permissions()
        assert [s.url for s in client.host_status()] == [A]
