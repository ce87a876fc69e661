"""Per-call options, caller-chosen idempotency keys and raw responses, over real sockets."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from ekoclient import (
    AsyncClient,
    Authenticator,
    Client,
    CredentialsView,
    RawResponse,
    RequestInfo,
)
from ekoclient.errors import ConfigurationError, InvalidArgumentError, TransportError

from .sdk_helpers import metric

EXCHANGES = "ekodb_token_exchanges_total"


@pytest.fixture
def collection(admin: Client) -> str:
    name = f"opt{uuid.uuid4().hex[:10]}"
    admin.datastore.create_collection(name)
    return name


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A listener that accepts connections and never answers (a hung server)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for s in held:
        s.close()
    server.close()


# --- with_options --------------------------------------------------------------------------

def test_with_options_timeout_bounds_a_call_to_a_hung_server(silent_port: int) -> None:
    with Client(base_url=f"http://127.0.0.1:{silent_port}", api_key="eko_test_" + "k" * 43,
                timeout=30, retry={"max_attempts": 1}) as client:
        quick = client.with_options(timeout=0.3)
        started = time.monotonic()
        with pytest.raises(TransportError, match="timed out"):
            quick.admin.health()
        assert time.monotonic() - started < 5


def test_with_options_max_retries_zero_makes_one_attempt(silent_port: int) -> None:
    attempts: list[RequestInfo] = []
    with Client(base_url=f"http://127.0.0.1:{silent_port}", api_key="eko_test_" + "k" * 43,
                timeout=0.2, on_request=attempts.append,
                retry={"max_attempts": 4, "initial": 0.01, "maximum": 0.01}) as client:
        with pytest.raises(TransportError):
            client.with_options(max_retries=0).admin.health()
        assert [a.attempt for a in attempts] == [1]
        attempts.clear()
        with pytest.raises(TransportError):
            client.admin.health()
        assert [a.attempt for a in attempts] == [1, 2, 3, 4]


def test_extra_headers_reach_the_server(admin: Client) -> None:
    traced = admin.with_options(extra_headers={"X-Request-Id": "checkout-42"})
    raw = traced.with_raw_response.datastore.list_collections()
    assert raw.request_id == "checkout-42"


def test_a_copy_shares_the_pool_and_tokens_of_its_client(admin: Client,
                                                          ekodb_server: Any) -> None:
    admin.datastore.list_collections()  # the admin key has its token now
    before = metric(ekodb_server, EXCHANGES, result="ok")
    for timeout in (5, 6, 7):
        admin.with_options(timeout=timeout, max_retries=1).datastore.list_collections()
    assert metric(ekodb_server, EXCHANGES, result="ok") == before
    assert admin.with_options(timeout=1)._executor.transport is admin._executor.transport


def test_a_view_with_options_keeps_its_key(admin: Client, collection: str) -> None:
    key = admin.admin.create_key("opts", collection_permissions={collection: ["read"]})
    view = Authenticator(admin).using_credentials(key.api_key).with_options(timeout=10)
    assert isinstance(view, CredentialsView)
    assert view.admin.permissions().key_id == key.key_id


def test_with_options_refuses_headers_the_sdk_owns(admin: Client) -> None:
    with pytest.raises(ConfigurationError, match="api_key"):
        admin.with_options(extra_headers={"Authorization": "Bearer x"})
    with pytest.raises(ConfigurationError, match="max_retries"):
        admin.with_options(max_retries=-1)


# --- idempotency_key ---------------------------------------------------------------------

def test_a_repeated_idempotency_key_applies_a_write_once(admin: Client,
                                                          collection: str) -> None:
    key = f"order-{uuid.uuid4().hex}"
    first = admin.datastore.insert(collection, {"sku": "A1"}, idempotency_key=key)
    # an application-level retry of the whole operation, e.g. after a crash
    again = admin.with_options(timeout=10).datastore.insert(collection, {"sku": "A1"},
                                                            idempotency_key=key)
    assert again["id"] == first["id"]
    assert len(admin.datastore.find(collection)) == 1


async def test_idempotency_key_on_the_async_client(async_admin: AsyncClient) -> None:
    name = f"opt{uuid.uuid4().hex[:10]}"
    await async_admin.datastore.create_collection(name)
    key = uuid.uuid4().hex
    a = await async_admin.datastore.insert(name, {"n": 1}, idempotency_key=key)
    b = await async_admin.datastore.insert(name, {"n": 1}, idempotency_key=key)
    assert a == b and len(await async_admin.datastore.find(name)) == 1


def test_idempotency_key_on_a_queue_send_and_a_blob_put(admin: Client) -> None:
    q = f"q{uuid.uuid4().hex[:8]}"
    key = uuid.uuid4().hex
    assert admin.queue.send(q, {"job": 1}, idempotency_key=key) == \
        admin.queue.send(q, {"job": 1}, idempotency_key=key)
    assert admin.queue.size(q) == 1
    table = f"t{uuid.uuid4().hex[:8]}"
    admin.blobstore.create_table(table)
    blob_key = uuid.uuid4().hex  # a key names one request: another request needs another
    meta = admin.blobstore.put(table, "b", b"data", idempotency_key=blob_key)
    assert admin.blobstore.put(table, "b", b"data", idempotency_key=blob_key) == meta


def test_idempotency_key_is_refused_on_reads_and_when_malformed(admin: Client,
                                                                collection: str) -> None:
    with pytest.raises(InvalidArgumentError, match="does not change anything"):
        admin.datastore.find(collection, idempotency_key="k")  # type: ignore[call-overload]
    with pytest.raises(InvalidArgumentError, match="visible ASCII"):
        admin.datastore.insert(collection, {"a": 1}, idempotency_key="has space")


# --- with_raw_response ---------------------------------------------------------------------

def test_raw_response_gives_status_headers_request_id_and_the_parsed_result(
        admin: Client, collection: str) -> None:
    stored = admin.datastore.insert(collection, {"name": "ada"})
    raw = admin.with_raw_response.datastore.get(collection, stored["id"])
    assert isinstance(raw, RawResponse)
    assert raw.status_code == 200 and raw.attempts == 1 and raw.elapsed > 0
    assert raw.request_id and raw.headers["X-Request-Id"] == raw.request_id
    assert raw.headers["content-type"].startswith("application/json")
    assert raw.parsed == stored == raw.parse()


async def test_raw_response_on_the_async_client_and_a_view(async_admin: AsyncClient) -> None:
    raw = await async_admin.with_raw_response.admin.permissions()
    assert raw.status_code == 200 and raw.parsed.is_admin


def test_raw_response_refuses_methods_that_stream_or_page(admin: Client) -> None:
    with pytest.raises(AttributeError, match="no raw form"):
        admin.with_raw_response.datastore.iter_find("x")
    with pytest.raises(AttributeError):
        admin.with_raw_response.datastore.no_such_method  # noqa: B018


def test_raw_response_says_why_a_transaction_has_no_raw_form(admin: Client) -> None:
    with pytest.raises(AttributeError, match=r"opens a transaction.*tx\.status\(\)") as info:
        admin.with_raw_response.datastore.transaction()
    assert "stream" not in str(info.value)  # not the generic, misleading reason


def test_a_partial_timeout_keeps_the_other_phases_as_configured() -> None:
    with Client(base_url="https://127.0.0.1:9", timeout={"connect": 2, "read": 40}) as c:
        assert c.with_options(timeout={"read": 3})._executor.call_options.timeouts == \
            (2.0, 3.0, 30.0, 10.0)
        with pytest.raises(ConfigurationError, match="reed"):
            c.with_options(timeout={"reed": 3})
