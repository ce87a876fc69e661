"""Failed-auth limiter, trusted proxies, metrics counters, the GCRA limiter itself."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mock_server.ratelimit import RateLimiter
from tests.server.conftest import Api, assert_error, tls_context


@pytest.fixture
def limited(ekodb_server_factory: Any) -> Iterator[Api]:
    a = Api(ekodb_server_factory(failed_auth_limit=3))
    try:
        yield a
    finally:
        a.close()


def test_failed_auth_limiter_429_with_retry_after(limited: Api) -> None:
    good = limited.info.admin_key
    for _ in range(5):  # successes do not count against the IP
        assert limited.http.post("/api/auth/token", json={"api_key": good}).status_code == 200
    for _ in range(3):
        assert_error(limited.http.post("/api/auth/token", json={"api_key": "eko_bad"}), 401)
    r = limited.http.post("/api/auth/token", json={"api_key": "eko_bad"})
    assert_error(r, 429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["x-ratelimit-limit"] == "3"
    # while blocked, even a correct key is refused (no brute-force oracle)
    assert_error(limited.http.post("/api/auth/token", json={"api_key": good}), 429)
    # /api/metrics needs a token, which this IP cannot get now: read the counters in-process
    metrics = limited.info.server.metrics
    assert metrics.get("ekodb_rate_limited_total") == 2
    assert metrics.get("ekodb_token_exchanges_total", result="failed") == 3
    assert metrics.get("ekodb_token_exchanges_total", result="ok") == 5
    assert metrics.get("ekodb_failed_auth_total") == 3


async def test_concurrent_successful_exchanges_never_trip_the_failed_auth_limit(
        limited: Api) -> None:
    """A process warming up many tenants' keys at once is not a brute-force attack."""
    async with httpx.AsyncClient(base_url=limited.info.url,
                                 verify=tls_context(limited.info)) as http:
        answers = await asyncio.gather(*(
            http.post("/api/auth/token", json={"api_key": limited.info.admin_key})
            for _ in range(40)))
    assert [r.status_code for r in answers] == [200] * 40


def test_trusted_proxy_forwarded_for(ekodb_server_factory: Any) -> None:
    a = Api(ekodb_server_factory(trusted_proxies=["127.0.0.1/32", "::1/128"]))
    try:
        key = a.create_key("behind-proxy", allowed_ips=["203.0.113.0/24"])
        ok_xff = {"X-Forwarded-For": "8.8.8.8, 203.0.113.7"}  # left part is forgeable
        r = a.http.post("/api/auth/token", json={"api_key": key["api_key"]}, headers=ok_xff)
        assert r.status_code == 200, r.text
        h = {"Authorization": f"Bearer {r.json()['token']}"}
        assert a.http.get("/api/auth/permissions", headers={**h, **ok_xff}).status_code == 200
        bad_xff = {"X-Forwarded-For": "203.0.113.7, 8.8.8.8"}
        assert_error(a.http.get("/api/auth/permissions", headers={**h, **bad_xff}), 403)
        assert_error(a.http.get("/api/auth/permissions", headers=h), 403)  # 127.0.0.1 itself
    finally:
        a.close()


def test_metrics_names_and_route_templates(api: Api) -> None:
    admin = api.admin
    api.http.delete("/api/auth/keys/key_nothere", headers=admin)
    text = api.http.get("/api/metrics", headers=admin).text
    assert api.http.get("/api/metrics", headers=admin).headers["content-type"].startswith(
        "text/plain")
    for name in ("ekodb_requests_total", "ekodb_token_exchanges_total",
                 "ekodb_rate_limited_total", "ekodb_failed_auth_total",
                 "ekodb_connections_opened_total", "ekodb_connections_open"):
        assert f"# TYPE {name} " in text
    assert ('ekodb_requests_total{method="DELETE",route="/api/auth/keys/{key_id}",'
            'status="404"}') in text
    assert "key_nothere" not in text


def test_connection_counters(api: Api) -> None:
    before = api.metric("ekodb_connections_opened_total")
    for _ in range(3):
        other = Api(api.info)
        other.http.get("/api/health")
        other.close()
    after = api.metric("ekodb_connections_opened_total")
    assert after - before >= 3  # three new clients, three new TCP connections (+ api's own)
    assert api.metric("ekodb_connections_open") >= 1


def test_token_exchange_counter(api: Api) -> None:
    before = api.metric("ekodb_token_exchanges_total", 'result="ok"')
    api.token(api.info.admin_key)
    api.token(api.info.admin_key)
    # api.metric itself exchanges one token per call
    assert api.metric("ekodb_token_exchanges_total", 'result="ok"') == before + 3


def test_gcra_exact_under_concurrency() -> None:
    now = [1000.0]
    limiter = RateLimiter(60.0, clock=lambda: now[0])
    allowed = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            d = limiter.hit("k", 100)
            with lock:
                allowed.append(d.allowed)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 100
    denied = limiter.hit("k", 100)
    assert not denied.allowed and denied.retry_after == pytest.approx(0.6)
    now[0] += 0.6
    assert limiter.hit("k", 100).allowed
    assert not limiter.hit("k", 100).allowed


def test_gcra_check_consumes_nothing_and_headers() -> None:
    limiter = RateLimiter(60.0, clock=lambda: 0.0)
    for _ in range(5):
        assert limiter.check("ip", 2).allowed
    first = limiter.hit("ip", 2)
    assert first.allowed and first.remaining == 1
    assert limiter.hit("ip", 2).remaining == 0
    blocked = limiter.hit("ip", 2)
    assert not blocked.allowed
    assert blocked.headers()["Retry-After"] == "30"
    assert blocked.headers()["X-RateLimit-Limit"] == "2"
