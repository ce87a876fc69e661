"""Held polls on the wire: they never hold the database, and bad waits are refused."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest

from tests.server.conftest import Api, assert_error


def test_a_held_poll_with_an_idempotency_key_does_not_block_other_writes(api: Api) -> None:
    headers = api.admin
    held: list[httpx.Response] = []

    def long_poll() -> None:
        held.append(api.http.post(f"/api/queue/{uuid.uuid4().hex}/poll?wait=2",
                                  headers={**headers, "Idempotency-Key": uuid.uuid4().hex}))

    thread = threading.Thread(target=long_poll)
    thread.start()
    time.sleep(0.3)  # the poll is being held now
    started = time.monotonic()
    sent = api.http.post(f"/api/queue/{uuid.uuid4().hex}/send", json={"n": 1},
                         headers={**headers, "Idempotency-Key": uuid.uuid4().hex})
    assert sent.status_code == 200 and time.monotonic() - started < 1.0
    thread.join(10)
    assert held[0].status_code == 200 and held[0].json() == []


@pytest.mark.parametrize("wait", ["-1", "21", "soon", "nan"])
def test_a_bad_wait_is_refused_with_an_envelope(api: Api, wait: str) -> None:
    for path in (f"/api/queue/q{uuid.uuid4().hex[:6]}/poll",
                 "/api/bus/subscriptions/nope/poll"):
        r = api.http.post(f"{path}?wait={wait}", headers=api.admin)
        assert_error(r, 422 if r.status_code == 422 else 400)
