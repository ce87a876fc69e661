"""WebSockets under the key's rate limit (issue 13, item 9): the upgrade and every client
frame are requests of the key, and a key holds a bounded number of sockets."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from mock_server.pytest_plugin import ServerInfo
from tests.server.conftest import Api

PERMS = "/api/auth/permissions"


class Sockets:
    def __init__(self, info: ServerInfo) -> None:
        self.url = info.url.replace("https://", "wss://") + "/api/ws"
        self.ctx = ssl.create_default_context(cafile=str(info.ca_bundle))
        # websockets' threaded client races on one SSL object under TLS 1.3 (see
        # test_databus_server.py): TLS 1.2 as there
        self.ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        self.opened: list[ClientConnection] = []

    def open(self, token: str) -> ClientConnection:
        ws = connect(self.url, ssl=self.ctx, open_timeout=10, close_timeout=2,
                     additional_headers={"Authorization": f"Bearer {token}"})
        ws.__enter__()
        self.opened.append(ws)
        return ws

    def close(self) -> None:
        for ws in self.opened:
            ws.close()


@pytest.fixture
def sockets(ekodb_server: ServerInfo) -> Iterator[Sockets]:
    s = Sockets(ekodb_server)
    yield s
    s.close()


def closed_with(ws: ClientConnection) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            frame = json.loads(ws.recv(timeout=10))
            assert frame["op"] in ("pong", "heartbeat"), frame
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


def ping(ws: ClientConnection) -> None:
    ws.send(json.dumps({"op": "ping"}))
    while json.loads(ws.recv(timeout=10))["op"] != "pong":
        pass


def test_upgrade_of_a_key_at_its_limit_is_closed_4429(api: Api, sockets: Sockets) -> None:
    key = api.create_key("ws-limited", rate_limit=3)
    token = api.token(key["api_key"])  # 1 of 3
    h = {"Authorization": f"Bearer {token}"}
    assert [api.http.get(PERMS, headers=h).status_code for _ in range(3)] == [200, 200, 429]
    code, reason = closed_with(sockets.open(token))
    assert code == 4429
    assert "rate limit of 3" in reason and "retry after" in reason


def test_every_client_frame_counts_against_the_limit(api: Api, sockets: Sockets) -> None:
    key = api.create_key("ws-frames", rate_limit=5)
    ws = sockets.open(api.token(key["api_key"]))  # exchange + upgrade: 2 of 5
    for _ in range(3):
        ping(ws)
    ws.send(json.dumps({"op": "ping"}))  # the 6th request
    code, reason = closed_with(ws)
    assert code == 4429 and "rate limit of 5" in reason


def test_sockets_per_key_are_capped(ekodb_server_factory: Any) -> None:
    info = ekodb_server_factory(ws_max_sockets_per_key=2)
    api = Api(info)
    s = Sockets(info)
    try:
        token = api.token(api.create_key("ws-many")["api_key"])
        first, second = s.open(token), s.open(token)
        ping(first)
        ping(second)
        code, reason = closed_with(s.open(token))
        assert code == 4429 and "too many open WebSockets" in reason and "2" in reason
        other = s.open(api.token(api.create_key("ws-other")["api_key"]))
        ping(other)  # the cap is per key
        first.close()
        deadline = time.monotonic() + 10
        while True:  # the server frees the slot once it has seen the close
            again = s.open(token)
            try:
                ping(again)
                break
            except ConnectionClosed:
                assert time.monotonic() < deadline, "slot never freed"
                time.sleep(0.05)
    finally:
        s.close()
        api.close()


def test_frames_use_the_strict_json_parser(api: Api, sockets: Sockets) -> None:
    ws = sockets.open(api.token(api.info.admin_key))
    ws.send('{"op": "ping", "op": "subscribe"}')
    frame = json.loads(ws.recv(timeout=10))
    while frame["op"] == "heartbeat":
        frame = json.loads(ws.recv(timeout=10))
    assert frame["op"] == "error" and "duplicate key" in frame["message"]
