"""Idle workers: long polls held by the server, consume() on queues and DataBus.

Against the session's reference server. Issue 16 §12: two idle ``consume()`` workers polling
once a second spent a default key's rate limit on nothing.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from ekoclient import AsyncClient, Client
from ekoclient.models import Event, Message


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def _later(seconds: float, action: Any) -> threading.Timer:
    timer = threading.Timer(seconds, action)
    timer.start()
    return timer


def test_a_long_poll_answers_when_a_message_arrives(admin: Client) -> None:
    q = _name("lp")
    _later(0.4, lambda: admin.queue.send(q, "hello"))
    started = time.monotonic()
    got = admin.queue.poll(q, wait=10)
    assert [m.payload for m in got] == ["hello"]
    assert 0.3 < time.monotonic() - started < 3  # held, then answered on arrival


def test_an_empty_long_poll_ends_with_its_wait(admin: Client) -> None:
    started = time.monotonic()
    assert admin.queue.poll(_name("lp"), wait=0.6) == []
    assert 0.55 < time.monotonic() - started < 2.5


def test_an_idle_consumer_makes_one_request_per_wait_and_still_reacts_at_once(
        admin: Client) -> None:
    q = _name("idle")
    handled: list[tuple[Any, float]] = []
    stop = threading.Event()
    sent_at: list[float] = []

    def handler(m: Message) -> None:
        handled.append((m.payload, time.monotonic()))
        stop.set()

    def send() -> None:
        sent_at.append(time.monotonic())
        admin.queue.send(q, "job")

    _later(1.5, send)
    # poll_interval 0.05 made the old loop poll 20 times a second while idle
    stats = admin.queue.consume(q, handler, stop_event=stop, poll_interval=0.05, wait=5)
    assert [p for p, _ in handled] == ["job"] and stats.acked == 1
    assert handled[0][1] - sent_at[0] < 1.0  # a held poll answers on arrival
    assert stats.polls <= 3


def test_stopping_an_idle_consumer_does_not_wait_for_its_held_poll(admin: Client) -> None:
    stop = threading.Event()
    _later(0.3, stop.set)
    started = time.monotonic()
    stats = admin.queue.consume(_name("idle"), print, stop_event=stop, wait=10)
    assert time.monotonic() - started < 1.5 and stats.acked == 0


def test_databus_poll_waits_for_a_change(admin: Client) -> None:
    coll, sub = _name("lpc"), _name("lps")
    admin.datastore.create_collection(coll)
    admin.databus.subscribe(sub, collections=[coll])
    _later(0.4, lambda: admin.datastore.insert(coll, {"n": 1}))
    started = time.monotonic()
    result = admin.databus.poll(sub, wait=10)
    assert [e.content["n"] for e in result.events if e.content] == [1]
    assert time.monotonic() - started < 3


def test_databus_consume_handles_and_acks_every_event(admin: Client) -> None:
    coll, sub = _name("bc"), _name("bcs")
    admin.datastore.create_collection(coll)
    admin.databus.subscribe(sub, collections=[coll])
    admin.datastore.batch_insert(coll, [{"n": i} for i in range(6)])
    seen: list[int] = []

    def handler(event: Event) -> None:
        assert event.content is not None
        seen.append(event.content["n"])

    stats = admin.databus.consume(sub, handler, concurrency=3, max_messages=6, wait=1)
    assert sorted(seen) == list(range(6)) and stats.acked == 6
    assert admin.databus.size(sub) == 0


async def test_async_databus_consume_stops_on_its_event(async_admin: AsyncClient,
                                                        admin: Client) -> None:
    import asyncio

    coll, sub = _name("abc"), _name("abcs")
    admin.datastore.create_collection(coll)
    admin.databus.subscribe(sub, collections=[coll])
    stop = asyncio.Event()
    seen: list[int] = []

    async def handler(event: Event) -> None:
        assert event.content is not None
        seen.append(event.content["n"])
        stop.set()

    asyncio.get_running_loop().call_later(
        0.3, lambda: threading.Thread(
            target=admin.datastore.insert, args=(coll, {"n": 7})).start())
    stats = await asyncio.wait_for(
        async_admin.databus.consume(sub, handler, stop_event=stop, wait=5), 10)
    assert seen == [7] and stats.acked == 1


def test_a_nacked_stream_event_is_offered_again_in_the_same_stream(admin: Client) -> None:
    coll, sub = _name("nk"), _name("nks")
    admin.datastore.create_collection(coll)
    admin.databus.subscribe(sub, collections=[coll])
    admin.datastore.insert(coll, {"n": 1})
    started = time.monotonic()
    with admin.databus.stream(sub, claim_ttl=60) as stream:
        first = next(stream)
        first.nack()  # not processed: give it back (its claim would last 60 s)
        again = next(stream)
        assert again.key == first.key
        again.ack()
    assert time.monotonic() - started < 10  # offered again at once, not after the claim
    assert admin.databus.size(sub) == 0


async def test_async_nack_then_auto_ack_of_the_redelivery(async_admin: AsyncClient,
                                                          admin: Client) -> None:
    coll, sub = _name("ank"), _name("anks")
    admin.datastore.create_collection(coll)
    admin.databus.subscribe(sub, collections=[coll])
    admin.datastore.insert(coll, {"n": 2})
    keys = []
    async with async_admin.databus.stream(sub, claim_ttl=60, auto_ack=True) as stream:
        async for event in stream:
            keys.append(event.key)
            if len(keys) == 1:
                await event.nack()  # auto_ack must not ack it when the loop moves on
            else:
                break
    assert keys[0] == keys[1]
    assert admin.databus.size(sub) == 0  # the redelivery was auto-acked at the close
