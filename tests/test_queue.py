"""Queue and DedupQueue through the SDK (SPEC §3), sync and async, against the reference server.

Claims use 1-2 s ttls so redelivery tests stay short. The crash test runs the server as a
subprocess and SIGKILLs it under load.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ekoclient import AsyncClient, Authenticator, Client
from ekoclient._call import Call
from ekoclient._consume import ConsumerCore
from ekoclient._services.queue import _ack, _poll, _renew
from ekoclient.errors import (
    EkoError,
    InvalidArgumentError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    ValidationError,
)
from ekoclient.models import AckResult, Message, RenewResult
from mock_server.testing import ServerProcess


def qname() -> str:
    return "q" + uuid.uuid4().hex[:12]


def stem(message_id: str) -> str:
    """The message part of an id (``<message>.<claim>.<tag>``): the same for every claim."""
    return message_id.split(".", 1)[0]


# ------------------------------------------------------------------------- endpoints


def test_round_trip_with_any_json_payload(admin: Client) -> None:
    q = qname()
    first = admin.queue.send(q, {"job": 1})
    ids = admin.queue.send_batch(q, ["two", None, [3]])
    assert len(ids) == 3 and isinstance(first, str)
    admin.queue.send(q, None)
    got = admin.queue.poll(q, limit=10)
    assert all(isinstance(m, Message) for m in got)
    assert Counter(map(repr, (m.payload for m in got))) == Counter(
        map(repr, [{"job": 1}, "two", None, [3], None]))
    assert (admin.queue.size(q), admin.queue.claim_count(q)) == (5, 5)
    result = admin.queue.ack(q, got)  # Messages or their ids
    assert sorted(result.acked) == sorted(m.id for m in got) and result.stale == []
    assert admin.queue.size(q) == 0


def test_claim_expiry_redelivers(admin: Client) -> None:
    q = qname()
    admin.queue.send(q, "work")
    (m,) = admin.queue.poll(q, claim_ttl=1)
    assert admin.queue.poll(q) == []
    time.sleep(1.1)
    (again,) = admin.queue.poll(q)
    assert again.payload == "work"
    assert admin.queue.ack(q, [m.id]).stale == [m.id]  # the old claim cannot ack the new one
    assert admin.queue.ack(q, [again]).acked == [again.id]


def test_renew_keeps_a_message_hidden_past_its_first_ttl(admin: Client) -> None:
    q = qname()
    admin.queue.send(q, "long job")
    (m,) = admin.queue.poll(q, claim_ttl=1)
    assert admin.queue.renew(q, [m], claim_ttl=2).renewed == [m.id]
    time.sleep(1.2)
    assert admin.queue.poll(q) == []
    assert admin.queue.renew(q, [m], claim_ttl=0).renewed == [m.id]  # give it back now
    assert [x.payload for x in admin.queue.poll(q)] == ["long job"]


def test_peek_unclaim_all_move_and_purge(admin: Client) -> None:
    q, dest = qname(), qname()
    admin.queue.send_batch(q, [1, 2, 3])
    admin.queue.poll(q, limit=1)
    assert sorted(m.payload for m in admin.queue.peek(q, limit=10)) == [1, 2, 3]
    assert admin.queue.move(q, dest) == 2
    assert admin.queue.unclaim_all(q) == 1
    assert admin.queue.move(q, dest) == 1
    assert (admin.queue.size(q), admin.queue.size(dest)) == (0, 3)
    assert admin.queue.purge(dest) == 3
    assert admin.queue.size(dest) == 0


def test_dedup_queue_collapses_identical_messages_between_polls(admin: Client) -> None:
    q = qname()
    for payload in ({"k": 1, "v": "x"}, {"v": "x", "k": 1}, {"k": 2}):
        admin.dedup_queue.send(q, payload)
    assert len(admin.dedup_queue.peek(q, limit=10)) == 3  # peek still shows the copies
    got = admin.dedup_queue.poll(q, limit=10)
    assert sorted(str(m.payload) for m in got) == sorted(str(p) for p in
                                                         ({"k": 1, "v": "x"}, {"k": 2}))
    admin.dedup_queue.ack(q, got)
    assert admin.dedup_queue.size(q) == 0
    admin.queue.send_batch(q, ["same", "same"])  # the plain queue of that name keeps both
    assert len(admin.queue.poll(q, limit=10)) == 2


def test_scoped_read_key_looks_but_cannot_consume_or_send(admin: Client) -> None:
    q = qname()
    key = admin.admin.create_key("queue-reader",
                                 collection_permissions={f"queue:{q}": ["read"]}).api_key
    reader = Authenticator(admin).using_credentials(key)
    admin.queue.send(q, "job")
    for call in (lambda: reader.queue.send(q, "nope"), lambda: reader.queue.purge(q),
                 lambda: reader.queue.poll(q), lambda: reader.queue.unclaim_all(q),
                 lambda: reader.dedup_queue.peek(q)):
        with pytest.raises(PermissionDeniedError):
            call()
    (peeked,) = reader.queue.peek(q)
    assert peeked.payload == "job" and reader.queue.size(q) == 1
    worker = Authenticator(admin).using_credentials(admin.admin.create_key(
        "queue-worker", collection_permissions={f"queue:{q}": ["read", "write"]}).api_key)
    (m,) = worker.queue.poll(q)
    assert worker.queue.ack(q, [m]).acked == [m.id]


def test_bad_inputs_raise_clear_errors_and_change_nothing(admin: Client) -> None:
    q = qname()
    admin.queue.send(q, "keep")
    with pytest.raises(PayloadTooLargeError):
        admin.queue.send(q, "x" * (256 * 1024 + 1))
    with pytest.raises(ValidationError) as unknown:
        admin.queue.ack(q, ["not-an-id"])
    assert unknown.value.code == "unknown_id"
    with pytest.raises(ValidationError):
        admin.queue.poll(q, claim_ttl=-1)
    with pytest.raises(ValidationError):
        admin.queue.peek(q, limit=0)
    with pytest.raises(InvalidArgumentError):
        admin.queue.ack(q, "a-single-id")
    with pytest.raises(InvalidArgumentError):
        admin.queue.send(q, float("nan"))
    with pytest.raises(InvalidArgumentError):
        admin.queue.send("..", 1)
    assert (admin.queue.size(q), admin.queue.claim_count(q)) == (1, 0)


async def test_async_client_has_the_same_surface(async_admin: AsyncClient) -> None:
    q = qname()
    await async_admin.dedup_queue.send_batch(q, ["a", "a", "b"])
    assert await async_admin.dedup_queue.size(q) == 3
    got = await async_admin.dedup_queue.poll(q, limit=10)
    assert sorted(m.payload for m in got) == ["a", "b"]
    assert (await async_admin.dedup_queue.renew(q, got, claim_ttl=5)).stale == []
    assert len((await async_admin.dedup_queue.ack(q, got)).acked) == 2
    assert await async_admin.dedup_queue.claim_count(q) == 0


# ------------------------------------------------------------------------- competing consumers


class Tracker:
    """Counts how often each payload is processed and how often two handlers overlap."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active: set[Any] = set()
        self.seen: Counter[Any] = Counter()
        self.overlaps = 0

    def enter(self, payload: Any) -> None:
        with self.lock:
            self.overlaps += payload in self.active
            self.active.add(payload)
            self.seen[payload] += 1

    def leave(self, payload: Any) -> None:
        with self.lock:
            self.active.discard(payload)


