"""SDK against real rate limits: typed 429s, Retry-After, figures per key, adaptive pacing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ekoclient import AsyncClient, Authenticator, Client, RateLimitInfo
from ekoclient._pacing import pace
from ekoclient.errors import RateLimitError
from mock_server.pytest_plugin import ServerInfo

WINDOW = 1.0  # seconds: the pacing tests' limits are "per second" so they run in seconds
LIMIT = 50


def make_key(info: ServerInfo, rate_limit: int) -> str:
    with Client(base_url=info.url, api_key=info.admin_key, ca_bundle=info.ca_bundle) as c:
        return c.admin.create_key("limited", rate_limit=rate_limit).api_key


def counting_hook() -> tuple[list[int], Callable[[httpx.Response], None]]:
    statuses: list[int] = []
    lock = threading.Lock()

    def hook(response: httpx.Response) -> None:
        with lock:
            statuses.append(response.status_code)

    return statuses, hook


def test_exhausted_key_raises_rate_limit_error_with_figures(ekodb_server: ServerInfo,
                                                           admin: Client) -> None:
    # three: the token exchange is the first request of the key
    key = admin.admin.create_key("three-per-minute", rate_limit=3).api_key
    with Client(base_url=ekodb_server.url, api_key=key, ca_bundle=ekodb_server.ca_bundle,
                retry={"max_attempts": 1}) as client:
        client.admin.permissions()
        seen = client.rate_limit
        assert seen is not None and (seen.limit, seen.remaining) == (3, 1)
        client.admin.permissions()
        with pytest.raises(RateLimitError) as caught:
            client.admin.permissions()
    err = caught.value
    assert err.status == 429 and err.code == "rate_limited"
    assert err.retry_after is not None and err.retry_after >= 1
    assert (err.limit, err.remaining) == (3, 0)
    assert err.reset is not None and 1 <= err.reset <= 60
    assert key not in str(err)


def test_retry_waits_for_retry_after_then_succeeds(ekodb_server_factory: Any,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    info = ekodb_server_factory(rate_limit_window=3.0)
    key = make_key(info, rate_limit=3)  # one more every second; the exchange is the first
    statuses, hook = counting_hook()
    with Client(base_url=info.url, api_key=key, ca_bundle=info.ca_bundle,
                event_hooks={"response": [hook]}) as client, \
            caplog.at_level("WARNING", logger="ekoclient"):
        client.admin.permissions()
        client.admin.permissions()
        started = time.monotonic()
        assert client.admin.permissions().key_id  # 429, wait Retry-After (1 s), success
        assert time.monotonic() - started >= 0.9
    assert statuses.count(429) == 1
    waits = [r for r in caplog.records if "answered 429" in r.getMessage()]
    assert [r.levelname for r in waits] == ["WARNING"]  # a wait the caller should know of
    assert key not in caplog.text


def test_figures_are_per_credential_and_on_the_client(ekodb_server: ServerInfo, admin: Client
                                                     ) -> None:
    k10 = admin.admin.create_key("ten", rate_limit=10).api_key
    k20 = admin.admin.create_key("twenty", rate_limit=20).api_key
    with Client(base_url=ekodb_server.url, ca_bundle=ekodb_server.ca_bundle,
                api_key=k10) as client:
        auth = Authenticator(client)
        ten, twenty = auth.using_credentials(k10), auth.using_credentials(k20)
        assert ten.rate_limit is None  # nothing seen yet
        ten.admin.permissions()
        twenty.admin.permissions()
        twenty.admin.permissions()
        a, b = ten.rate_limit, twenty.rate_limit
        assert a is not None and b is not None
        # each credential's token exchange counted too
        assert (a.limit, a.remaining, b.limit, b.remaining) == (10, 8, 20, 17)
        assert client.rate_limit == a  # the client's own key is the view's key
        assert isinstance(a, RateLimitInfo) and a.reset is not None and a.reset >= 1


def hammer_sync(client: Client, calls: int, threads: int) -> list[BaseException]:
    errors: list[BaseException] = []

    def worker() -> None:
        for _ in range(calls // threads):
            try:
                client.admin.permissions()
            except RateLimitError as exc:
                errors.append(exc)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return errors


def test_without_pacing_the_same_load_bounces(ekodb_server_factory: Any) -> None:
    """The control for the pacing tests: this load does exceed the limit."""
    info = ekodb_server_factory(rate_limit_window=WINDOW)
    key = make_key(info, LIMIT)
    statuses, hook = counting_hook()
    with Client(base_url=info.url, api_key=key, ca_bundle=info.ca_bundle,
                retry={"max_attempts": 1}, event_hooks={"response": [hook]}) as client:
        errors = hammer_sync(client, 200, threads=4)
    assert errors and statuses.count(429) == len(errors)


def test_adaptive_pacing_sync_threads_never_see_429(ekodb_server_factory: Any) -> None:
    info = ekodb_server_factory(rate_limit_window=WINDOW)
    key = make_key(info, LIMIT)
    statuses, hook = counting_hook()
    client = (Client.builder().base_url(info.url).api_key(key).ca_bundle(info.ca_bundle)
              .rate_limit(adaptive=True).retry(max_attempts=1)
              .event_hooks({"response": [hook]}).build())
    started = time.monotonic()
    with client:
        errors = hammer_sync(client, 300, threads=4)
    elapsed = time.monotonic() - started
    assert not errors and statuses.count(429) == 0
    assert statuses.count(200) == 300 + 1  # and one token exchange
    # the first LIMIT calls may burst; the rest cannot go faster than LIMIT per WINDOW
    assert elapsed >= (300 - LIMIT) * WINDOW / LIMIT * 0.95
    assert info.server.metrics.get("ekodb_rate_limited_total") == 0


async def test_adaptive_pacing_async_tasks_never_see_429(ekodb_server_factory: Any) -> None:
    info = ekodb_server_factory(rate_limit_window=WINDOW)
    key = make_key(info, LIMIT)
    statuses: list[int] = []

    async def hook(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    started = time.monotonic()
    async with AsyncClient(base_url=info.url, api_key=key, ca_bundle=info.ca_bundle,
                           rate_limit={"adaptive": True}, retry={"max_attempts": 1},
                           event_hooks={"response": [hook]}) as client:

        async def worker() -> None:
            for _ in range(75):
                await client.admin.permissions()

        await asyncio.gather(*(worker() for _ in range(4)))
        assert client.rate_limit is not None and client.rate_limit.limit == LIMIT
    elapsed = time.monotonic() - started
    assert statuses.count(429) == 0 and statuses.count(200) == 300 + 1  # + token exchange
    assert elapsed >= (300 - LIMIT) * WINDOW / LIMIT * 0.95
    assert info.server.metrics.get("ekodb_rate_limited_total") == 0


def info(limit: int | None, remaining: int | None, reset: float | None,
         at: float = 100.0) -> RateLimitInfo:
    return RateLimitInfo(limit=limit, remaining=remaining, reset=reset, observed_at=at)


def test_pace_waits_only_when_the_budget_is_low() -> None:
    assert pace(None, 0.0, 100.0) == (0.0, 0.0)
    assert pace(info(None, None, None), 0.0, 100.0) == (0.0, 0.0)
    assert pace(info(100, 50, 30.0), 0.0, 100.0) == (0.0, 0.0)  # plenty left
    assert pace(info(100, 5, 30.0), 0.0, 140.0) == (0.0, 0.0)  # old figures: refilled
    # low: calls leave at the refill rate, reset / (limit - remaining) apart, each one
    # reserving the next slot, so concurrent callers queue instead of bursting
    slot = 0.0
    delays = []
    for _ in range(3):
        delay, slot = pace(info(100, 10, 9.0), slot, 100.0)
        delays.append(delay)
    assert delays == pytest.approx([0.0, 0.1, 0.2])
    assert pace(info(100, 0, 60.0), 1e9, 100.0, max_delay=5.0)[0] == 5.0
