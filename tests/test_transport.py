"""Transport options as a user meets them, over real sockets: proxies, mutual TLS, injected
httpx transports and clients, timeouts, untrusted certificates, pool limits under threads."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import ekoclient.errors
from ekoclient import AsyncClient, Client
from ekoclient.errors import ConfigurationError, TransportError

from .sdk_helpers import metric


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------ little network helpers


class LoopThread:
    """An asyncio loop in a thread, serving helper servers for one test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[asyncio.base_events.Server] = []

    def serve(self, handler: Any, ssl_ctx: ssl.SSLContext | None = None) -> int:
        async def start() -> int:
            server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ssl_ctx)
            self.servers.append(server)
            return int(server.sockets[0].getsockname()[1])
        return asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)

    def close(self) -> None:
        async def stop() -> None:
            for server in self.servers:
                server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def _join(a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                b: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    await asyncio.gather(_pipe(a[0], b[1]), _pipe(b[0], a[1]))


class ConnectProxy:
    """An HTTP CONNECT proxy that records every tunnel it opens."""

    def __init__(self, loop: LoopThread) -> None:
        self.tunnels: list[str] = []
        self.port = loop.serve(self._handle)
        self.url = f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        host, port = target.rsplit(":", 1)
        upstream = await asyncio.open_connection(host, int(port))
        self.tunnels.append(target)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await _join((reader, writer), upstream)


class MutualTlsFront:
    """A TLS front that requires a client certificate from the server's CA, then relays
    to the reference server (over TLS) — a stand-in for an mTLS-terminating gateway."""

    def __init__(self, loop: LoopThread, tls_dir: Path, upstream_port: int) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(tls_dir / "server.pem", tls_dir / "server.key")
        ctx.load_verify_locations(tls_dir / "ca.pem")
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.upstream_ctx = ssl.create_default_context(cafile=str(tls_dir / "ca.pem"))
        self.upstream_port = upstream_port
        self.clients: list[str] = []
        self.port = loop.serve(self._handle, ctx)
        self.url = f"https://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert") or {}
        self.clients.append(str(dict(x[0] for x in peer.get("subject", ()))
                                .get("commonName")))
        upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port,
                                                 ssl=self.upstream_ctx)
        await _join((reader, writer), upstream)


