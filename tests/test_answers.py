"""Odd answers and failing token refreshes still end in ekoclient's own typed errors."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from ekoclient import AsyncClient, Client
from ekoclient.errors import (
    AuthenticationError,
    EkoError,
    MalformedResponseError,
    TransportError,
)

from .fakes import Script, ok, reset, status

URL = "https://127.0.0.1:9"
KEY = "eko_test_" + "k" * 40


def client(script: Script, **retry: float) -> Client:
    return Client(base_url=URL, api_key=KEY, transport=script.transport(),
                  retry={"initial": 0.01, "maximum": 0.02, **retry})


def _expire_refresh_only(c: Client | AsyncClient) -> None:
    """Make the cached token due for refresh while it still works."""
    state = c._executor.tokens.peek(c._credential)  # type: ignore[arg-type]
    assert state is not None and state.token is not None
    state.refresh_at = time.monotonic() - 1


def test_a_proxy_page_instead_of_json_is_a_malformed_response_error() -> None:
    html = lambda r: httpx.Response(200, text="<html>captive portal</html>")  # noqa: E731
    with client(Script([html])) as c, pytest.raises(MalformedResponseError) as info:
        c.datastore.list_collections()
    assert "could not read" in str(info.value)
    assert isinstance(info.value, EkoError)


def test_a_body_that_does_not_decode_is_a_malformed_response_error() -> None:
    bad_gzip = lambda r: httpx.Response(  # noqa: E731
        200, headers={"Content-Encoding": "gzip"}, content=b"not gzip at all")
    with client(Script([bad_gzip] * 5), max_attempts=2) as c, \
            pytest.raises(MalformedResponseError):
        c.datastore.get("users", "x")


def test_a_failed_refresh_keeps_using_a_token_that_still_works() -> None:
    script = Script([ok({"key_id": "k", "label": "l"})] * 3)
    with client(script, max_attempts=2) as c:
        c.admin.permissions()
        _expire_refresh_only(c)
        script.token_steps = [status(503)] * 10
        assert c.admin.permissions().key_id == "k"
        exchanges_after_failure = script.exchanges
        # the refresh is put off for a while: the next call does not ask again at once
        assert c.admin.permissions().key_id == "k"
    assert script.exchanges == exchanges_after_failure


async def test_waiters_share_a_failed_exchange_instead_of_each_retrying() -> None:
    script = Script(token_steps=[reset] * 100)
    async with AsyncClient(base_url=URL, api_key=KEY, transport=script.transport(),
                           retry={"max_attempts": 3, "initial": 0.01,
                                  "maximum": 0.02}) as c:
        results = await asyncio.gather(*(c.admin.permissions() for _ in range(30)),
                                       return_exceptions=True)
    assert all(isinstance(r, TransportError) for r in results)
    # one caller's exchange with its retries; the 29 who waited share its failure
    assert script.exchanges == 3


def test_a_401_on_a_streamed_upload_drops_the_token_and_says_to_call_again() -> None:
    script = Script([status(401), ok({"key_id": "k", "label": "l"})])
    with client(script) as c:
        with pytest.raises(AuthenticationError) as info:
            c.blobstore.put("t", "b", iter([b"chunk"]))
        assert info.value.code == "token_refused"
        assert "revoked" not in str(info.value)
        assert len(script.requests) == 1  # the consumed body was not sent again
        before = script.exchanges
        assert c.admin.permissions().key_id == "k"
    assert script.exchanges == before + 1  # the refused token was dropped
