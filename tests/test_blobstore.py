"""BlobStore through the SDK, end to end against the reference server (SPEC §3 BlobStore)."""

from __future__ import annotations

import hashlib
import io
import itertools
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ekoclient import AsyncClient, Authenticator, Client
from ekoclient._blob import ProgressGate
from ekoclient.errors import (
    APIError,
    ConflictError,
    IntegrityError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RangeNotSatisfiableError,
    ServerError,
    TransportError,
)
from ekoclient.models import BlobMetadata
from mock_server.blobs import SEALED
from tests.fakes import make_token
from tests.sdk_helpers import admin_token

CHUNK = 64 * 1024
MIB = 1024 * 1024


def pattern_chunks(total: int, piece: int = MIB, seed: int = 0) -> Iterator[bytes]:
    """Deterministic pseudo-random bytes, generated a piece at a time (never held whole)."""
    block = b"".join(hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(64))
    sent = 0
    n = 0
    while sent < total:
        size = min(piece, total - sent)
        rot = n % len(block)
        unit = block[rot:] + block[:rot]
        yield (unit * (size // len(unit) + 1))[:size]
        sent += size
        n += 1


def pattern(total: int, seed: int = 0) -> bytes:
    return b"".join(pattern_chunks(total, seed=seed))


@pytest.fixture
def table(admin: Client) -> Iterator[str]:
    name = "sdk" + uuid.uuid4().hex[:10]
    admin.blobstore.create_table(name, {"purpose": "tests"})
    yield name
    admin.blobstore.drop_table(name)


def test_table_management(admin: Client, table: str) -> None:
    assert table in admin.blobstore.list_tables()
    assert admin.blobstore.table_attributes(table) == {"purpose": "tests"}
    with pytest.raises(ConflictError):
        admin.blobstore.create_table(table)
    with pytest.raises(NotFoundError):
        admin.blobstore.drop_table(table + "-missing")


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1])
def test_round_trip_of_bytes(admin: Client, table: str, size: int) -> None:
    data = pattern(size, seed=size)
    meta = admin.blobstore.put(table, "b", data, content_type="image/png",
                               attributes={"n": size})
    assert isinstance(meta, BlobMetadata)
    assert (meta.length, meta.sha256, meta.md5) == (
        size, hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest())
    with admin.blobstore.get(table, "b") as blob:
        assert blob.metadata.sha256 == meta.sha256
        assert blob.metadata.attributes == {"n": size}
        assert blob.metadata.content_type == "image/png"
        assert blob.read() == data
    assert admin.blobstore.get_metadata(table, "b") == meta


def test_a_large_blob_streams_both_ways(admin: Client, table: str) -> None:
    size = 200 * MIB
    sent = hashlib.sha256()

    def body() -> Iterator[bytes]:
        for piece in pattern_chunks(size, seed=9):
            sent.update(piece)
            yield piece

    meta = admin.blobstore.put(table, "big", body())
    assert meta.length == size and meta.sha256 == sent.hexdigest()
    got = hashlib.sha256()
    received = 0
    with admin.blobstore.get(table, "big") as blob:
        for piece in blob.iter_bytes():
            got.update(piece)
            received += len(piece)
    assert received == size and got.hexdigest() == sent.hexdigest()


def test_file_bodies_seekable_and_not(admin: Client, table: str, tmp_path: Path) -> None:
    data = pattern(3 * CHUNK + 11, seed=1)
    buf = io.BytesIO(b"prefix" + data)
    buf.seek(6)  # a file is sent from where it stands
    assert admin.blobstore.put(table, "f", buf).length == len(data)
    assert admin.blobstore.get(table, "f").read() == data

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self._src = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def read(self, n: int = -1) -> bytes:
            return self._src.read(n)

    assert admin.blobstore.put(table, "p", Pipe()).sha256 == hashlib.sha256(data).hexdigest()
    with pytest.raises(InvalidArgumentError):
        admin.blobstore.put(table, "s", "text is not bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize("rng,want", [
    ((CHUNK - 5, CHUNK + 5), slice(CHUNK - 5, CHUNK + 5)),
    ((2 * CHUNK, None), slice(2 * CHUNK, None)),
    ((-10, None), slice(-10, None)),
    ((0, 1), slice(0, 1)),
])
def test_byte_ranges(admin: Client, table: str, rng: tuple[int, int | None],
                     want: slice) -> None:
    data = pattern(3 * CHUNK + 7, seed=2)
    admin.blobstore.put(table, "r", data)
    with admin.blobstore.get(table, "r", byte_range=rng) as blob:
        assert blob.read() == data[want]
        assert blob.metadata.length == len(data)
        assert blob.length == len(data[want])


