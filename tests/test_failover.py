"""Several reference-server processes on one data dir, one client spread over all of them.

Real processes (``ServerProcess``) over TLS: a node SIGKILLed under load and restarted costs
the caller nothing, every write lands once, revocation on one node holds on every node, and
with every node gone the client gives up within its retry bound.
"""

from __future__ import annotations

import signal
import socket
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from ekoclient import Client
from ekoclient.errors import AuthenticationError, TransportError
from mock_server.testing import ServerProcess

from .sdk_helpers import metric

pytestmark = pytest.mark.timeout(60)

HEALTH = "/api/health"
INSERT = "/api/insert/{collection}"


@dataclass
class Node:
    """What tests/sdk_helpers.metric needs to read one process's counters."""

    proc: ServerProcess
    admin_key: str

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def ca_bundle(self) -> str:
        return str(self.proc.ca_bundle)

    def served(self, route: str) -> float:
        return metric(self, "ekodb_requests_total", route=route, status="200")


@dataclass
class Cluster:
    nodes: list[Node]
    ca_bundle: str
    admin_key: str
    printed_admin_keys: int

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three processes started at the same moment on one fresh data dir (first-start race)."""
    data_dir = tmp_path_factory.mktemp("cluster")
    procs = [ServerProcess(data_dir) for _ in range(3)]
    threads = [threading.Thread(target=p.start) for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert all(p.proc is not None and p.proc.poll() is None for p in procs)
        keys = [p.admin_key for p in procs if p.admin_key]
        assert len(keys) == 1, "exactly one of the racing first starts made the admin key"
        cas = {str(p.ca_bundle) for p in procs}
        assert len(cas) == 1
        yield Cluster([Node(p, keys[0]) for p in procs], cas.pop(), keys[0], len(keys))
    finally:
        for p in procs:
            p.stop()


@dataclass
class Attempts:
    """Every request the client put on the wire: (time, port, path)."""

    seen: list[tuple[float, int, str]] = field(default_factory=list)

    def hook(self, request: httpx.Request) -> None:
        self.seen.append((time.monotonic(), request.url.port or 0, request.url.path))

    def to(self, port: int, *, since: float = 0.0, until: float = float("inf"),
           probes: bool = False) -> list[float]:
        return [t for t, p, path in self.seen
                if p == port and since <= t <= until and (path == HEALTH) == probes]


def spread_client(cluster: Cluster, attempts: Attempts | None = None, **kw: Any) -> Client:
    options: dict[str, Any] = {
        "hosts": cluster.urls, "api_key": cluster.admin_key, "ca_bundle": cluster.ca_bundle,
        "host_cooldown": 0.1, "host_max_cooldown": 0.8,
        "retry": {"max_attempts": 6, "initial": 0.05, "maximum": 0.5},
        **kw,
    }
    if attempts is not None:
        options["event_hooks"] = {"request": [attempts.hook]}
    return Client(**options)


def test_racing_first_starts_share_one_ca_and_one_admin_key(cluster: Cluster) -> None:
    assert cluster.printed_admin_keys == 1
    with spread_client(cluster) as client:
        for _ in range(6):  # two calls per node, all verified against the one CA bundle
            client.admin.permissions()


class Load:
    """A steady read/write workload in a thread: DataStore inserts, each read back by id."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.run = uuid.uuid4().hex[:8]
        self.collection = f"failover_{self.run}"
        client.datastore.create_collection(self.collection)
        self.written: list[str] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        i = 0
        while not self._stop.is_set():
            label = f"fo-{self.run}-{i}"
            try:
                record = self.client.datastore.insert(self.collection, {"label": label})
                self.written.append(label)
                assert self.client.datastore.get(self.collection, record["id"])["label"] == label
            except BaseException as exc:  # recorded for the assertion
                self.errors.append(exc)
                return
            i += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def alive(self) -> bool:
        return self._thread.is_alive()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_node_killed_under_load_and_restarted_costs_the_caller_nothing(
        cluster: Cluster) -> None:
    victim = cluster.nodes[1]
    port = victim.proc.port
    attempts = Attempts()
    with spread_client(cluster, attempts) as client, Load(client) as load:
        wait_for(lambda: len(load.written) >= 30 or not load.alive(), 20, "warm-up writes")
        assert victim.served(INSERT) > 0  # the victim took its share
        killed_at = time.monotonic()
        victim.proc.kill(signal.SIGKILL)
        before = len(load.written)
        wait_for(lambda: len(load.written) >= before + 30 or not load.alive(), 20,
                 "writes while a node is down")
        restarting_at = time.monotonic()
        victim.proc.start()
        healthy_at = time.monotonic()
        # taken back: the restarted process (fresh counters) serves real calls again
        wait_for(lambda: victim.served(INSERT) > 0 or not load.alive(), 10,
                 "the restarted node to be used again")
        back_at = time.monotonic()
    assert load.errors == []
    # detection: only the attempt in flight at the kill (or the next one) reached the dead
    # node; everything after that went elsewhere until a probe found it healthy again
    dead_calls = attempts.to(port, since=killed_at, until=restarting_at)
    assert len(dead_calls) <= 2, dead_calls
    assert all(t - killed_at < 1.0 for t in dead_calls)
    assert attempts.to(port, since=killed_at, probes=True), "the dead node was probed"
    # probes back off (0.1 s doubling to 0.8 s): no hot loop on a dead node
    assert len(attempts.to(port, since=killed_at, until=restarting_at, probes=True)) <= 12
    assert back_at - healthy_at < 3.0
    # every write landed exactly once, whichever node took it and however often it was sent
    # (a write and its stored answer commit together: docs/multi_node.md "Exactly once")
    with Client(base_url=cluster.urls[0], api_key=cluster.admin_key,
                ca_bundle=cluster.ca_bundle) as admin:
        stored = Counter(r["label"] for r in admin.datastore.iter_find(load.collection))
    assert stored == Counter(load.written)
    per_port = Counter(p for _, p, path in attempts.seen if path != HEALTH)
    assert len(per_port) == 3 and min(per_port.values()) > 10, per_port


