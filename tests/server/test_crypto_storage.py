"""Crypto and storage building blocks, tested without the HTTP layer."""

from __future__ import annotations

import base64
import os
import stat
import threading
from pathlib import Path

import pytest

from mock_server.crypto import (
    MASTER_KEY_ENV,
    DecryptionError,
    KeyRing,
    MasterKeyError,
    aad,
    load_master_key,
)
from mock_server.keys import KeyStore
from mock_server.storage import Storage


def test_master_key_file_created_0600_and_reused(tmp_path: Path) -> None:
    key = load_master_key(tmp_path, env={})
    path = tmp_path / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key) == 32
    assert load_master_key(tmp_path, env={}) == key


def test_master_key_from_env_hex_and_base64(tmp_path: Path) -> None:
    raw = os.urandom(32)
    assert load_master_key(tmp_path, env={MASTER_KEY_ENV: raw.hex()}) == raw
    assert load_master_key(tmp_path, env={MASTER_KEY_ENV: base64.b64encode(raw).decode()}) == raw
    assert not (tmp_path / "master.key").exists()
    with pytest.raises(MasterKeyError):
        load_master_key(tmp_path, env={MASTER_KEY_ENV: "too-short"})


def test_aead_binds_place_and_detects_tampering() -> None:
    ring = KeyRing(os.urandom(32))
    blob = ring.encrypt("datastore", "users", b"secret value", aad("record", "users", "r1"))
    assert b"secret value" not in blob
    assert ring.decrypt("datastore", "users", blob, aad("record", "users", "r1")) == b"secret value"
    with pytest.raises(DecryptionError):  # moved to another record
        ring.decrypt("datastore", "users", blob, aad("record", "users", "r2"))
    with pytest.raises(DecryptionError):  # other collection key
        ring.decrypt("datastore", "teams", blob, aad("record", "users", "r1"))
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(DecryptionError):
        ring.decrypt("datastore", "users", tampered, aad("record", "users", "r1"))
    with pytest.raises(DecryptionError):
        ring.decrypt("datastore", "users", b"short", aad("record", "users", "r1"))
    with pytest.raises(DecryptionError):  # other master key
        KeyRing(os.urandom(32)).decrypt("datastore", "users", blob, aad("record", "users", "r1"))


def test_aad_parts_are_unambiguous() -> None:
    assert aad("a|b", "c") != aad("a", "b|c")


def test_blind_index_deterministic_and_scoped() -> None:
    ring = KeyRing(os.urandom(32))
    assert ring.blind_index("keys", "secret", "x") == ring.blind_index("keys", "secret", "x")
    assert ring.blind_index("keys", "secret", "x") != ring.blind_index("keys", "other", "x")


def test_ciphertext_copied_into_another_key_row_fails(tmp_path: Path) -> None:
    ring = KeyRing(os.urandom(32))
    storage = Storage(tmp_path)
    keys = KeyStore(storage, ring)
    a, _ = keys.create("alice-label", description="alice private description")
    b, _ = keys.create("bob-label")
    with storage.transaction() as conn:
        (meta,) = conn.execute("SELECT meta FROM api_keys WHERE key_id=?", (a.key_id,)).fetchone()
        conn.execute("UPDATE api_keys SET meta=? WHERE key_id=?", (meta, b.key_id))
    assert keys.get(a.key_id) is not None
    with pytest.raises(DecryptionError):
        keys.get(b.key_id)
    storage.close()


def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    storage.ensure_schema("CREATE TABLE IF NOT EXISTS t (v INTEGER)")
    with pytest.raises(RuntimeError), storage.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        with storage.transaction() as inner:  # nested joins the outer transaction
            inner.execute("INSERT INTO t VALUES (2)")
        raise RuntimeError("boom")
    assert storage.conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    assert storage.conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert storage.conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    storage.close()


def test_concurrent_writers_from_threads(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    storage.ensure_schema("CREATE TABLE IF NOT EXISTS c (n INTEGER)")
    with storage.transaction() as conn:
        conn.execute("INSERT INTO c VALUES (0)")

    def bump() -> None:
        for _ in range(50):
            with storage.transaction() as conn:
                (n,) = conn.execute("SELECT n FROM c").fetchone()
                conn.execute("UPDATE c SET n = ?", (n + 1,))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert storage.conn.execute("SELECT n FROM c").fetchone() == (200,)
    storage.close()


def test_idempotency_pending_row_of_closed_instance_is_taken_over(tmp_path: Path) -> None:
    from mock_server.idempotency import IdempotencyStore, Replay, fingerprint

    ring = KeyRing(os.urandom(32))
    storage = Storage(tmp_path)
    fp = fingerprint("POST", "/api/x", b"")
    a = IdempotencyStore(storage, ring, ttl=3600)
    b = IdempotencyStore(storage, ring, ttl=3600)
    assert a.begin("key_1", "k", fp) == "proceed"
    assert b.begin("key_1", "k", fp) == "wait"  # a is alive and still running
    assert b.begin("key_1", "k", fingerprint("POST", "/api/y", b"")) == "conflict"
    a.close()  # a "crashed" without finishing
    assert b.begin("key_1", "k", fp) == "proceed"
    b.complete("key_1", "k", 201, [(b"content-type", b"application/json")], b'{"ok":1}')
    replay = b.begin("key_1", "k", fp)
    assert isinstance(replay, Replay) and replay.status == 201 and replay.body == b'{"ok":1}'
    assert a.begin("key_2", "k", fp) == "proceed"  # other API key, other namespace
    b.close()
    storage.close()


def test_concurrent_first_starts_agree_on_master_key(tmp_path: Path) -> None:
    keys: list[bytes] = []
    lock = threading.Lock()

    def load() -> None:
        k = load_master_key(tmp_path, env={})
        with lock:
            keys.append(k)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 8 and len(set(keys)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["master.key"]  # no temp files left
