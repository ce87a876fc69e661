"""IP allowlists per key over IPv4 and IPv6, and X-Forwarded-For from trusted proxies only."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mock_server.config import ServerConfig
from mock_server.pytest_plugin import ServerInfo
from mock_server.server import ReferenceServer
from tests.server.conftest import Api, assert_error, tls_context

PERMS = "/api/auth/permissions"


class Peer:
    """An HTTPS client whose connections leave from one loopback source address."""

    def __init__(self, info: ServerInfo, source: str) -> None:
        port = info.url.rsplit(":", 1)[1]
        host = "[::1]" if ":" in source else "127.0.0.1"
        transport = httpx.HTTPTransport(verify=tls_context(info), local_address=source)
        self.http = httpx.Client(base_url=f"https://{host}:{port}", transport=transport,
                                 timeout=30)

    def token(self, api_key: str) -> httpx.Response:
        return self.http.post("/api/auth/token", json={"api_key": api_key})

    def perms(self, token: str, **headers: str) -> httpx.Response:
        return self.http.get(PERMS, headers={"Authorization": f"Bearer {token}", **headers})


@pytest.fixture
def dual(ekodb_server_factory: Any) -> Iterator[tuple[Api, dict[str, Peer]]]:
    """A dual-stack server ("::" takes IPv4 as IPv4-mapped IPv6) and three source peers."""
    info = ekodb_server_factory(host="::")
    api = Api(info)
    peers = {src: Peer(info, src) for src in ("127.0.0.1", "127.0.0.2", "::1")}
    try:
        yield api, peers
    finally:
        for p in peers.values():
            p.http.close()
        api.close()


def test_allowed_and_refused_peers_over_ipv4_and_ipv6(dual: tuple[Api, dict[str, Peer]]
                                                      ) -> None:
    api, peers = dual
    # "::ffff:127.0.0.2" is stored as 127.0.0.2/32 and matches the IPv4-mapped peer address
    key = api.create_key("two-homes", allowed_ips=["::ffff:127.0.0.2", "::1/128"])
    listed = {k["key_id"]: k for k in api.http.get("/api/auth/keys", headers=api.admin).json()}
    assert listed[key["key_id"]]["allowed_ips"] == ["127.0.0.2/32", "::1/128"]
    for src, allowed in (("127.0.0.2", True), ("::1", True), ("127.0.0.1", False)):
        r = peers[src].token(key["api_key"])
        if allowed:
            assert r.status_code == 200, (src, r.text)
            assert peers[src].perms(r.json()["token"]).status_code == 200
        else:
            assert_error(r, 403, "forbidden")
    v6net = api.create_key("v6-net", allowed_ips=["fd00::/8"])
    assert_error(peers["::1"].token(v6net["api_key"]), 403)


def test_token_from_an_allowed_address_refused_from_a_refused_one(
    dual: tuple[Api, dict[str, Peer]],
) -> None:
    api, peers = dual
    key = api.create_key("pinned", allowed_ips=["127.0.0.2/32"])
    token = peers["127.0.0.2"].token(key["api_key"]).json()["token"]
    assert peers["127.0.0.2"].perms(token).status_code == 200
    assert_error(peers["127.0.0.1"].perms(token), 403)
    assert_error(peers["::1"].perms(token), 403)
    # narrowing the allowlist bites on the next request (the update also revokes tokens)
    r = api.http.put(f"/api/auth/keys/{key['key_id']}", headers=api.admin,
                     json={"allowed_ips": ["127.0.0.3/32"]})
    assert r.status_code == 200
    assert_error(peers["127.0.0.2"].token(key["api_key"]), 403)


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "not-an-ip", "::1/129", "1.2.3.4/8/1", "",
                                 "fe80::1%eth0", "256.1.1.1"])
def test_bad_cidrs_rejected_at_create_and_update_naming_the_entry(api: Api, bad: str) -> None:
    body = {"label": "x", "allowed_ips": ["127.0.0.1/32", bad]}
    err = assert_error(api.http.post("/api/auth/register", json=body, headers=api.admin), 400,
                       "validation_error")
    assert repr(bad) in err["message"]
    key = api.create_key("valid")
    err = assert_error(api.http.put(f"/api/auth/keys/{key['key_id']}", headers=api.admin,
                                    json={"allowed_ips": [bad]}), 400, "validation_error")
    assert repr(bad) in err["message"]


def test_forwarded_for_ignored_from_an_untrusted_peer(api: Api) -> None:
    key = api.create_key("far-away", allowed_ips=["203.0.113.0/24"])
    spoof = {"X-Forwarded-For": "203.0.113.7"}
    r = api.http.post("/api/auth/token", json={"api_key": key["api_key"]}, headers=spoof)
    assert_error(r, 403)
    local = api.create_key("local", allowed_ips=["127.0.0.0/8"])
    h = api.headers(local["api_key"])
    assert api.http.get(PERMS, headers={**h, "X-Forwarded-For": "8.8.8.8"}).status_code == 200


def test_trusted_proxy_rightmost_untrusted_address_decides(ekodb_server_factory: Any) -> None:
    info = ekodb_server_factory(host="::", trusted_proxies=["127.0.0.1/32", "10.0.0.0/8"])
    proxy, stranger = Peer(info, "127.0.0.1"), Peer(info, "127.0.0.2")
    api = Api(info)
    try:
        key = api.create_key("client-net", allowed_ips=["203.0.113.0/24"])
        token = proxy.token(key["api_key"])
        assert token.status_code == 403  # no header: the proxy's own address decides
        r = proxy.http.post("/api/auth/token", json={"api_key": key["api_key"]},
                            headers={"X-Forwarded-For": "203.0.113.7"})
        assert r.status_code == 200, r.text
        tok = r.json()["token"]
        cases = {
            "203.0.113.7": 200,
            "198.51.100.1, 203.0.113.7": 200,  # left entries are client-forgeable
            "203.0.113.7, 10.1.2.3": 200,  # trusted hops on the right are skipped
            "203.0.113.7, 198.51.100.1": 403,  # the rightmost untrusted entry decides
            "203.0.113.7, not-an-ip": 403,  # unknown client: refused, not the proxy
            "203.0.113.7, ::ffff:198.51.100.1": 403,
        }
        for xff, status in cases.items():
            assert proxy.perms(tok, **{"X-Forwarded-For": xff}).status_code == status, xff
        # a proxy that adds its own header line cannot be hidden behind a forged first one
        two_lines = proxy.http.get(PERMS, headers=httpx.Headers([
            ("Authorization", f"Bearer {tok}"), ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-For", "198.51.100.1")]))
        assert two_lines.status_code == 403
        # the same header from a peer that is not a trusted proxy means nothing
        assert_error(stranger.perms(tok, **{"X-Forwarded-For": "203.0.113.7"}), 403)
    finally:
        proxy.http.close()
        stranger.http.close()
        api.close()


def test_allowlists_and_limits_persist_across_restart(ekodb_server_factory: Any) -> None:
    info = ekodb_server_factory()
    api = Api(info)
    key = api.create_key("durable", allowed_ips=["::1/128", "10.0.0.0/8"], rate_limit=3)
    h = api.admin
    api.close()
    info.server.stop()
    again = ReferenceServer(ServerConfig(data_dir=info.data_dir), environ={}).start()
    try:
        ctx = ssl.create_default_context(cafile=str(again.ca_bundle))
        with httpx.Client(base_url=again.url, verify=ctx, timeout=30) as http:
            listed = {k["key_id"]: k for k in http.get("/api/auth/keys", headers=h).json()}
            assert listed[key["key_id"]]["allowed_ips"] == ["::1/128", "10.0.0.0/8"]
            assert listed[key["key_id"]]["rate_limit"] == 3
            assert_error(http.post("/api/auth/token", json={"api_key": key["api_key"]}), 403)
    finally:
        again.stop()
