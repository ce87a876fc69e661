"""Per-credential tokens: exchanged once, shared, refreshed before expiry, never leaked."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest

from ekoclient import AsyncAuthenticator, AsyncClient, Authenticator, Client
from ekoclient._tokens import hint_for
from ekoclient.errors import AuthenticationError

from .sdk_helpers import metric

EXCHANGES = "ekodb_token_exchanges_total"


def _expire(client: Client | AsyncClient, view: Any) -> None:
    """Make the cached token look stale, as if its refresh time had passed."""
    state = client._executor.tokens.peek(view._credential)
    assert state is not None and state.token is not None
    state.refresh_at = state.expires_at = time.monotonic() - 1


async def test_1000_concurrent_tasks_on_a_stale_token_exchange_once(
        async_admin: AsyncClient, scoped_key: str, ekodb_server: Any) -> None:
    view = AsyncAuthenticator(async_admin).using_credentials(scoped_key)
    await view.admin.permissions()
    _expire(async_admin, view)
    before = metric(ekodb_server, EXCHANGES, result="ok")
    results = await asyncio.gather(*(view.admin.permissions() for _ in range(1000)))
    assert metric(ekodb_server, EXCHANGES, result="ok") - before == 1
    assert {r.key_id for r in results} == {results[0].key_id}


def test_64_threads_on_a_new_key_exchange_once(admin: Client, scoped_key: str,
                                                ekodb_server: Any) -> None:
    view = Authenticator(admin).using_credentials(scoped_key)
    before = metric(ekodb_server, EXCHANGES, result="ok")
    barrier = threading.Barrier(64)
    errors: list[BaseException] = []

    def work() -> None:
        barrier.wait()
        try:
            for _ in range(3):
                view.admin.permissions()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert metric(ekodb_server, EXCHANGES, result="ok") - before == 1


def test_a_token_that_expires_mid_run_is_replaced_without_a_failed_call(
        ekodb_server_factory: Any) -> None:
    server = ekodb_server_factory(token_ttl=2)
    with Client(base_url=server.url, api_key=server.admin_key, ca_bundle=server.ca_bundle,
                token_refresh_margin=0.5) as client:
        deadline = time.monotonic() + 5
        calls = 0
        while time.monotonic() < deadline:
            client.admin.permissions()
            calls += 1
            time.sleep(0.05)
    assert calls > 20
    assert metric(server, EXCHANGES, result="ok") >= 3


def test_a_token_refused_with_401_is_refreshed_and_the_call_replayed(
        admin: Client, scoped_key: str, ekodb_server: Any) -> None:
    view = Authenticator(admin).using_credentials(scoped_key)
    view.admin.permissions()
    state = admin._executor.tokens.peek(view._credential)
    assert state is not None
    state.token = "eyJhbGciOiJIUzI1NiJ9.e30.forged"  # looks fresh to the client, server refuses
    before = metric(ekodb_server, EXCHANGES, result="ok")
    assert view.admin.permissions().label == "scoped"
    assert metric(ekodb_server, EXCHANGES, result="ok") - before == 1


def test_a_view_keeps_working_after_an_admin_changes_its_keys_scope(admin: Client) -> None:
    admin.datastore.create_collection("upd_refresh")
    new = admin.admin.create_key("upd", collection_permissions={"upd_refresh": ["read",
                                                                                "write"]})
    view = Authenticator(admin).using_credentials(new.api_key)
    view.datastore.insert("upd_refresh", {"n": 1})          # token minted and cached
    admin.admin.update_key(new.key_id, read_only=True)       # the server drops its tokens
    assert len(view.datastore.find("upd_refresh")) == 1      # one refresh, then it works


def test_a_deleted_key_raises_authentication_error_after_one_refresh_try(
        admin: Client, ekodb_server: Any) -> None:
    new = admin.admin.create_key("doomed", collection_permissions={"things": ["read"]})
    view = Authenticator(admin).using_credentials(new.api_key)
    view.admin.permissions()
    admin.admin.delete_key(new.key_id)
    failed_before = metric(ekodb_server, EXCHANGES, result="failed")
    with pytest.raises(AuthenticationError) as info:
        view.admin.permissions()
    assert metric(ekodb_server, EXCHANGES, result="failed") - failed_before == 1
    message = str(info.value)
    assert new.api_key not in message
    assert hint_for(new.api_key) in message or "revoked" in message


async def test_concurrent_callers_of_a_revoked_key_share_one_failure(
        async_admin: AsyncClient, ekodb_server: Any) -> None:
    new = await async_admin.admin.create_key("gone", collection_permissions={"x": ["read"]})
    await async_admin.admin.delete_key(new.key_id)
    view = AsyncAuthenticator(async_admin).using_credentials(new.api_key)
    before = metric(ekodb_server, EXCHANGES, result="failed")
    results = await asyncio.gather(*(view.admin.permissions() for _ in range(50)),
                                   return_exceptions=True)
    assert all(isinstance(r, AuthenticationError) for r in results)
    assert metric(ekodb_server, EXCHANGES, result="failed") - before == 1


def test_an_unknown_key_raises_authentication_error_naming_only_its_hint(
        admin: Client) -> None:
    fake = "eko_test_" + "Z" * 43
    view = Authenticator(admin).using_credentials(fake)
    with pytest.raises(AuthenticationError) as info:
        view.datastore.list_collections()
    assert fake not in str(info.value) and fake not in repr(info.value)
    assert "eko_test_…#" in str(info.value) and "ZZ" not in str(info.value)


def test_debug_logs_of_a_full_auth_cycle_contain_no_secret(
        admin: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    new = admin.admin.create_key("logged", collection_permissions={"logs": ["read"]})
    view = Authenticator(admin).using_credentials(new.api_key)
    view.admin.permissions()
    rotated = admin.admin.rotate_key(new.key_id)
    with pytest.raises(AuthenticationError):
        view.admin.permissions()
    Authenticator(admin).using_credentials(rotated.api_key).admin.permissions()
    admin.admin.delete_key(new.key_id)
    state = admin._executor.tokens.peek(admin._credential)  # type: ignore[arg-type]
    assert state is not None and state.token
    secrets = [new.api_key, rotated.api_key, state.token, admin._credential.reveal()]  # type: ignore[union-attr]
    records = [r for r in caplog.records if r.name.startswith("ekoclient")]
    assert records, "the SDK should log its requests at DEBUG"
    for record in caplog.records:
        text = record.getMessage()
        for secret in secrets:
            assert secret not in text


def test_the_token_cache_is_bounded_and_evicted_keys_exchange_again(
        ekodb_server: Any, scoped_key: str, admin: Client) -> None:
    with Client(base_url=ekodb_server.url, ca_bundle=ekodb_server.ca_bundle,
                token_cache_size=2) as client:
        auth = Authenticator(client)
        keys = [admin.admin.create_key(f"lru{i}", collection_permissions={"a": ["read"]})
                for i in range(3)]
        for k in keys:
            auth.using_credentials(k.api_key).admin.permissions()
        assert client.token_cache_size == 2
        before = metric(ekodb_server, EXCHANGES, result="ok")
        auth.using_credentials(keys[0].api_key).admin.permissions()
        assert metric(ekodb_server, EXCHANGES, result="ok") - before == 1
