"""DataBus end to end: DataStore writes → events, polled with claims or streamed over WSS."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ekoclient import AsyncClient, Authenticator, Client, where
from ekoclient.errors import AuthenticationError, EkoError, NotFoundError
from mock_server.testing import ServerProcess
from tests.sdk_helpers import metric


def unique(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


def new_collection(admin: Client, prefix: str = "bus") -> str:
    name = unique(prefix)
    admin.datastore.create_collection(name)
    return name


def test_writes_produce_events_filtered_by_pattern_and_record(admin: Client) -> None:
    prefix = unique("feed")
    coll, other = f"{prefix}_x", unique("elsewhere")
    for name in (coll, other):
        admin.datastore.create_collection(name)
    bus = admin.databus
    sub = unique("s")
    bus.subscribe(sub, collections=[f"{prefix}_*"], filter=where("team").eq("a"))
    a = admin.datastore.insert(coll, {"team": "a", "n": 1})
    admin.datastore.insert(coll, {"team": "b", "n": 2})  # filtered out
    admin.datastore.insert(other, {"team": "a", "n": 3})  # collection not selected

    def drain(expected: int) -> list[Any]:
        result = bus.poll(sub, limit=10)
        assert len(result.events) == expected and not result.has_more
        bus.ack(sub, [e.key for e in result.events])
        return result.events

    [ins] = drain(1)
    assert (ins.collection, ins.record_id, ins.operation) == (coll, a["id"], "insert")
    assert ins.content is not None and ins.content["n"] == 1
    admin.datastore.update(coll, a["id"], {"n": 10})
    [upd] = drain(1)
    assert upd.operation == "update" and upd.content is not None and upd.content["n"] == 10
    admin.datastore.delete(coll, a["id"])
    [dele] = drain(1)
    assert (dele.operation, dele.content) == ("delete", None)
    batch = admin.datastore.batch_insert(coll, [{"team": "a"}, {"team": "a"}, {"team": "b"}])
    first = bus.poll(sub, limit=1)
    assert first.has_more and len(first.events) == 1
    rest = bus.poll(sub, limit=10)
    got = {e.record_id for e in first.events + rest.events}
    assert got < set(batch.successful) and len(got) == 2
    bus.ack(sub, first.events + rest.events)
    admin.datastore.batch_delete(coll, list(got))
    assert {e.operation for e in bus.poll(sub, limit=10).events} == {"delete"}
    assert bus.size(sub) == 2


def test_claims_come_back_after_expiry_renew_extends_ack_removes(admin: Client) -> None:
    coll = new_collection(admin)
    bus, sub = admin.databus, unique("claims")
    bus.subscribe(sub, collections=[coll])
    ids = [admin.datastore.insert(coll, {"i": i})["id"] for i in range(2)]
    polled = bus.poll(sub, claim_ttl=1, limit=10).events
    assert sorted(e.record_id for e in polled) == sorted(ids)
    assert bus.poll(sub).events == []  # both claimed
    assert bus.renew(sub, [polled[0].key], claim_ttl=30) == [polled[0].key]
    assert len(bus.peek(sub)) == 2 and bus.size(sub) == 2
    time.sleep(1.2)
    [back] = bus.poll(sub).events  # the unrenewed claim lapsed
    assert back.key == polled[1].key
    assert bus.ack(sub, [polled[0].key, back.key, "no-such-key"]) == [polled[0].key, back.key]
    assert bus.size(sub) == 0
    assert [s.name for s in bus.list_subscriptions() if s.name == sub] == [sub]
    assert bus.get_subscription(sub).collections == [coll]
    bus.unsubscribe(sub)
    with pytest.raises(NotFoundError):
        bus.get_subscription(sub)


def test_field_rules_of_the_subscriber_apply_to_polls_and_pushes(admin: Client) -> None:
    coll = new_collection(admin, "hidden")
    key = admin.admin.create_key("reader", collection_permissions={
        coll: {"read": True, "exclude_fields": ["ssn"]}, "bus:*": ["read", "write"]}).api_key
    view = Authenticator(admin).using_credentials(key)
    polled, pushed = unique("polled"), unique("pushed")
    for sub in (polled, pushed):
        view.databus.subscribe(sub, collections=[coll])
    rec = admin.datastore.insert(coll, {"name": "x", "ssn": "123-45-6789"})
    [event] = view.databus.poll(polled).events
    assert event.content == {"id": rec["id"], "name": "x"}
    with view.databus.stream(pushed) as stream:
        streamed = next(stream)
        streamed.ack()
    assert streamed.content == {"id": rec["id"], "name": "x"}
    assert view.databus.size(pushed) == 0


def test_subscription_names_belong_to_their_key(admin: Client) -> None:
    coll = new_collection(admin)
    sub = unique("mine")
    admin.databus.subscribe(sub, collections=[coll])
    admin.datastore.insert(coll, {"v": 1})
    other = Authenticator(admin).using_credentials(admin.admin.create_key(
        "other", collection_permissions={coll: ["read"], "bus:*": ["read", "write"]}).api_key)
    for call in (lambda: other.databus.poll(sub), lambda: other.databus.ack(sub, ["k"]),
                 lambda: other.databus.unsubscribe(sub), lambda: other.databus.size(sub)):
        with pytest.raises(NotFoundError):  # exactly as for a name nobody has
            call()
    with pytest.raises(NotFoundError), other.databus.stream(sub) as stream:
        next(stream)
    other.databus.subscribe(sub, collections=[coll])  # its own, under the same name
    assert other.databus.size(sub) == 0
    assert admin.databus.size(sub) == 1  # untouched


def test_stream_of_an_unknown_subscription_raises_not_found(admin: Client) -> None:
    with pytest.raises(NotFoundError), admin.databus.stream(unique("nope")) as stream:
        next(stream)


def test_revoking_the_key_ends_the_stream_with_authentication_error(admin: Client) -> None:
    coll = new_collection(admin)
    new = admin.admin.create_key("doomed", collection_permissions={
        coll: ["read"], "bus:*": ["read", "write"]})
    view = Authenticator(admin).using_credentials(new.api_key)
    sub = unique("doomed")
    view.databus.subscribe(sub, collections=[coll])
    admin.datastore.insert(coll, {"v": 1})
    with view.databus.stream(sub, auto_ack=True) as stream:
        next(stream)
        admin.admin.delete_key(new.key_id)
        started = time.monotonic()
        with pytest.raises(AuthenticationError, match="revoked"):
            next(stream)
    assert time.monotonic() - started < 10


async def test_an_expiring_token_is_replaced_without_user_code(
        ekodb_server_factory: Any) -> None:
    server = ekodb_server_factory(token_ttl=2)
    async with AsyncClient(base_url=server.url, api_key=server.admin_key,
                           ca_bundle=server.ca_bundle) as client:
        coll, sub = unique("ttl"), unique("ttl")
        await client.datastore.create_collection(coll)
        await client.databus.subscribe(sub, collections=[coll])
        started = time.monotonic()
        written: set[str] = set()
        received: set[str] = set()

        async def write() -> None:
            for i in range(12):
                written.add((await client.datastore.insert(coll, {"i": i}))["id"])
                await asyncio.sleep(0.4)

        writer = asyncio.create_task(write())
        async with client.databus.stream(sub, auto_ack=True) as stream:
            async for event in stream:
                received.add(event.record_id)
                if len(received) == 12:  # the writer writes 12 records
                    break
        await writer
        assert received == written
        # the server closes a socket whose token expired, so lasting over two token lifetimes
        # took fresh tokens (at least 3 exchanges), all without user code
        assert time.monotonic() - started > 4
        assert metric(server, "ekodb_token_exchanges_total", result="ok") >= 3


def test_stream_survives_a_server_crash_and_restart_while_writing(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data") as proc:
        assert proc.admin_key is not None and proc.ca_bundle is not None
        opts: dict[str, Any] = {"base_url": proc.url, "api_key": proc.admin_key,
                                "ca_bundle": str(proc.ca_bundle),
                                "retry": {"max_attempts": 50, "maximum": 0.3,
                                          "max_elapsed": 30}}
        with Client(**opts) as writer_client, Client(**opts) as consumer:
            coll, sub = unique("crash"), unique("crash")
            writer_client.datastore.create_collection(coll)
            consumer.databus.subscribe(sub, collections=[coll])
            written: list[str] = []
            errors: list[BaseException] = []

            def write() -> None:
                for i in range(60):
                    try:
                        written.append(writer_client.datastore.insert(coll, {"i": i})["id"])
                    except EkoError as exc:  # only if the whole retry budget ran out
                        errors.append(exc)
                    time.sleep(0.03)

            writer = threading.Thread(target=write)
            writer.start()
            seen: dict[str, int] = {}
            acked: list[str] = []
            restarted = False
            deadline = time.monotonic() + 60
            with consumer.databus.stream(sub, claim_ttl=2, backoff_max=0.5) as stream:
                for event in stream:
                    seen[event.record_id] = seen.get(event.record_id, 0) + 1
                    event.ack()
                    acked.append(event.key)
                    if len(seen) == 15 and not restarted:
                        restarted = True
                        proc.kill()  # SIGKILL: no goodbye, claims stay in the database
                        proc.start()
                    if len(seen) == 60:  # the writer writes 60 records
                        break
                    assert time.monotonic() < deadline, "stream did not catch up in time"
            writer.join()
            assert restarted and not errors
            assert set(written) <= set(seen)  # nothing lost
            assert len(acked) == len(set(acked))  # nothing handed out (and acked) twice
            time.sleep(0.5)
            assert consumer.databus.size(sub) == 0  # every ack reached the server