def test_competing_consumer_threads_never_share_a_valid_claim(admin: Client) -> None:
    q = qname()
    admin.queue.send_batch(q, list(range(120)))
    tracker = Tracker()

    def worker() -> None:
        while batch := admin.queue.poll(q, claim_ttl=10, limit=7):
            for m in batch:
                tracker.enter(m.payload)
                time.sleep(0.001)
                tracker.leave(m.payload)
            admin.queue.ack(q, batch)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert tracker.overlaps == 0
    assert tracker.seen == Counter(range(120))


async def test_competing_consumer_tasks_never_share_a_valid_claim(
        async_admin: AsyncClient) -> None:
    q = qname()
    await async_admin.queue.send_batch(q, list(range(80)))
    tracker = Tracker()

    async def worker() -> None:
        while batch := await async_admin.queue.poll(q, claim_ttl=10, limit=5):
            for m in batch:
                tracker.enter(m.payload)
                await asyncio.sleep(0.001)
                tracker.leave(m.payload)
            await async_admin.queue.ack(q, batch)

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(4))), 30)
    assert tracker.overlaps == 0
    assert tracker.seen == Counter(range(80))


# ------------------------------------------------------------------------- consume()


def test_consume_acks_every_message_it_handles(admin: Client) -> None:
    q = qname()
    admin.queue.send_batch(q, list(range(25)))
    tracker = Tracker()

    def handler(m: Message) -> None:
        tracker.enter(m.payload)
        time.sleep(0.005)
        tracker.leave(m.payload)

    stats = admin.queue.consume(q, handler, concurrency=4, limit=5, max_messages=25,
                                poll_interval=0.05)
    assert (stats.acked, stats.failed, stats.lost) == (25, 0, 0)
    assert tracker.seen == Counter(range(25)) and tracker.overlaps == 0
    assert admin.queue.size(q) == 0


