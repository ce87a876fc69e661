"""Rate limits the audit found open (issue 13, items 10 and 17): the token endpoint's
failed-attempt limiter is atomic and shared by every process on a data dir, exchanges
count against the key's limit, and the shared limiter needs no durable write per request."""

from __future__ import annotations

import asyncio
import multiprocessing
import ssl
from pathlib import Path
from typing import Any

import httpx

from mock_server.config import ServerConfig
from mock_server.ratelimit import RateLimiter, SharedTatStore
from mock_server.server import ReferenceServer
from tests.server.conftest import Api, assert_error, tls_context
from tests.server.test_ratelimit import assert_exact_under_threads

TOKEN = "/api/auth/token"


async def test_concurrent_wrong_keys_never_overshoot_the_failed_attempt_limit(
        ekodb_server_factory: Any) -> None:
    """The audit saw 60 of 60 concurrent wrong keys evaluated against a limit of 20."""
    info = ekodb_server_factory(failed_auth_limit=20)
    limits = httpx.Limits(max_connections=60)
    async with httpx.AsyncClient(base_url=info.url, verify=tls_context(info), timeout=60,
                                 limits=limits) as http:
        # open the 60 connections first, so the attempts really run side by side
        await asyncio.gather(*(http.get("/api/health") for _ in range(60)))
        answers = await asyncio.gather(*(
            http.post(TOKEN, json={"api_key": f"eko_test_wrong{i:02d}"}) for i in range(60)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses.count(401) == 20 and statuses.count(429) == 40, statuses
    for r in answers:
        if r.status_code == 429:
            assert_error(r, 429, "rate_limited")
            assert int(r.headers["retry-after"]) >= 1


def test_good_exchanges_do_not_use_up_the_failed_attempt_budget(ekodb_server_factory: Any
                                                               ) -> None:
    api = Api(ekodb_server_factory(failed_auth_limit=3))
    try:
        for _ in range(10):
            api.token(api.info.admin_key)
        for i in range(3):
            assert_error(api.http.post(TOKEN, json={"api_key": f"eko_test_no{i}"}), 401)
        assert_error(api.http.post(TOKEN, json={"api_key": api.info.admin_key}), 429)
    finally:
        api.close()


def test_failed_attempts_are_shared_by_servers_on_one_data_dir(tmp_path: Path) -> None:
    config = {"data_dir": tmp_path, "failed_auth_limit": 4}
    with ReferenceServer(ServerConfig(**config), environ={}) as a, \
            ReferenceServer(ServerConfig(**config), environ={}) as b:
        assert a.ca_bundle is not None
        ctx = ssl.create_default_context(cafile=str(a.ca_bundle))
        with httpx.Client(verify=ctx, timeout=30) as http:
            for i in range(4):
                r = http.post(f"{a.url}{TOKEN}", json={"api_key": f"eko_test_x{i}"})
                assert r.status_code == 401
            r = http.post(f"{b.url}{TOKEN}", json={"api_key": "eko_test_x9"})
            assert_error(r, 429, "rate_limited")


def test_token_exchanges_count_against_the_keys_limit(api: Api) -> None:
    key = api.create_key("exchanger", rate_limit=3)
    answers = [api.http.post(TOKEN, json={"api_key": key["api_key"]}) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert [r.headers["x-ratelimit-remaining"] for r in answers[:3]] == ["2", "1", "0"]
    err = assert_error(answers[3], 429, "rate_limited")
    assert "rate limit of 3" in err["message"]


# --- the shared store itself --------------------------------------------------------------

def test_shared_store_is_exact_across_threads_and_restarts(tmp_path: Path) -> None:
    now = [1000.0]
    path = tmp_path / "rl.shm"
    limiter = RateLimiter(60.0, store=SharedTatStore(path, clock=lambda: now[0]))
    assert_exact_under_threads(limiter)
    limiter.close()
    again = RateLimiter(60.0, store=SharedTatStore(path, clock=lambda: now[0]))
    assert not again.hit("k", 50).allowed  # a restart keeps the window
    now[0] += 1.2
    assert again.hit("k", 50).allowed
    again.close()


def _hammer(path: str, results: Any) -> None:
    limiter = RateLimiter(3600.0, store=SharedTatStore(Path(path)))
    results.put(sum(limiter.hit("shared", 100).allowed for _ in range(60)))
    limiter.close()


def test_shared_store_is_exact_across_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path / "rl.shm"), results))
             for _ in range(3)]
    for p in procs:
        p.start()
    counts = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert sum(counts) == 100, counts


def test_shared_store_reuses_expired_slots_and_stays_exact_when_crowded(tmp_path: Path
                                                                         ) -> None:
    now = [0.0]
    store = SharedTatStore(tmp_path / "rl.shm", slots=8, clock=lambda: now[0])
    limiter = RateLimiter(60.0, store=store)
    for i in range(8):
        assert limiter.hit(f"k{i}", 1).allowed
        assert not limiter.hit(f"k{i}", 1).allowed  # every key exact while it fits
    now[0] += 61  # every bucket full again: their slots may be taken by new keys
    for i in range(8, 16):
        assert limiter.hit(f"k{i}", 1).allowed
        assert not limiter.hit(f"k{i}", 1).allowed
    limiter.close()