def test_with_every_node_down_a_transport_error_comes_within_the_bound() -> None:
    ports = []
    for _ in range(3):  # ports nothing listens on
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    attempts = Attempts()
    with Client(hosts=[f"https://127.0.0.1:{p}" for p in ports], api_key="eko_test_" + "x" * 40,
                retry={"max_attempts": 5, "initial": 0.05, "maximum": 0.2},
                event_hooks={"request": [attempts.hook]}) as client:
        started = time.monotonic()
        with pytest.raises(TransportError, match=r"5 attempt\(s\) over 3 hosts"):
            client.admin.permissions()
        elapsed = time.monotonic() - started
    assert len(attempts.seen) == 5  # the token exchange, tried five times, then no more
    assert {p for _, p, _ in attempts.seen} == set(ports)
    assert elapsed < 2.0


def test_a_write_retried_on_another_node_with_its_key_is_applied_once(
        cluster: Cluster) -> None:
    a, b = cluster.nodes[0], cluster.nodes[2]
    tls = ssl.create_default_context(cafile=cluster.ca_bundle)
    label = f"idem-{uuid.uuid4().hex[:8]}"
    with httpx.Client(verify=tls) as http:
        token = http.post(f"{a.url}/api/auth/token",
                          json={"api_key": cluster.admin_key}).json()["token"]
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex}
        first = http.post(f"{a.url}/api/auth/register", json={"label": label}, headers=headers)
        again = http.post(f"{b.url}/api/auth/register", json={"label": label}, headers=headers)
        listed = http.get(f"{b.url}/api/auth/keys", headers=headers).json()
    assert first.status_code == again.status_code == 200
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json()["key_id"] == first.json()["key_id"]
    rows = listed if isinstance(listed, list) else listed.get("keys", [])
    assert [k["label"] for k in rows].count(label) == 1


