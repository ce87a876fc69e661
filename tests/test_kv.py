"""KV store end to end: SDK (sync and async, on views) against the reference server."""

from __future__ import annotations

import secrets
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ekoclient import AsyncAuthenticator, AsyncClient, Authenticator, Client
from ekoclient.errors import InvalidArgumentError, PermissionDeniedError, ValidationError
from mock_server.testing import ServerProcess


def _p(prefix: str = "k") -> str:
    """A key prefix of this test run (keys stay distinct across tests on one server)."""
    return f"{prefix}{secrets.token_hex(4)}"


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def raw(ekodb_server: Any) -> Iterator[httpx.Client]:
    tls = ssl.create_default_context(cafile=ekodb_server.ca_bundle)
    with httpx.Client(base_url=ekodb_server.url, verify=tls, timeout=30) as http:
        yield http


def bearer(raw: httpx.Client, api_key: str) -> dict[str, str]:
    token = raw.post("/api/auth/token", json={"api_key": api_key}).json()["token"]
    return {"Authorization": f"Bearer {token}"}


def test_round_trip_and_miss_is_none(admin: Client) -> None:
    p = _p()
    assert admin.kv.get(f"{p}.a") is None
    assert admin.kv.exists(f"{p}.a") is False
    admin.kv.set(f"{p}.a", {"n": 1, "tags": ["x"]})
    assert admin.kv.get(f"{p}.a") == {"n": 1, "tags": ["x"]}
    assert admin.kv.exists(f"{p}.a") is True
    admin.kv.set(f"{p}.a", 7)  # a set replaces
    assert admin.kv.get(f"{p}.a") == 7
    admin.kv.delete(f"{p}.a")
    assert admin.kv.get(f"{p}.a") is None
    admin.kv.delete(f"{p}.a")  # deleting an absent key is not an error


def test_many_and_find_by_pattern(admin: Client) -> None:
    p = _p()
    admin.kv.set_many({f"{p}.u.1": "a", f"{p}.u.2": [1, 2], f"{p}.v.1": None})
    assert admin.kv.get_many([f"{p}.u.1", f"{p}.u.2", f"{p}.zz"]) == {
        f"{p}.u.1": "a", f"{p}.u.2": [1, 2]}
    found = admin.kv.find(f"{p}.u.*")
    assert [(e["key"], e["value"]) for e in found] == [(f"{p}.u.1", "a"), (f"{p}.u.2", [1, 2])]
    assert admin.kv.delete_many([f"{p}.u.1", f"{p}.nope"]) == [f"{p}.u.1"]
    assert [e["key"] for e in admin.kv.find(f"{p}.*")] == [f"{p}.u.2", f"{p}.v.1"]


async def test_async_client_and_view(async_admin: AsyncClient) -> None:
    p = _p()
    key = (await async_admin.admin.create_key(
        "kv-async", collection_permissions={f"kv:{p}*": ["read", "write"]})).api_key
    view = AsyncAuthenticator(async_admin).using_credentials(key)
    await view.kv.set(f"{p}.x", "hello", ttl=60)
    assert await view.kv.get(f"{p}.x") == "hello"
    assert await view.kv.exists(f"{p}.x")
    assert await view.kv.get_many([f"{p}.x"]) == {f"{p}.x": "hello"}
    [entry] = await view.kv.find(f"{p}*")
    assert entry["key"] == f"{p}.x" and entry["expires_at"] > time.time() + 50


def test_ttl_expires_for_real(admin: Client) -> None:
    p = _p()
    admin.kv.set(f"{p}.t", "soon gone", ttl=1.0)
    admin.kv.set(f"{p}.keep", "stays")
    assert admin.kv.get(f"{p}.t") == "soon gone"
    eventually(lambda: admin.kv.get(f"{p}.t") is None)
    assert not admin.kv.exists(f"{p}.t")
    assert admin.kv.get_many([f"{p}.t", f"{p}.keep"]) == {f"{p}.keep": "stays"}
    assert [e["key"] for e in admin.kv.find(f"{p}.*")] == [f"{p}.keep"]
    # the session server keeps expired entries 60 s before purging: still listed on request
    assert [e["key"] for e in admin.kv.find(f"{p}.*", include_expired=True)] == [
        f"{p}.keep", f"{p}.t"]


