"""The DataBus stream's protocol core (sans-I/O): every decision, without a socket."""

from __future__ import annotations

import json

import pytest

from ekoclient._stream import StreamCore, stream_settings, ws_url
from ekoclient.errors import (
    AuthenticationError,
    ConfigurationError,
    NotFoundError,
    PermissionDeniedError,
    TransportError,
)


def core(**kw: object) -> StreamCore:
    return StreamCore(stream_settings("subs", **kw), "eko_test_AbCd…", rng=lambda: 1.0)  # type: ignore[arg-type]


def event(key: str) -> str:
    return json.dumps({"op": "event", "subscription": "subs", "event": {
        "key": key, "collection": "c", "record_id": "r", "operation": "insert",
        "content": {"id": "r"}, "timestamp": "2024-01-01T00:00:00Z"}})


def ops(frames: list[str]) -> list[dict[str, object]]:
    return [json.loads(f) for f in frames]


def test_connecting_subscribes_and_resends_unconfirmed_acks() -> None:
    c = core(claim_ttl=12)
    assert ops(c.opened(0.0)) == [{"op": "subscribe", "subscription": "subs", "claim_ttl": 12}]
    c.receive(event("k1"), 0.0)
    assert ops(c.ack(["k1"])) == [{"op": "ack", "keys": ["k1"]}]
    c.closed(1006, "", 1.0)  # dropped before the server confirmed the ack
    assert ops(c.opened(2.0))[1] == {"op": "ack", "keys": ["k1"]}
    c.receive(json.dumps({"op": "acked", "keys": ["k1"]}), 2.0)
    assert len(c.opened(3.0)) == 1  # confirmed: not sent again


def test_events_are_yielded_once_and_acked_ones_are_reacked_not_yielded() -> None:
    c = core()
    c.opened(0.0)
    assert [e["key"] for e in c.receive(event("k1"), 0.0)] == ["k1"]
    assert c.receive(event("k1"), 1.0) == []  # re-offered while the user holds it
    c.ack(["k1"])
    assert c.receive(event("k1"), 2.0) == []  # our ack got lost: resend, never re-yield
    assert ops(c.take_outbox()) == [{"op": "ack", "keys": ["k1"]}]
    assert c.ack(["k1"]) == []  # acking twice sends nothing


def test_backoff_doubles_with_jitter_caps_and_resets_after_a_stable_connection() -> None:
    c = core(backoff_initial=0.1, backoff_max=1.0)
    delays = [c.failed(float(i)).delay for i in range(6)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    jittered = StreamCore(stream_settings("s"), "h", rng=lambda: 0.0)
    assert jittered.failed(0.0).delay == pytest.approx(0.05)  # half of the ceiling at least
    c.opened(10.0)
    c.receive(json.dumps({"op": "subscribed", "subscription": "subs"}), 10.0)
    assert c.closed(1012, "restart", 20.0).delay == pytest.approx(0.1)


def test_a_server_that_accepts_then_closes_still_backs_off() -> None:
    c = core(backoff_initial=0.1, backoff_max=10.0)
    delays = []
    for i in range(4):
        c.opened(float(i))
        c.receive(json.dumps({"op": "subscribed", "subscription": "subs"}), float(i))
        delays.append(c.closed(1011, "", float(i) + 0.01).delay)
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8])


def test_max_reconnects_gives_up_with_a_transport_error() -> None:
    c = core(max_reconnects=2)
    c.failed(0.0)
    c.failed(0.0)
    with pytest.raises(TransportError, match="gave up after 2"):
        c.failed(0.0)


def test_4401_refreshes_the_token_once_then_raises() -> None:
    c = core()
    c.opened(0.0)
    first = c.closed(4401, "invalid or expired token", 1.0)
    assert first.refresh is True
    c.opened(1.0)
    with pytest.raises(AuthenticationError, match="a new token did not help") as err:
        c.closed(4401, "invalid or expired token", 1.5)
    assert "eko_test_AbCd" in str(err.value)


def test_4401_after_a_successful_resubscribe_is_refreshed_again() -> None:
    c = core()
    for t in (0.0, 10.0, 20.0):  # e.g. a short token lifetime, expiring again and again
        c.opened(t)
        c.receive(json.dumps({"op": "subscribed", "subscription": "subs"}), t)
        assert c.closed(4401, "expired", t + 5).refresh is True
    with pytest.raises(AuthenticationError):  # the refreshed token is refused at the door
        c.refused(401, 26.0)


def test_fatal_answers_raise_typed_errors() -> None:
    c = core()
    c.opened(0.0)
    with pytest.raises(NotFoundError):
        c.receive(json.dumps({"op": "error", "code": "not_found", "message": "no such",
                              "request": "subscribe", "subscription": "subs"}), 0.0)
    with pytest.raises(PermissionDeniedError):
        core().closed(4403, "client address not allowed", 0.0)
    with pytest.raises(PermissionDeniedError):
        core().refused(403, 0.0)
    # a non-fatal error (e.g. about an ack) is logged, the stream goes on
    assert c.receive(json.dumps({"op": "error", "code": "bad_request", "message": "x",
                                 "request": "ack"}), 0.0) == []
    assert c.receive("not json at all", 0.0) == []


def test_heartbeat_timing_and_dead_connections() -> None:
    c = core(ping_interval=5, idle_timeout=12)
    c.opened(0.0)
    assert c.wait_time(0.0) == pytest.approx(5.0)
    assert ops(c.timer(5.0)[0]) == [{"op": "ping"}]
    c.receive(json.dumps({"op": "heartbeat"}), 6.0)
    assert c.timer(7.0) == ([], False)
    assert c.timer(18.5)[1] is True  # nothing heard for idle_timeout: reconnect


def test_auto_ack_acks_the_previous_event_when_the_next_is_taken() -> None:
    c = core(auto_ack=True)
    c.opened(0.0)
    c.receive(event("k1"), 0.0)
    c.receive(event("k2"), 0.0)
    assert c.yielded("k1") == []
    assert ops(c.yielded("k2")) == [{"op": "ack", "keys": ["k1"]}]
    assert c.finish(processed=False) == []  # the loop failed on k2: let it come back
    assert ops(c.finish()) == [{"op": "ack", "keys": ["k2"]}]


def test_ws_url_and_insecure_refusal() -> None:
    assert ws_url("https://db.example:8443", False) == "wss://db.example:8443/api/ws"
    assert ws_url("http://127.0.0.1:80", False) == "ws://127.0.0.1:80/api/ws"
    with pytest.raises(ConfigurationError, match="refusing ws://"):
        ws_url("http://db.example", False)
    assert ws_url("http://db.example", True) == "ws://db.example/api/ws"


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigurationError):
        stream_settings("s", claim_ttl=0)
    with pytest.raises(ConfigurationError):
        stream_settings("s", ping_interval=10, idle_timeout=5)
