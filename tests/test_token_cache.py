"""The token cache when more keys are active than it holds (issue 14, part 2)."""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest

from ekoclient import Authenticator, Client
from ekoclient._tokens import Credential, TokenCache


def exchanges_for_cycles(cache: TokenCache, keys: list[str], passes: int) -> int:
    """Walk the keys round-robin; count lookups that found no token (an exchange)."""
    exchanged = 0
    for _ in range(passes):
        for key in keys:
            state = cache.state(Credential(key))
            if state.token is None:
                exchanged += 1
                state.token = "token-of-" + key
    return exchanged


def test_keys_cycling_through_a_too_small_cache_still_mostly_hit() -> None:
    cache = TokenCache(max_size=1000)
    cache._rng = random.Random(0)
    keys = [f"eko_test_{i:05d}{'k' * 32}" for i in range(1200)]
    exchanged = exchanges_for_cycles(cache, keys, passes=3)
    # strict LRU evicts exactly the next key needed: 3 x 1,200 = 3,600 exchanges
    assert exchanged <= 2600
    assert len(cache) == 1000
    assert cache.returned == exchanged - 1200


def test_a_cache_large_enough_exchanges_each_key_once() -> None:
    cache = TokenCache(max_size=1000)
    keys = [f"eko_test_{i:05d}{'k' * 32}" for i in range(1000)]
    assert exchanges_for_cycles(cache, keys, passes=3) == 1000
    assert cache.returned == 0


def test_thrashing_is_logged_once_with_what_to_change(
        ekodb_server: Any, admin: Client, caplog: pytest.LogCaptureFixture) -> None:
    keys = [admin.admin.create_key(f"thrash{i}").api_key for i in range(25)]
    with Client(base_url=ekodb_server.url, ca_bundle=ekodb_server.ca_bundle,
                token_cache_size=10) as client, caplog.at_level(logging.WARNING, "ekoclient"):
        auth = Authenticator(client)
        for _ in range(2):
            for key in keys:
                auth.using_credentials(key).admin.permissions()
    warnings = [r.getMessage() for r in caplog.records if "thrashing" in r.getMessage()]
    assert len(warnings) == 1
    assert "token_cache_size=10" in warnings[0]
    assert not any(key[-12:] in warnings[0] for key in keys)


def test_a_token_that_is_not_a_jwt_is_a_malformed_response() -> None:
    import httpx

    from ekoclient.errors import MalformedResponseError

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/auth/token":
            return httpx.Response(200, json={"token": "not-a-jwt", "expires_at": 0})
        return httpx.Response(200, json={})

    with Client(base_url="https://db.example", api_key="eko_test_" + "k" * 40,
                transport=httpx.MockTransport(answer)) as client, \
            pytest.raises(MalformedResponseError, match="not a JWT"):
        client.admin.permissions()