def test_expired_entries_are_purged(ekodb_server_factory: Any) -> None:
    info = ekodb_server_factory(kv_purge_grace=0.0, sweep_interval=0.05)
    with Client(base_url=info.url, api_key=info.admin_key, ca_bundle=info.ca_bundle) as c:
        c.kv.set_many({"gone.1": 1, "gone.2": 2}, ttl=1.0)
        c.kv.set("kept", 3)
        assert info.server.state.kv.count() == 3
        eventually(lambda: info.server.state.kv.count() == 1)
        assert c.kv.find(include_expired=True) == [
            {"key": "kept", "value": 3, "expires_at": None}]


def test_keys_are_isolated_by_grants(admin: Client) -> None:
    a, b = _p("a"), _p("b")
    key_a = admin.admin.create_key("kv-a", collection_permissions={
        f"kv:{a}*": ["read", "write"]}).api_key
    key_b = admin.admin.create_key("kv-b", collection_permissions={
        f"kv:{b}*": ["read", "write"]}).api_key
    auth = Authenticator(admin)
    va, vb = auth.using_credentials(key_a), auth.using_credentials(key_b)
    va.kv.set(f"{a}.secret", "for a only")
    vb.kv.set(f"{b}.mine", "for b")
    with pytest.raises(PermissionDeniedError):
        vb.kv.get(f"{a}.secret")
    with pytest.raises(PermissionDeniedError):
        vb.kv.set(f"{a}.secret", "overwritten")
    with pytest.raises(PermissionDeniedError):  # one foreign key refuses the whole batch
        vb.kv.set_many({f"{b}.ok": 1, f"{a}.secret": "overwritten"})
    assert vb.kv.get(f"{b}.ok") is None
    assert va.kv.get(f"{a}.secret") == "for a only"
    # a pattern search never returns keys outside the caller's grants, even when it matches
    assert [e["key"] for e in vb.kv.find()] == [f"{b}.mine"]
    assert [e["key"] for e in vb.kv.find("*secret*")] == []
    assert {e["key"] for e in admin.kv.find(f"{a}*")} == {f"{a}.secret"}


def test_read_only_key_cannot_write(admin: Client) -> None:
    p = _p()
    key = admin.admin.create_key("kv-ro", read_only=True, collection_permissions={
        f"kv:{p}*": ["read", "write"]}).api_key
    view = Authenticator(admin).using_credentials(key)
    admin.kv.set(f"{p}.x", "original")
    assert view.kv.get(f"{p}.x") == "original"
    for attempt in (lambda: view.kv.set(f"{p}.x", "changed"),
                    lambda: view.kv.set_many({f"{p}.y": 1}),
                    lambda: view.kv.delete(f"{p}.x"),
                    lambda: view.kv.delete_many([f"{p}.x"])):
        with pytest.raises(PermissionDeniedError):
            attempt()
    assert admin.kv.get_many([f"{p}.x", f"{p}.y"]) == {f"{p}.x": "original"}


def test_bad_input_is_refused_and_nothing_stored(admin: Client, raw: httpx.Client) -> None:
    p = _p()
    h = bearer(raw, admin.options.api_key.get_secret_value())  # type: ignore[union-attr]
    cases: list[tuple[str, str, Any]] = [
        ("POST", f"/api/kv/set/{p}:colon", {"value": 1}),
        ("POST", f"/api/kv/set/{p}.a", {"ttl": 5}),                    # no value
        ("POST", f"/api/kv/set/{p}.a", {"value": 1, "extra": True}),   # unknown key
        ("POST", f"/api/kv/set/{p}.a", {"value": 1, "ttl": -1}),
        ("POST", f"/api/kv/set/{p}.a", {"value": 1, "ttl": "soon"}),
        ("POST", f"/api/kv/set/{p}.a", [1]),
        ("POST", "/api/kv/batch/set", {"keys": [f"{p}.a", f"{p}.b"], "values": [1]}),
        ("POST", "/api/kv/batch/set", {"keys": [f"{p}.a", "bad key"], "values": [1, 2]}),
        ("POST", "/api/kv/find", {"pattern": 5}),
        ("POST", "/api/kv/find", {"include_expired": "yes"}),
    ]
    for method, path, body in cases:
        r = raw.request(method, path, json=body, headers=h)
        assert r.status_code == 400, (path, body, r.text)
        assert set(r.json()["error"]) == {"code", "message", "request_id"}
    r = raw.post("/api/kv/batch/get", json={"keys": ["x"] * 1001}, headers=h)
    assert r.status_code == 413
    assert admin.kv.find(f"{p}*", include_expired=True) == []
    with pytest.raises(InvalidArgumentError):
        admin.kv.set(f"{p}.a", 1, ttl=-5)
    with pytest.raises(ValidationError):
        admin.kv.set(f"{p}.a*", 1)
    assert admin.kv.get(f"{p}.a") is None