def test_unsatisfiable_range_raises(admin: Client, table: str) -> None:
    admin.blobstore.put(table, "r", b"12345")
    with pytest.raises(RangeNotSatisfiableError):
        admin.blobstore.get(table, "r", byte_range=(5, None))
    with pytest.raises(InvalidArgumentError):
        admin.blobstore.get(table, "r", byte_range=(3, 3))


def test_listing_pages_transparently(admin: Client, table: str) -> None:
    for i in range(7):
        admin.blobstore.put(table, f"k{i:02d}", bytes([i]))
    metas = list(admin.blobstore.list(table, page_size=3))
    assert [m.blob_id for m in metas] == [f"k{i:02d}" for i in range(7)]
    assert [m.blob_id for m in admin.blobstore.list(table, page_size=2, limit=3)] == [
        "k00", "k01", "k02"]


def test_delete(admin: Client, table: str) -> None:
    admin.blobstore.put(table, "d", b"x")
    admin.blobstore.delete(table, "d")
    with pytest.raises(NotFoundError):
        admin.blobstore.get(table, "d")
    with pytest.raises(NotFoundError):
        admin.blobstore.get_metadata(table, "d")


def test_files_with_progress(admin: Client, table: str, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    data = pattern(2 * MIB + 5, seed=3)
    source.write_bytes(data)
    up: list[tuple[int, int | None]] = []
    meta = admin.blobstore.upload_file(table, "file", source,
                                       progress=lambda d, t: up.append((d, t)))
    assert meta.length == len(data)
    assert up[0] == (0, len(data)) and up[-1] == (len(data), len(data))
    target = tmp_path / "out.bin"
    down: list[tuple[int, int | None]] = []
    admin.blobstore.download_file(table, "file", target,
                                  progress=lambda d, t: down.append((d, t)))
    assert target.read_bytes() == data
    assert down[-1] == (len(data), len(data))
    with pytest.raises(NotFoundError):
        admin.blobstore.download_file(table, "missing", tmp_path / "never.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.bin", "out.bin"]


def _inject(server: Any, prefix: str, status: int = 503) -> None:
    tls = ssl.create_default_context(cafile=server.ca_bundle)
    r = httpx.post(f"{server.url}/api/_faults", verify=tls,
                   headers={"Authorization": f"Bearer {admin_token(server)}"},
                   json={"rules": [{"method": "PUT", "path_prefix": prefix,
                                    "status": status}]})
    r.raise_for_status()


def test_replayable_bodies_are_retried_iterators_are_not(admin: Client, table: str,
                                                        ekodb_server: Any) -> None:
    data = pattern(2 * MIB, seed=4)
    _inject(ekodb_server, f"/api/blob/{table}/retry")
    assert admin.blobstore.put(table, "retry", io.BytesIO(data)).length == len(data)
    assert admin.blobstore.get(table, "retry").read() == data
    _inject(ekodb_server, f"/api/blob/{table}/once")
    with pytest.raises(ServerError):
        admin.blobstore.put(table, "once", iter([data[:100], data[100:]]))
    with pytest.raises(NotFoundError):
        admin.blobstore.get_metadata(table, "once")


def test_interrupted_upload_keeps_the_old_blob(admin: Client, table: str) -> None:
    admin.blobstore.put(table, "i", b"old")

    def failing() -> Iterator[bytes]:
        yield b"x" * MIB
        raise OSError("disk went away")

    with pytest.raises(OSError):
        admin.blobstore.put(table, "i", failing())
    assert admin.blobstore.get(table, "i").read() == b"old"


def test_closing_a_blob_early_frees_the_connection(admin: Client, table: str) -> None:
    admin.blobstore.put(table, "e", pattern(4 * MIB))
    for _ in range(5):  # would exhaust a pool of 1 if responses leaked
        with admin.blobstore.get(table, "e") as blob:
            next(iter(blob.iter_bytes()))
    assert admin.blobstore.get_metadata(table, "e").length == 4 * MIB


def test_a_download_that_does_not_match_its_checksum_raises() -> None:
    body = b"tampered in transit"

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/auth/token":
            return httpx.Response(200, json={"token": make_token()})
        return httpx.Response(200, content=body, headers={
            "X-Blob-Length": str(len(body)), "X-Blob-Sha256": "0" * 64,
            "X-Blob-Md5": "0" * 32, "X-Blob-Timestamp": "2024-01-01T00:00:00Z"})

    with Client(base_url="https://blobs.example", api_key="eko_test_x",
                transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(IntegrityError):
            client.blobstore.get("t", "b").read()
        assert client.blobstore.get("t", "b", byte_range=(0, 3)).read() == body


def test_permissions_through_a_scoped_view(admin: Client, table: str) -> None:
    admin.blobstore.put(table, "p", b"shared")
    key = admin.admin.create_key("blob-reader",
                                 collection_permissions={f"blob:{table}": ["read"]}).api_key
    view = Authenticator(admin).using_credentials(key)
    assert view.blobstore.get(table, "p").read() == b"shared"
    assert table in view.blobstore.list_tables()
    with pytest.raises(PermissionDeniedError):
        view.blobstore.put(table, "p", b"mine now")
    with pytest.raises(PermissionDeniedError):
        view.blobstore.create_table(table + "x")
    assert admin.blobstore.get(table, "p").read() == b"shared"


async def test_async_client_round_trip(async_admin: AsyncClient, tmp_path: Path) -> None:
    bs = async_admin.blobstore
    table = "asy" + uuid.uuid4().hex[:10]
    await bs.create_table(table)
    data = pattern(3 * CHUNK + 1, seed=5)
    meta = await bs.put(table, "a", data)
    assert meta.sha256 == hashlib.sha256(data).hexdigest()
    async with await bs.get(table, "a") as blob:
        assert await blob.aread() == data

    async def agen() -> AsyncIterator[bytes]:
        for start in range(0, len(data), CHUNK):
            yield data[start:start + CHUNK]

    assert (await bs.put(table, "b", agen())).sha256 == meta.sha256
    blob = await bs.get(table, "b", byte_range=(CHUNK - 1, CHUNK + 1))
    assert b"".join([c async for c in blob.aiter_bytes()]) == data[CHUNK - 1:CHUNK + 1]
    assert (await bs.put(table, "c", io.BytesIO(data))).length == len(data)
    source = tmp_path / "src"
    source.write_bytes(data)
    await bs.upload_file(table, "d", source)
    await bs.download_file(table, "d", tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == data
    assert [m.blob_id async for m in bs.list(table, page_size=2)] == ["a", "b", "c", "d"]
    # the sync Blob's names work on the async one with await / async for (SPEC §3)
    async with await bs.get(table, "c") as blob:
        assert await blob.read() == data
    tail = await bs.get(table, "c", byte_range=(-3, None))
    assert b"".join([c async for c in tail.iter_bytes()]) == data[-3:]
    assert (await bs.get_metadata(table, "c")).length == len(data)
    await bs.delete(table, "c")
    await bs.drop_table(table)
    assert table not in await bs.list_tables()


def test_a_tampered_blob_never_yields_wrong_bytes(admin: Client, table: str,
                                                  ekodb_server: Any) -> None:
    data = pattern(3 * CHUNK, seed=6)
    admin.blobstore.put(table, "x", data)
    store = ekodb_server.server.state.blobs
    path = store.path_of(store.metadata(table, "x"))
    sealed = SEALED
    raw = path.read_bytes()
    path.write_bytes(raw[:sealed] + raw[2 * sealed:3 * sealed] + raw[sealed:2 * sealed])
    with pytest.raises(TransportError):  # headers went out, then the stream was cut
        admin.blobstore.get(table, "x").read()
    with pytest.raises(ServerError) as caught:  # the first chunk needed is checked up front
        admin.blobstore.get(table, "x", byte_range=(CHUNK, None))
    assert caught.value.code == "blob_corrupted"


def _steady(calls: list[tuple[int, int | None]], total: int, step: int) -> None:
    """Starts at 0, ends at total, never goes back, and moves by at least ``step`` a call."""
    done = [d for d, _ in calls]
    assert done[0] == 0 and done[-1] == total and done == sorted(done)
    assert all(b - a >= step for a, b in itertools.pairwise(done[:-1]))  # the end: any gap
    assert len(calls) <= total // step + 2


def test_progress_comes_about_every_mib_both_ways(admin: Client, table: str,
                                                  tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    data = pattern(6 * MIB + 3, seed=5)
    source.write_bytes(data)
    up: list[tuple[int, int | None]] = []
    down: list[tuple[int, int | None]] = []
    admin.blobstore.upload_file(table, "steady", source, progress=lambda d, t: up.append((d, t)))
    admin.blobstore.download_file(table, "steady", tmp_path / "out.bin",
                                  progress=lambda d, t: down.append((d, t)))
    _steady(up, len(data), MIB)
    _steady(down, len(data), MIB)  # the transport hands over ~64 KiB at a time
    streamed: list[tuple[int, int | None]] = []
    admin.blobstore.put(table, "gen", iter([data[i:i + 100_000]
                                            for i in range(0, len(data), 100_000)]),
                        progress=lambda d, t: streamed.append((d, t)))
    assert streamed[-1] == (len(data), None) and len(streamed) <= 8


def test_progress_of_a_big_transfer_comes_every_percent() -> None:
    calls: list[int] = []
    total = 1000 * MIB
    gate = ProgressGate(lambda d, t: calls.append(d), total)
    for done in range(0, total + 1, 64 * 1024):
        gate(done)
    assert calls[0] == 0 and calls[-1] == total
    assert 100 <= len(calls) <= 102  # every 10 MiB (1 %), not every MiB


class _FlipOneByte(httpx.BaseTransport):
    """A real transport that corrupts one byte of each blob upload on its way out (headers
    untouched): what a faulty proxy or NIC would do, which a real server cannot on demand."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.sent: list[httpx.Headers] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and request.url.path.startswith("/api/blob/") \
                and not request.url.path.startswith("/api/blob/_tables"):
            body = bytearray(request.read())
            body[len(body) // 2] ^= 0x01
            self.sent.append(request.headers)
            request = httpx.Request(request.method, request.url, headers=request.headers,
                                    content=bytes(body), extensions=request.extensions)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_an_upload_corrupted_in_transit_is_refused_by_its_sha256(ekodb_server: Any,
                                                                  table: str) -> None:
    data = pattern(256 * 1024)
    ctx = ssl.create_default_context(cafile=str(ekodb_server.ca_bundle))
    flip = _FlipOneByte(httpx.HTTPTransport(verify=ctx))
    with Client(base_url=ekodb_server.url, api_key=ekodb_server.admin_key,
                transport=flip) as client:
        with pytest.raises(APIError) as info:
            client.blobstore.put(table, "corrupt", data)
        assert info.value.status == 400 and info.value.code == "checksum_mismatch"
        # the SHA-256 alone caught it (the SDK no longer spends CPU on an MD5)
        assert flip.sent and all("content-md5" not in h for h in flip.sent)
        assert flip.sent[0]["x-checksum-sha256"] == hashlib.sha256(data).hexdigest()
        with pytest.raises(NotFoundError):
            client.blobstore.get_metadata(table, "corrupt")