def issue_client_cert(tls_dir: Path, out: Path) -> tuple[Path, Path, Path]:
    """A client certificate signed by the server's CA: (cert, key, cert+key in one PEM)."""
    ca_cert = x509.load_pem_x509_certificate((tls_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((tls_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tenant-a")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(ca_key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    paths = out / "client.pem", out / "client.key", out / "client-with-key.pem"
    paths[0].write_bytes(cert_pem)
    paths[1].write_bytes(key_pem)
    paths[2].write_bytes(cert_pem + key_pem)
    return paths


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    try:
        yield loop
    finally:
        loop.close()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


ONCE: dict[str, Any] = {"max_attempts": 1}


# ------------------------------------------------------------------------------ proxies


def test_calls_and_the_databus_stream_go_through_the_proxy(
        ekodb_server: Any, admin: Client, loop_thread: LoopThread) -> None:
    proxy = ConnectProxy(loop_thread)
    coll, sub = unique("proxied"), unique("proxied")
    admin.datastore.create_collection(coll)
    admin.databus.subscribe(sub, collections=[coll])
    record = admin.datastore.insert(coll, {"via": "proxy"})
    with Client(base_url=ekodb_server.url, api_key=ekodb_server.admin_key,
                ca_bundle=ekodb_server.ca_bundle, proxy=proxy.url) as client:
        assert client.datastore.get(coll, record["id"])["via"] == "proxy"
        http_tunnels = len(proxy.tunnels)
        with client.databus.stream(sub, auto_ack=True) as stream:
            assert next(stream).record_id == record["id"]
    target = f"127.0.0.1:{port_of(ekodb_server.url)}"
    assert http_tunnels >= 1
    assert len(proxy.tunnels) > http_tunnels  # the WebSocket took its own tunnel
    assert set(proxy.tunnels) == {target}


async def test_the_async_client_goes_through_the_proxy(
        ekodb_server: Any, loop_thread: LoopThread) -> None:
    proxy = ConnectProxy(loop_thread)
    async with AsyncClient(base_url=ekodb_server.url, api_key=ekodb_server.admin_key,
                           ca_bundle=ekodb_server.ca_bundle, proxy=proxy.url) as client:
        assert (await client.admin.permissions()).is_admin
    assert proxy.tunnels == [f"127.0.0.1:{port_of(ekodb_server.url)}"]


def test_a_proxy_url_is_checked_and_its_password_never_shown() -> None:
    with pytest.raises(ConfigurationError, match="proxy"):
        Client(base_url="https://127.0.0.1:9", proxy="socks9://nowhere")
    client = Client(base_url="https://127.0.0.1:9", proxy="http://user:s3cret-pw@127.0.0.1:9")
    try:
        assert "s3cret-pw" not in repr(client.options) and "s3cret-pw" not in repr(client)
    finally:
        client.close()


# ---------------------------------------------------------------------------- mutual TLS


@pytest.fixture
def mtls(ekodb_server: Any, loop_thread: LoopThread, tmp_path: Path
         ) -> tuple[MutualTlsFront, tuple[Path, Path, Path]]:
    tls_dir = Path(ekodb_server.data_dir) / "tls"
    front = MutualTlsFront(loop_thread, tls_dir, port_of(ekodb_server.url))
    return front, issue_client_cert(tls_dir, tmp_path)


def test_mutual_tls_needs_the_client_certificate(ekodb_server: Any, mtls: Any) -> None:
    front, (cert, key, combined) = mtls
    common = {"base_url": front.url, "api_key": ekodb_server.admin_key,
              "ca_bundle": ekodb_server.ca_bundle, "retry": ONCE}
    with Client(**common) as client, pytest.raises(TransportError):
        client.admin.permissions()
    with Client(**common, client_cert=str(cert), client_key=str(key)) as client:
        assert client.admin.permissions().is_admin
    with Client.builder().base_url(front.url).api_key(ekodb_server.admin_key).ca_bundle(
            ekodb_server.ca_bundle).client_cert(combined).build() as client:
        assert client.admin.permissions().is_admin
    assert "tenant-a" in front.clients


async def test_mutual_tls_on_the_async_client_and_its_stream(
        ekodb_server: Any, admin: Client, mtls: Any) -> None:
    front, (_, _, combined) = mtls
    coll, sub = unique("mtls"), unique("mtls")
    admin.datastore.create_collection(coll)
    admin.databus.subscribe(sub, collections=[coll])
    record = admin.datastore.insert(coll, {"n": 1})
    client = AsyncClient(base_url=front.url, api_key=ekodb_server.admin_key,
                         ca_bundle=ekodb_server.ca_bundle, client_cert=str(combined))
    async with client, client.databus.stream(sub, auto_ack=True) as stream:
        event = await stream.__anext__()
    assert event.record_id == record["id"]
    assert len(front.clients) >= 2  # the HTTP pool and the WebSocket both presented it


def test_an_unreadable_client_certificate_is_a_configuration_error(tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-cert.pem"
    bogus.write_text("hello")
    with pytest.raises(ConfigurationError, match="client certificate"):
        Client(base_url="https://127.0.0.1:9", client_cert=str(bogus))
    with pytest.raises(ConfigurationError, match="client_cert"):
        Client(base_url="https://127.0.0.1:9", client_cert=str(tmp_path / "missing.pem"))


# ------------------------------------------------------------ injected transports, clients


def test_a_custom_transport_with_settings_it_would_ignore_is_refused(
        ekodb_server: Any) -> None:
    transport = httpx.HTTPTransport()
    for clash in ({"ca_bundle": ekodb_server.ca_bundle}, {"pool": {"max_connections": 5}},
                  {"proxy": "http://127.0.0.1:9"}, {"verify": False}):
        with pytest.raises(ConfigurationError, match=f"cannot be applied.*{next(iter(clash))}|"
                                                     f"{next(iter(clash))}.*cannot be applied"):
            Client(base_url=ekodb_server.url, transport=transport, **clash)
    with pytest.raises(ConfigurationError, match="AsyncBaseTransport"):
        AsyncClient(base_url=ekodb_server.url, transport=transport)
    with pytest.raises(ConfigurationError, match=r"httpx\.Client"):
        Client(base_url=ekodb_server.url, http_client=httpx.AsyncClient())


def test_a_custom_transport_is_used_as_configured(ekodb_server: Any) -> None:
    ctx = ssl.create_default_context(cafile=ekodb_server.ca_bundle)
    with Client(base_url=ekodb_server.url, api_key=ekodb_server.admin_key,
                transport=httpx.HTTPTransport(verify=ctx)) as client:
        assert client.admin.permissions().is_admin


async def test_a_custom_httpx_client_is_used_and_left_open(ekodb_server: Any) -> None:
    seen: list[str] = []

    async def hook(request: httpx.Request) -> None:
        seen.append(request.url.path)

    ctx = ssl.create_default_context(cafile=ekodb_server.ca_bundle)
    mine = httpx.AsyncClient(verify=ctx, event_hooks={"request": [hook]})
    async with AsyncClient(base_url=ekodb_server.url, api_key=ekodb_server.admin_key,
                           http_client=mine) as client:
        assert (await client.admin.permissions()).is_admin
    assert seen == ["/api/auth/token", "/api/auth/permissions"]
    assert not mine.is_closed  # the caller made it, the caller closes it
    await mine.aclose()


# -------------------------------------------------------------------------------- timeouts


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def test_a_read_timeout_raises_the_public_timeout_error(silent_server: str) -> None:
    with Client(base_url=silent_server, api_key="eko_test_" + "k" * 40, timeout=0.3,
                retry=ONCE) as client, pytest.raises(ekoclient.errors.TimeoutError) as caught:
        client.admin.permissions()
    assert isinstance(caught.value, TimeoutError)  # the built-in: `except TimeoutError` works
    assert isinstance(caught.value, TransportError)
    assert "timed out while waiting for the answer" in str(caught.value)


async def test_the_async_client_raises_the_same_timeout_error(silent_server: str) -> None:
    async with AsyncClient(base_url=silent_server, api_key="eko_test_" + "k" * 40,
                           timeout=0.3, retry=ONCE) as client:
        with pytest.raises(ekoclient.errors.TimeoutError, match="timed out"):
            await client.admin.permissions()


@pytest.fixture
def refused_url() -> str:
    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"https://127.0.0.1:{s.getsockname()[1]}"


def test_a_refused_connection_is_not_reported_as_a_timeout(refused_url: str) -> None:
    with Client(base_url=refused_url, api_key="eko_test_" + "k" * 40, retry=ONCE) as client, \
            pytest.raises(TransportError) as caught:
        client.admin.permissions()
    assert not isinstance(caught.value, TimeoutError), caught.value
    assert "ConnectError" in str(caught.value)


async def test_the_async_client_reports_a_refused_connection_alike(refused_url: str) -> None:
    async with AsyncClient(base_url=refused_url, api_key="eko_test_" + "k" * 40,
                           retry=ONCE) as client:
        with pytest.raises(TransportError) as caught:
            await client.admin.permissions()
    assert not isinstance(caught.value, TimeoutError), caught.value
    assert "ConnectError" in str(caught.value)


# ------------------------------------------------------------------ untrusted certificates


def test_an_untrusted_certificate_names_ca_bundle(ekodb_server: Any) -> None:
    with Client(base_url=ekodb_server.url, api_key=ekodb_server.admin_key,
                retry=ONCE) as client, pytest.raises(TransportError) as caught:
        client.admin.permissions()
    assert "ca_bundle" in str(caught.value) and "EKODB_CA_BUNDLE" in str(caught.value)


async def test_an_untrusted_certificate_ends_the_async_stream_with_the_hint(
        ekodb_server: Any) -> None:
    async with AsyncClient(base_url=ekodb_server.url, api_key=ekodb_server.admin_key,
                           retry=ONCE) as client:
        with pytest.raises(TransportError, match="EKODB_CA_BUNDLE"):
            await client.admin.permissions()
        with pytest.raises(TransportError, match="ca_bundle"):
            async with client.databus.stream("any") as stream:
                await asyncio.wait_for(stream.__anext__(), 20)


# ------------------------------------------------------------------------- pool limits


def test_32_threads_sharing_one_client_stay_within_the_pool(
        ekodb_server: Any, admin: Client) -> None:
    limit = 4
    before = metric(ekodb_server, "ekodb_connections_opened_total")
    with Client(base_url=ekodb_server.url, api_key=ekodb_server.admin_key,
                ca_bundle=ekodb_server.ca_bundle,
                pool={"max_connections": limit, "max_keepalive": limit}) as client:
        def work(_: int) -> int:
            return sum(1 for _ in range(5) if client.admin.permissions().is_admin)

        with ThreadPoolExecutor(32) as threads:
            done = sum(threads.map(work, range(32)))
    opened = metric(ekodb_server, "ekodb_connections_opened_total") - before
    assert done == 32 * 5
    assert opened <= limit + 1  # + the metrics read's own connection


def test_a_per_request_timeout_overrides_the_clients_on_every_pool(silent_server: str) -> None:
    """The hook per-call options use: one request's read timeout, the client's left alone."""
    from ekoclient._http import AsyncTransport, SyncTransport

    common: dict[str, Any] = {"max_connections": 2, "max_keepalive": 2,
                              "keepalive_expiry": 5.0, "timeouts": (5.0, 30.0, 30.0, 5.0),
                              "user_agent": "t", "event_hooks": None}
    mine = httpx.Client()
    for transport in (SyncTransport(**common), SyncTransport(http_client=mine)):
        started = time.monotonic()
        with pytest.raises(ekoclient.errors.TimeoutError):
            transport.send("GET", silent_server + "/x", {}, None, None, timeout={"read": 0.2})
        assert time.monotonic() - started < 5
        transport.close()
    mine.close()

    async def on_async() -> None:
        amine = httpx.AsyncClient()
        for transport in (AsyncTransport(**common), AsyncTransport(http_client=amine)):
            started = time.monotonic()
            with pytest.raises(ekoclient.errors.TimeoutError):
                await transport.send("GET", silent_server + "/x", {}, None, None,
                                     timeout={"read": 0.2})
            assert time.monotonic() - started < 5
            await transport.aclose()
        await amine.aclose()

    asyncio.run(on_async())