def test_consume_leaves_a_failed_message_to_be_redelivered(admin: Client,
                                                           caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    q = qname()
    admin.queue.send(q, "flaky")
    calls: list[float] = []

    def handler(m: Message) -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("boom")

    with caplog.at_level("WARNING", logger="ekoclient.queue"):
        stats = admin.queue.consume(q, handler, claim_ttl=1, max_messages=2,
                                    poll_interval=0.05)
    assert (stats.acked, stats.failed) == (1, 1)
    assert calls[1] - calls[0] >= 0.9  # came back only when the claim expired
    assert "handler failed" in caplog.text and "boom" in caplog.text
    assert admin.queue.size(q) == 0


def test_consume_renews_claims_while_a_slow_handler_runs(admin: Client) -> None:
    q = qname()
    admin.queue.send(q, "slow")
    seen_by_other: list[list[Message]] = []

    def handler(m: Message) -> None:
        for _ in range(2):  # 2.4 s in all: twice the claim ttl
            time.sleep(1.2)
            seen_by_other.append(admin.queue.poll(q, claim_ttl=30))

    stats = admin.queue.consume(q, handler, claim_ttl=1, max_messages=1, poll_interval=0.05)
    assert seen_by_other == [[], []]
    assert (stats.acked, stats.lost) == (1, 0)
    assert admin.queue.size(q) == 0


def test_consume_stops_on_stop_event_after_finishing_running_handlers(admin: Client) -> None:
    q = qname()
    admin.queue.send_batch(q, [1, 2, 3])
    stop = threading.Event()
    handled: list[Any] = []

    def handler(m: Message) -> None:
        handled.append(m.payload)
        stop.set()  # asked to stop while this message is still being handled
        time.sleep(0.1)

    stats = admin.queue.consume(q, handler, limit=1, stop_event=stop, poll_interval=0.05)
    assert len(handled) == 1 and stats.acked == 1
    assert admin.queue.size(q) == 2 and admin.queue.claim_count(q) == 0

    idle = threading.Thread(target=admin.queue.consume, args=(qname(), handler),
                            kwargs={"stop_event": (stop2 := threading.Event()),
                                    "poll_interval": 5})
    idle.start()
    time.sleep(0.2)
    started = time.monotonic()
    stop2.set()
    idle.join(5)
    assert not idle.is_alive() and time.monotonic() - started < 1


def test_consume_refuses_bad_settings(admin: Client) -> None:
    bads: list[dict[str, Any]] = [{"claim_ttl": 0}, {"concurrency": 0}, {"limit": -1},
                                  {"poll_interval": -1}]
    for bad in bads:
        with pytest.raises(InvalidArgumentError):
            admin.queue.consume(qname(), print, **bad)


async def test_async_consume_acks_redelivers_and_stops(async_admin: AsyncClient) -> None:
    q = qname()
    await async_admin.dedup_queue.send_batch(q, ["ok-1", "ok-2", "bad"])
    stop = asyncio.Event()
    attempts: Counter[str] = Counter()

    async def handler(m: Message) -> None:
        attempts[m.payload] += 1
        await asyncio.sleep(0.01)
        if m.payload == "bad" and attempts["bad"] == 1:
            raise ValueError("first try fails")
        if attempts["bad"] == 2:
            stop.set()

    stats = await asyncio.wait_for(
        async_admin.dedup_queue.consume(q, handler, claim_ttl=1, concurrency=2,
                                        stop_event=stop, poll_interval=0.05), 10)
    assert attempts == {"ok-1": 1, "ok-2": 1, "bad": 2}
    assert (stats.acked, stats.failed) == (3, 1)
    assert await async_admin.dedup_queue.size(q) == 0


async def test_async_consume_runs_plain_handlers_off_the_event_loop(
        async_admin: AsyncClient) -> None:
    q = qname()
    await async_admin.queue.send_batch(q, [1, 2])
    threads: set[int] = set()

    def handler(m: Message) -> None:
        threads.add(threading.get_ident())

    stats = await async_admin.queue.consume(q, handler, max_messages=2, poll_interval=0.05)
    assert stats.acked == 2 and threading.get_ident() not in threads


# ------------------------------------------------------------------------- crash


def test_sigkill_under_load_loses_no_sent_message_and_revives_no_acked_one(
        tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        assert server.admin_key and server.ca_bundle
        client = Client(base_url=server.url, api_key=server.admin_key,
                        ca_bundle=str(server.ca_bundle), timeout={"connect": 2, "read": 10},
                        retry={"max_attempts": 50, "initial": 0.05, "maximum": 0.3,
                               "max_elapsed": 30, "budget_capacity": 10_000})
        q = qname()
        lock = threading.Lock()
        sent: set[str] = set()
        delivered: set[str] = set()
        acked: set[str] = set()
        sent_after_restart = 0
        restarted = threading.Event()
        stop = threading.Event()

        def producer(tag: int) -> None:
            nonlocal sent_after_restart
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    if i % 2:
                        ids = [client.queue.send(q, {"p": tag, "i": i})]
                    else:
                        ids = client.queue.send_batch(q, [{"p": tag, "i": i, "j": j}
                                                          for j in range(5)])
                except EkoError:
                    time.sleep(0.05)  # outcome unknown: neither counted nor required
                    continue
                with lock:
                    sent.update(map(stem, ids))
                    sent_after_restart += restarted.is_set()

        def consumer() -> None:
            while not stop.is_set():
                try:
                    batch = client.queue.poll(q, claim_ttl=1, limit=20)
                    with lock:
                        delivered.update(stem(m.id) for m in batch)
                    result = client.queue.ack(q, batch) if batch else None
                except EkoError:
                    time.sleep(0.05)
                    continue
                if result is not None:
                    with lock:
                        acked.update(map(stem, result.acked))

        threads = [threading.Thread(target=producer, args=(n,)) for n in range(2)]
        threads.append(threading.Thread(target=consumer))
        for t in threads:
            t.start()
        time.sleep(1.0)
        server.kill(signal.SIGKILL)
        server.start()
        restarted.set()
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)

        time.sleep(1.1)  # every claim from before the drain has expired
        drained: list[str] = []
        while batch := client.queue.poll(q, claim_ttl=30, limit=500):
            drained.extend(stem(m.id) for m in batch)
            client.queue.ack(q, batch)
        client.close()

        assert sent and acked and sent_after_restart > 0  # the load really ran across it
        assert sent <= delivered | set(drained)  # every acknowledged send is delivered
        assert not acked & set(drained)  # no acked message comes back
        assert len(drained) == len(set(drained))
    finally:
        server.stop()


# ------------------------------------------------------------------------- consume core (no I/O)


def _core(**overrides: Any) -> ConsumerCore:
    settings: dict[str, Any] = {"claim_ttl": 3.0, "limit": 10, "concurrency": 2,
                                "poll_interval": 1.0, "max_messages": None}
    settings.update(overrides)
    return ConsumerCore(poll=lambda n, wait: _poll("/api/queue", "q", limit=n, wait=wait),
                        ack=lambda ids: _ack("/api/queue", "q", ids),
                        renew=lambda ids: _renew("/api/queue", "q", ids), queue="q", **settings)


def _limit(call: Call[Any] | None) -> Any:
    assert call is not None and call.params is not None
    return call.params["limit"]


def _wait(call: Call[Any] | None) -> Any:
    assert call is not None and call.params is not None
    return call.params.get("wait")


def test_core_polls_only_for_free_slots_and_long_polls_once_drained() -> None:
    core = _core(wait=5.0)
    first = core.poll_call(0.0)
    assert _limit(first) == 2 and _wait(first) is None  # concurrency bounds the claim
    assert core.poll_call(0.0) is None  # one poll in flight at a time
    core.polled([Message(id="a", payload=1)], 0.0)
    held = core.poll_call(0.0)  # short answer: drained, so a long poll, sent at once
    assert _limit(held) == 1 and _wait(held) == 5.0
    core.polled([], 5.0)  # the server held it 5 s: hold the next one at once too
    assert _wait(core.poll_call(5.0)) == 5.0


def test_core_backs_off_when_idle_polls_come_back_at_once() -> None:
    """Without long polls (wait=0), or from a server that answers them at once, an idle
    worker's polls thin out, doubling up to 30 s: two idle workers no longer spend a key's
    rate limit by themselves."""
    core = _core(wait=0.0, concurrency=1)
    times = []
    now = 0.0
    for _ in range(8):
        call = None
        while call is None:
            call = core.poll_call(now)
            now += 0.25 if call is None else 0.0
        times.append(now)
        core.polled([], now)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    fake = _core(wait=5.0, concurrency=1)  # long polls asked for, answered at once
    fake.poll_call(0.0)
    fake.polled([], 0.0)
    fake.poll_call(0.0)
    fake.polled([], 0.1)
    assert fake.poll_call(0.5) is None and fake.poll_call(1.1) is not None


def test_core_waits_out_a_429_as_the_server_asks() -> None:
    core = _core()
    core.poll_call(0.0)
    core.poll_failed(RateLimitError("slow down", status=429, code="rate_limited",
                                    request_id=None, retry_after=7.0), 0.0)
    assert core.poll_call(6.9) is None and core.poll_call(7.0) is not None


def test_core_renews_running_messages_every_third_of_the_ttl() -> None:
    core = _core()
    core.poll_call(0.0)
    core.polled([Message(id="a", payload=1), Message(id="b", payload=2)], 0.0)
    assert core.renew_call(0.9) is None
    assert core.wait_time(0.9) == pytest.approx(0.1)
    call = core.renew_call(1.0)
    assert call is not None and isinstance(call.content, bytes)
    assert json.loads(call.content)["ids"] == ["a", "b"]
    core.renewed(RenewResult(renewed=["a"], stale=["b"]))
    core.finished("a", None)
    core.finished("b", None)
    pending = core.ack_call()
    assert pending is not None and pending[0] == ["a", "b"]
    core.acked(AckResult(acked=["a"], stale=["b"]))
    assert (core.stats.acked, core.stats.lost) == (1, 1)  # b's lost claim counted once


def test_core_stops_after_max_messages_and_raises_fatal_poll_errors() -> None:
    core = _core(max_messages=1)
    core.poll_call(0.0)
    core.polled([Message(id="a", payload=1)], 0.0)
    core.finished("a", RuntimeError("x"))
    assert core.poll_call(5.0) is None and core.done
    other = _core()
    other.poll_call(0.0)
    other.poll_failed(ServerError("down", status=503, code="x", request_id=None), 0.0)
    assert other.poll_call(0.5) is None  # transient: try again after poll_interval
    with pytest.raises(PermissionDeniedError):
        other.poll_failed(PermissionDeniedError("no", status=403, code="forbidden",
                                                request_id=None), 0.0)