def test_retried_write_applies_once(admin: Client, raw: httpx.Client) -> None:
    p = _p()
    h = bearer(raw, admin.options.api_key.get_secret_value())  # type: ignore[union-attr]
    first = raw.post(f"/api/kv/set/{p}.c", json={"value": 1},
                     headers={**h, "Idempotency-Key": f"idem-{p}"})
    assert first.status_code == 200
    admin.kv.set(f"{p}.c", 2)
    again = raw.post(f"/api/kv/set/{p}.c", json={"value": 1},
                     headers={**h, "Idempotency-Key": f"idem-{p}"})
    assert again.status_code == 200 and again.json() == first.json()
    assert admin.kv.get(f"{p}.c") == 2  # the replay did not write again


def test_rate_limited(admin: Client, raw: httpx.Client) -> None:
    p = _p()
    key = admin.admin.create_key("kv-limited", rate_limit=3, collection_permissions={
        f"kv:{p}*": ["read"]}).api_key
    h = bearer(raw, key)
    statuses = [raw.get(f"/api/kv/get/{p}.x", headers=h).status_code for _ in range(5)]
    assert statuses[0] == 404 and 429 in statuses


def test_keys_and_values_encrypted_at_rest(admin: Client, ekodb_server: Any) -> None:
    marker = secrets.token_hex(8)
    admin.kv.set(f"name{marker}", {"v": f"VALUE{marker}"})
    admin.kv.set_many({f"batch{marker}": f"B{marker}"}, ttl=30)
    files = [f for f in Path(ekodb_server.data_dir).rglob("*") if f.is_file()]
    assert any(f.name.endswith("-wal") for f in files)
    assert [f.name for f in files if marker.encode() in f.read_bytes()] == []
    assert admin.kv.get(f"name{marker}") == {"v": f"VALUE{marker}"}


def test_acknowledged_kv_writes_survive_sigkill(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data") as proc:
        key = proc.admin_key
        assert key is not None
        with Client(base_url=proc.url, api_key=key, ca_bundle=str(proc.ca_bundle)) as c:
            c.kv.set("durable.a", {"n": 1})
            c.kv.set_many({"durable.b": 2, "durable.c": 3}, ttl=3600)
            c.kv.delete("durable.c")
        proc.kill()
        proc.restart()
        with Client(base_url=proc.url, api_key=key, ca_bundle=str(proc.ca_bundle)) as c:
            assert c.kv.get_many(["durable.a", "durable.b", "durable.c"]) == {
                "durable.a": {"n": 1}, "durable.b": 2}


def test_find_over_the_cap_is_refused_never_silently_cut(admin: Client) -> None:
    from mock_server.kv import MAX_FIND

    prefix = _p("cap") + "."
    keys = [f"{prefix}{i:05d}" for i in range(MAX_FIND + 1)]
    for start in range(0, len(keys), 1000):
        admin.kv.set_many({k: 1 for k in keys[start:start + 1000]})
    try:
        with pytest.raises(ValidationError, match="narrow the pattern"):
            admin.kv.find(prefix + "*")
        admin.kv.delete(keys[-1])
        found = admin.kv.find(prefix + "*")  # exactly at the cap: all of them, in order
        assert [e["key"] for e in found] == keys[:-1]
    finally:
        for start in range(0, len(keys), 1000):
            admin.kv.delete_many(keys[start:start + 1000])