def test_a_key_revoked_through_one_node_is_refused_by_every_node(cluster: Cluster) -> None:
    with Client(base_url=cluster.urls[0], api_key=cluster.admin_key,
                ca_bundle=cluster.ca_bundle) as admin:
        made = admin.admin.create_key("revoked-everywhere", read_only=True)
        tls = ssl.create_default_context(cafile=cluster.ca_bundle)
        with httpx.Client(verify=tls) as http, \
                spread_client(cluster, api_key=made.api_key) as user:
            tokens = [http.post(f"{url}/api/auth/token", json={"api_key": made.api_key})
                      .json()["token"] for url in cluster.urls]
            for _ in range(3):
                user.admin.permissions()  # the SDK's own token, used on every node
            admin.admin.delete_key(made.key_id)  # through node 0 only
            for url in cluster.urls:
                for token in tokens:  # every node refuses every token minted anywhere
                    answer = http.get(f"{url}/api/auth/permissions",
                                      headers={"Authorization": f"Bearer {token}"})
                    assert answer.status_code == 401, url
            for _ in range(3):
                with pytest.raises(AuthenticationError):
                    user.admin.permissions()


# --- defaults through a restart, the elapsed bound, a spent budget (issue 16: 12b-12d) ------


def test_default_retries_ride_out_a_restart_of_the_only_node(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """8 threads of reads and writes with default options through a SIGKILL and restart."""
    node = ServerProcess(tmp_path_factory.mktemp("restart")).start()
    errors: list[BaseException] = []
    written: list[str] = []
    stop = threading.Event()
    try:
        assert node.admin_key is not None
        with Client(base_url=node.url, api_key=node.admin_key,
                    ca_bundle=str(node.ca_bundle)) as client:
            client.datastore.create_collection("restart")

            def work(n: int) -> None:
                i = 0
                while not stop.is_set():
                    label = f"w{n}-{i}"
                    try:
                        client.datastore.insert("restart", {"label": label})
                        written.append(label)
                        client.admin.permissions()
                    except BaseException as exc:  # recorded for the assertion
                        errors.append(exc)
                        return
                    i += 1

            threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
            for t in threads:
                t.start()
            wait_for(lambda: len(written) >= 20 or bool(errors), 20, "warm-up writes")
            down_at = time.monotonic()
            node.kill(signal.SIGKILL)
            node.start()
            outage = time.monotonic() - down_at
            before = len(written)
            wait_for(lambda: len(written) >= before + 20 or bool(errors), 20,
                     "writes after the restart")
            stop.set()
            for t in threads:
                t.join(30)
            if outage > 3.5 and errors:
                pytest.skip(f"the restart took {outage:.1f}s on this machine; the defaults "
                            "promise 3.5 s")
            assert errors == [], f"outage {outage:.1f}s: {errors[:3]}"
            stored = Counter(r["label"] for r in client.datastore.iter_find("restart"))
            assert stored == Counter(written)  # each write applied exactly once
    finally:
        stop.set()
        node.stop()


def _silent_port() -> tuple[socket.socket, int]:
    """A listening socket that never accepts: connects, then nothing (a hung server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock, sock.getsockname()[1]


def test_max_elapsed_bounds_the_attempt_in_flight() -> None:
    sock, port = _silent_port()
    with sock, Client(base_url=f"https://127.0.0.1:{port}", api_key="eko_test_" + "x" * 40,
                      timeout={"connect": 10, "read": 10},
                      retry={"max_elapsed": 1.0}) as client:
        started = time.monotonic()
        with pytest.raises(TransportError, match=r"max_elapsed=1s"):
            client.admin.permissions()
        assert time.monotonic() - started < 1.6


def test_a_spent_retry_budget_says_so() -> None:
    with socket.socket() as s:  # a port nothing listens on: every connect is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(base_url=f"https://127.0.0.1:{port}", api_key="eko_test_" + "x" * 40,
                retry={"budget_capacity": 1, "budget_per_second": 0,
                       "initial": 0.01, "maximum": 0.02}) as client, \
            pytest.raises(TransportError) as info:
        client.admin.permissions()
    message = str(info.value)
    assert "gave up after 2 attempt(s)" in message
    assert "retry budget is spent" in message and "holds 1 retries" in message
    assert "ConnectError" in message  # and the failure itself
