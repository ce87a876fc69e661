"""Retry policy: which failures are retried, how long it waits, and when it gives up."""

from __future__ import annotations

import email.utils
import math
import time

import pytest

from ekoclient import AsyncClient, Client
from ekoclient._retry import RetryBudget, parse_retry_after
from ekoclient.errors import RateLimitError, ServerError, TransportError, ValidationError

from .fakes import Script, ok, reset, status

URL = "https://127.0.0.1:9"


def client(script: Script, **retry: float) -> Client:
    options = {"max_attempts": 5, "initial": 0.01, "maximum": 0.05, **retry}
    return Client(base_url=URL, api_key="eko_test_" + "k" * 40, transport=script.transport(),
                  retry=options)


def test_connection_reset_on_post_is_retried_with_the_same_idempotency_key() -> None:
    script = Script([reset, reset, ok({"id": "r1", "name": "a"})])
    with client(script) as c:
        record = c.datastore.insert("users", {"name": "a"})
    assert record == {"id": "r1", "name": "a"}
    keys = {r.headers["Idempotency-Key"] for r in script.requests}
    assert len(script.requests) == 3
    assert len(keys) == 1 and len(keys.pop()) >= 16


def test_each_write_gets_its_own_idempotency_key() -> None:
    script = Script()
    with client(script) as c:
        c.datastore.insert("users", {"n": 1})
        c.datastore.insert("users", {"n": 2})
    assert script.requests[0].headers["Idempotency-Key"] != \
        script.requests[1].headers["Idempotency-Key"]


def test_reads_carry_no_idempotency_key() -> None:
    script = Script([ok({"id": "x"})])
    with client(script) as c:
        c.datastore.get("users", "x")
    assert "Idempotency-Key" not in script.requests[0].headers


def test_retry_after_seconds_is_waited() -> None:
    script = Script([status(429, {"Retry-After": "2"}), ok({"key_id": "k", "label": "l"})])
    with client(script) as c:
        started = time.monotonic()
        c.admin.permissions()
    assert script.times[1] - script.times[0] >= 2.0
    assert time.monotonic() - started < 4.0


def test_retry_after_http_date_is_waited() -> None:
    # An HTTP date has one-second resolution: anchor it on a whole second, so the date
    # says exactly "2 s from the next second" and truncation cannot shorten the wait.
    when = email.utils.formatdate(math.ceil(time.time()) + 2, usegmt=True)
    script = Script([status(503, {"Retry-After": when}), ok({"key_id": "k", "label": "l"})])
    with client(script) as c:
        c.admin.permissions()
    assert script.times[1] - script.times[0] >= 1.5


def test_retry_after_beyond_the_cap_raises_at_once() -> None:
    script = Script([status(429, {"Retry-After": "600", "X-RateLimit-Limit": "100",
                                  "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "600"})])
    with client(script, retry_after_cap=5) as c, pytest.raises(RateLimitError) as info:
        c.admin.permissions()
    assert len(script.requests) == 1
    err = info.value
    assert (err.retry_after, err.limit, err.remaining, err.reset) == (600, 100, 0, 600)


def test_a_503_burst_shorter_than_the_attempts_succeeds() -> None:
    script = Script([status(503)] * 3 + [ok({"key_id": "k", "label": "l"})])
    with client(script) as c:
        assert c.admin.permissions().key_id == "k"
    assert len(script.requests) == 4


@pytest.mark.parametrize("code", [408, 429, 502, 503, 504])
def test_each_transient_status_is_retried(code: int) -> None:
    script = Script([status(code), ok({"key_id": "k", "label": "l"})])
    with client(script) as c:
        c.admin.permissions()
    assert len(script.requests) == 2


def test_a_longer_503_burst_raises_server_error_within_the_bound() -> None:
    script = Script([status(503)] * 50)
    with client(script, max_attempts=4) as c:
        started = time.monotonic()
        with pytest.raises(ServerError) as info:
            c.admin.permissions()
    assert len(script.requests) == 4
    assert info.value.status == 503 and info.value.request_id == "req-1"
    assert time.monotonic() - started < 1.0


def test_elapsed_time_bound_stops_retries() -> None:
    script = Script([status(503)] * 100)
    with client(script, max_attempts=50, initial=0.1, maximum=0.1, max_elapsed=0.35) as c:
        started = time.monotonic()
        with pytest.raises(ServerError):
            c.admin.permissions()
    # stop_before_delay: no sleep may carry the call past the bound (plus scheduling slack).
    assert time.monotonic() - started < 0.35 + 0.1
    assert len(script.requests) >= 3


@pytest.mark.parametrize("code", [400, 403, 404, 409, 413, 500])
def test_non_transient_errors_are_never_retried(code: int) -> None:
    script = Script([status(code)] * 3)
    with client(script) as c, pytest.raises(Exception):
        c.datastore.insert("users", {"a": 1})
    assert len(script.requests) == 1


def test_a_400_raises_validation_error_with_its_details() -> None:
    script = Script([status(400)])
    with client(script) as c, pytest.raises(ValidationError) as info:
        c.datastore.insert("users", {"a": 1})
    assert info.value.code == "status_400"
    assert "scripted 400" in str(info.value) and "req-1" in str(info.value)


def test_connection_failures_exhaust_into_transport_error() -> None:
    script = Script([reset] * 10)
    with client(script, max_attempts=3) as c, pytest.raises(TransportError):
        c.admin.permissions()
    assert len(script.requests) == 3


def test_retry_budget_stops_a_retry_storm() -> None:
    script = Script(fallback=status(503))
    budget = {"budget_capacity": 3, "budget_per_second": 0.001, "budget_ratio": 0.0}
    with client(script, max_attempts=5, **budget) as c:
        for _ in range(5):
            with pytest.raises(ServerError):
                c.admin.permissions()
    # Without the budget: 5 calls x 5 attempts = 25. With it: 5 first attempts + 3 retries.
    assert len(script.requests) == 8


def test_budget_refills_with_successes() -> None:
    budget = RetryBudget(capacity=2, ratio=0.5, per_second=0.0)
    assert budget.withdraw() and budget.withdraw()
    assert not budget.withdraw()
    budget.deposit()
    budget.deposit()
    assert budget.withdraw()


async def test_async_client_retries_with_the_same_idempotency_key() -> None:
    script = Script([reset, status(503), ok({"id": "r1"})])
    async with AsyncClient(base_url=URL, api_key="eko_test_" + "k" * 40,
                           transport=script.transport(),
                           retry={"initial": 0.01, "maximum": 0.02}) as c:
        assert await c.datastore.insert("users", {"a": 1}) == {"id": "r1"}
    assert len({r.headers["Idempotency-Key"] for r in script.requests}) == 1
    assert len(script.requests) == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3.0), ("0.5", 0.5), ("-4", 0.0), ("soon", None), (None, None), ("nan", None)],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    now = time.time()
    parsed = parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now)
    assert parsed is not None and 28 <= parsed <= 31
