"""Faults of the server's own disk (issue 13, items 16-18).

The full disk is real: the data dir lives on a small tmpfs filled up with a file, so SQLite
and blob writes get the kernel's ENOSPC exactly as on a full volume (no hook in the server).
Mounting needs root (CAP_SYS_ADMIN); elsewhere these tests skip. The read-only data dir is a
read-only tmpfs for the same reason; a data dir whose database cannot be opened runs
everywhere.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mock_server.pytest_plugin import ServerInfo, start_server
from tests.server.conftest import Api, assert_error


@contextlib.contextmanager
def tmpfs(where: Path, size: str, *options: str) -> Iterator[Path]:
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]),
                              "tmpfs", str(where)], capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@dataclass
class Disk:
    mount: Path

    def fill(self) -> None:
        """Take every free byte (1 MiB writes, then 4 KiB ones)."""
        fd = os.open(self.mount / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (bytes(1 << 20), bytes(4096), bytes(512)):
                while True:
                    try:
                        os.write(fd, chunk)
                    except OSError as exc:
                        assert exc.errno == errno.ENOSPC
                        break
        finally:
            os.close(fd)

    def free(self) -> None:
        (self.mount / "filler").unlink()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[tuple[ServerInfo, Disk]]:
    with tmpfs(tmp_path / "mnt", "24m") as mount:
        info = start_server(mount / "data")
        try:
            yield info, Disk(mount)
        finally:
            info.server.stop()


def test_full_disk_write_is_507_and_reads_keep_working(
        small_disk: tuple[ServerInfo, Disk]) -> None:
    info, disk = small_disk
    api = Api(info)
    try:
        assert api.http.post("/api/collections/full", headers=api.admin).status_code == 200
        # a key with a rate limit: its every request goes through the limiter
        key = api.create_key("limited", rate_limit=1000,
                             collection_permissions={"full": ["read", "write"]})
        h = api.headers(key["api_key"])
        first = api.http.post("/api/insert/full", json={"n": 1}, headers=h)
        assert first.status_code == 200, first.text
        record_id = first.json()["id"]

        disk.fill()
        big = {"blob": "x" * 300_000}
        write = {**h, "Idempotency-Key": "disk-full-1"}
        r = api.http.post("/api/insert/full", json=big, headers=write)
        err = assert_error(r, 507, "insufficient_storage")
        assert "disk is full" in err["message"]
        assert int(r.headers["retry-after"]) >= 1
        for _ in range(20):  # item 17: reads of a rate-limited key need no disk space
            got = api.http.get(f"/api/find/full/{record_id}", headers=h)
            assert got.status_code == 200, got.text
        assert api.http.get("/api/auth/permissions", headers=h).status_code == 200

        disk.free()
        # the failed attempt left nothing pending: the retry runs at once, for real
        again = api.http.post("/api/insert/full", json=big, headers=write)
        assert again.status_code == 200, again.text
        assert again.headers.get("idempotent-replayed") is None
        found = api.http.post("/api/find/full", json={}, headers=h).json()
        assert len(found) == 2
    finally:
        api.close()


def test_full_disk_blob_upload_is_507(small_disk: tuple[ServerInfo, Disk]) -> None:
    info, disk = small_disk
    api = Api(info)
    try:
        h = api.admin
        assert api.http.put("/api/blob/_tables/t", headers=h).status_code == 201
        disk.fill()
        r = api.http.put("/api/blob/t/b1", content=os.urandom(2 << 20), headers=h)
        assert_error(r, 507, "insufficient_storage")
        disk.free()
        assert api.http.get("/api/blob/t/b1", headers=h).status_code == 404
        assert api.http.put("/api/blob/t/b1", content=b"ok", headers=h).status_code in (200, 201)
    finally:
        api.close()


def run_cli(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mock_server", "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_read_only_data_dir_is_one_line_error(tmp_path: Path) -> None:
    """An existing data dir whose volume went read-only (the audit's case)."""
    with tmpfs(tmp_path / "ro", "16m") as mount:
        start_server(mount / "data").server.stop()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        done = run_cli(mount / "data")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: data dir ") and done.stderr.count("\n") == 1
    assert "read-only file system" in done.stderr and "--data-dir" in done.stderr


def test_unopenable_database_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "data" / "ekodb.sqlite3").mkdir(parents=True)  # not a file: cannot open
    done = run_cli(tmp_path / "data")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: cannot open the database in data dir ")
    assert done.stderr.count("\n") == 1


def test_reads_of_a_rate_limited_key_work_on_a_full_disk(
        small_disk: tuple[ServerInfo, Disk]) -> None:
    """The limiter used to write to SQLite on every request: on a full disk every request
    of a key with a limit failed, reads included (admin keys, unlimited, kept working)."""
    info, disk = small_disk
    api = Api(info)
    try:
        assert api.http.post("/api/collections/reads", headers=api.admin).status_code == 200
        key = api.create_key("reader", rate_limit=100,
                             collection_permissions={"reads": ["read"]})
        h = api.headers(key["api_key"])
        disk.fill()
        answers = [api.http.get("/api/auth/permissions", headers=h) for _ in range(10)]
        answers += [api.http.post("/api/find/reads", json={}, headers=h) for _ in range(10)]
        assert [r.status_code for r in answers] == [200] * 20, answers[-1].text
        # still counted (100 per minute refills one unit per 0.6 s)
        remaining = [int(r.headers["x-ratelimit-remaining"]) for r in answers]
        assert remaining[0] - remaining[-1] >= 15, remaining
    finally:
        api.close()
