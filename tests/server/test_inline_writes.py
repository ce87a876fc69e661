"""Small keyed inserts run on the event loop, and never make it wait (routes/datastore.py,
``Storage.on_loop``): what a user sees must not change, and reads must keep flowing."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from typing import Any

import httpx

from mock_server.pytest_plugin import ServerInfo
from mock_server.storage import DB_FILE

from .conftest import Api, assert_error, tls_context


def _keyed(headers: dict[str, str]) -> dict[str, str]:
    return {**headers, "Idempotency-Key": uuid.uuid4().hex}


def test_keyed_inserts_into_a_unique_field_keep_one_per_value(api: Api) -> None:
    """The unique check scans the collection, which the loop refuses: the insert runs in a
    thread instead, with the same answers (and nothing left of the refused attempt)."""
    h = api.admin
    name = f"inl_{uuid.uuid4().hex[:8]}"
    schema = {"fields": {"email": {"field_type": "string", "unique": True}}}
    assert api.http.post(f"/api/collections/{name}", json=schema, headers=h).status_code == 200
    for i in range(5):
        r = api.http.post(f"/api/insert/{name}", json={"email": f"{i}@x"}, headers=_keyed(h))
        assert r.status_code == 200, r.text
    dup = api.http.post(f"/api/insert/{name}", json={"email": "3@x"}, headers=_keyed(h))
    assert_error(dup, 400, "unique_violation")
    found = api.http.post(f"/api/find/{name}", json={"limit": 100}, headers=h).json()
    assert sorted(r["email"] for r in found) == [f"{i}@x" for i in range(5)]


def test_a_keyed_insert_held_by_the_write_lock_does_not_stall_reads(
        api: Api, ekodb_server: ServerInfo) -> None:
    """Another process holds the database's write lock: the insert waits for it off the
    event loop, gets served once it is free and is stored once; reads meanwhile answer."""
    h = api.admin
    name = f"inl_{uuid.uuid4().hex[:8]}"
    assert api.http.post(f"/api/collections/{name}", headers=h).status_code == 200
    rid = api.http.post(f"/api/insert/{name}", json={"n": 0}, headers=h).json()["id"]
    holder = sqlite3.connect(ekodb_server.data_dir / DB_FILE, isolation_level=None)
    answer: dict[str, Any] = {}

    def insert() -> None:
        with httpx.Client(base_url=api.info.url, verify=tls_context(api.info),
                          timeout=60) as other:
            answer["r"] = other.post(f"/api/insert/{name}", json={"n": 1},
                                     headers=_keyed(h))

    try:
        holder.execute("BEGIN IMMEDIATE")
        writer = threading.Thread(target=insert)
        writer.start()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # the write is pending all along
            started = time.monotonic()
            r = api.http.get(f"/api/find/{name}/{rid}", headers=h)
            assert r.status_code == 200 and time.monotonic() - started < 0.5
        assert "r" not in answer
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    writer.join(30)
    assert answer["r"].status_code == 200, answer["r"].text
    found = api.http.post(f"/api/find/{name}", json={"limit": 100}, headers=h).json()
    assert sorted(r["n"] for r in found) == [0, 1]
