"""BlobStore over HTTP (SPEC §4.4, §4.6): streaming, ranges, checksums, atomic swap, tamper."""

from __future__ import annotations

import base64
import hashlib
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mock_server.blobs import CHUNK, SEALED, BlobStore, parse_range
from mock_server.errors import ApiError
from mock_server.pytest_plugin import ServerFactory, ServerInfo
from tests.server.conftest import Api, assert_error, tls_context


def _pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes where every position differs from its neighbours' chunks."""
    block = hashlib.sha256(str(seed).encode()).digest() * 8  # 256 bytes
    out = bytearray()
    i = 0
    while len(out) < size:
        out += bytes((b + i) % 256 for b in block)
        i += 1
    return bytes(out[:size])


class Blobs:
    """A fresh table and helpers for one test."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.table = "t" + uuid.uuid4().hex[:12]
        self.auth = api.admin
        r = api.http.put(f"/api/blob/_tables/{self.table}", headers=self.auth,
                         json={"attributes": {"owner": "tests"}})
        assert r.status_code == 201, r.text

    @property
    def store(self) -> BlobStore:
        state = self.api.info.server.state
        assert state is not None and state.blobs is not None
        return state.blobs

    def url(self, blob_id: str) -> str:
        return f"/api/blob/{self.table}/{blob_id}"

    def put(self, blob_id: str, data: bytes, **headers: str) -> httpx.Response:
        return self.api.http.put(self.url(blob_id), content=data,
                                 headers={**self.auth, **headers})

    def get(self, blob_id: str, **headers: str) -> httpx.Response:
        return self.api.http.get(self.url(blob_id), headers={**self.auth, **headers})

    def table_dir(self) -> Path:
        return self.store.root / self.store.get_table(self.table).uid

    def file_of(self, blob_id: str) -> Path:
        return self.store.path_of(self.store.metadata(self.table, blob_id))


@pytest.fixture
def blobs(api: Api) -> Blobs:
    return Blobs(api)


# ------------------------------------------------------------------------------ tables


def test_table_lifecycle(api: Api, blobs: Blobs) -> None:
    got = api.http.get(f"/api/blob/_tables/{blobs.table}", headers=blobs.auth)
    assert got.json()["attributes"] == {"owner": "tests"}
    names = [t["name"] for t in api.http.get("/api/blob/_tables", headers=blobs.auth).json()]
    assert blobs.table in names
    again = api.http.put(f"/api/blob/_tables/{blobs.table}", headers=blobs.auth)
    assert_error(again, 409, "table_exists")
    assert blobs.put("x", b"data").status_code == 200
    folder = blobs.table_dir()
    assert api.http.delete(f"/api/blob/_tables/{blobs.table}",
                           headers=blobs.auth).status_code == 200
    assert_error(api.http.get(f"/api/blob/_tables/{blobs.table}", headers=blobs.auth), 404)
    assert_error(blobs.get("x"), 404)
    assert not folder.exists()


@pytest.mark.parametrize("name", ["a%20b", "_tables2", "..", "a%2Fb", "x" * 129])
def test_bad_table_names_are_refused(api: Api, name: str) -> None:
    r = api.http.put(f"/api/blob/_tables/{name}", headers=api.admin)
    assert r.status_code in (400, 404), r.text
    assert r.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize("blob_id", ["..", "a%20b", "a%00b", "y" * 256])
def test_bad_blob_ids_are_refused(blobs: Blobs, blob_id: str) -> None:
    r = blobs.put(blob_id, b"x")
    assert r.status_code in (400, 404), r.text
    assert not list(blobs.table_dir().iterdir())


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17])
def test_round_trip_with_metadata(blobs: Blobs, size: int) -> None:
    data = _pattern(size, size)
    put = blobs.put("b", data, **{"Content-Type": "image/png",
                                  "X-Blob-Attributes": '{"k":"v","n":1}'})
    assert put.status_code == 200, put.text
    meta = put.json()
    assert meta["length"] == size
    assert meta["md5"] == hashlib.md5(data).hexdigest()
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["attributes"] == {"k": "v", "n": 1}
    got = blobs.get("b")
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["content-length"] == str(size)
    assert got.headers["x-blob-sha256"] == meta["sha256"]
    assert got.headers["content-type"] == "image/png"
    head = blobs.api.http.head(blobs.url("b"), headers=blobs.auth)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["x-blob-length"] == str(size)
    assert head.headers["content-length"] == str(size)


def test_replacement_and_delete(blobs: Blobs) -> None:
    blobs.put("b", b"first")
    first_file = blobs.file_of("b")
    blobs.put("b", b"second")
    assert blobs.get("b").content == b"second"
    assert not first_file.exists()
    second_file = blobs.file_of("b")
    assert blobs.api.http.delete(blobs.url("b"), headers=blobs.auth).status_code == 200
    assert_error(blobs.get("b"), 404)
    assert not second_file.exists()
    assert_error(blobs.api.http.delete(blobs.url("b"), headers=blobs.auth), 404)


def test_listing_pages_sorted_by_id(blobs: Blobs) -> None:
    for i in (3, 0, 2, 1, 4):
        blobs.put(f"id{i}", bytes([i]) * (i + 1))
    url = f"/api/blob/{blobs.table}"
    first = blobs.api.http.get(url, params={"limit": 2}, headers=blobs.auth).json()
    assert [m["blob_id"] for m in first] == ["id0", "id1"]
    rest = blobs.api.http.get(url, params={"limit": 10, "from": "id1"},
                              headers=blobs.auth).json()
    assert [m["blob_id"] for m in rest] == ["id2", "id3", "id4"]
    assert rest[0]["length"] == 3 and rest[0]["table"] == blobs.table


# ------------------------------------------------------------------------------ ranges


RANGE_DATA = _pattern(3 * CHUNK + 100, 7)


@pytest.mark.parametrize("spec,first,last", [
    ("0-0", 0, 0),
    (f"{CHUNK - 10}-{CHUNK + 10}", CHUNK - 10, CHUNK + 10),
    (f"{CHUNK - 1}-{2 * CHUNK}", CHUNK - 1, 2 * CHUNK),
    (f"{2 * CHUNK}-", 2 * CHUNK, len(RANGE_DATA) - 1),
    ("-150", len(RANGE_DATA) - 150, len(RANGE_DATA) - 1),
    (f"-{10 * CHUNK}", 0, len(RANGE_DATA) - 1),
    (f"5-{10 * CHUNK}", 5, len(RANGE_DATA) - 1),
])
def test_range_reads_equal_the_slice(blobs: Blobs, spec: str, first: int, last: int) -> None:
    blobs.put("r", RANGE_DATA)
    got = blobs.get("r", Range=f"bytes={spec}")
    assert got.status_code == 206, got.text
    assert got.content == RANGE_DATA[first:last + 1]
    assert got.headers["content-range"] == f"bytes {first}-{last}/{len(RANGE_DATA)}"


@pytest.mark.parametrize("spec", [f"bytes={3 * CHUNK + 100}-", "bytes=-0", "bytes=9-3",
                                  "bytes=0-1,4-5", "bytes=abc", "bytes=-"])
def test_unsatisfiable_ranges_answer_416(blobs: Blobs, spec: str) -> None:
    blobs.put("r", RANGE_DATA)
    got = blobs.get("r", Range=spec)
    assert_error(got, 416, "range_not_satisfiable")
    assert got.headers["content-range"] == f"bytes */{len(RANGE_DATA)}"


def test_any_range_of_an_empty_blob_is_unsatisfiable(blobs: Blobs) -> None:
    blobs.put("e", b"")
    got = blobs.get("e", Range="bytes=0-")
    assert_error(got, 416)
    assert got.headers["content-range"] == "bytes */0"


def test_other_range_units_are_ignored(blobs: Blobs) -> None:
    blobs.put("r", b"hello")
    got = blobs.get("r", Range="items=0-1")
    assert got.status_code == 200 and got.content == b"hello"


# ------------------------------------------------------------------------------ checksums


def test_checksums_are_verified_and_a_mismatch_changes_nothing(blobs: Blobs) -> None:
    old = b"old contents"
    blobs.put("c", old)
    new = _pattern(CHUNK * 2 + 3)
    wrong_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    assert_error(blobs.put("c", new, **{"Content-MD5": wrong_md5}), 400, "checksum_mismatch")
    wrong_sha = hashlib.sha256(b"other").hexdigest()
    assert_error(blobs.put("c", new, **{"X-Checksum-Sha256": wrong_sha}), 400,
                 "checksum_mismatch")
    assert_error(blobs.put("fresh", new, **{"X-Checksum-Sha256": wrong_sha}), 400)
    assert blobs.get("c").content == old
    assert_error(blobs.get("fresh"), 404)
    assert sorted(p.name.endswith(".blob") for p in blobs.table_dir().iterdir()) == [True]
    good = {"Content-MD5": base64.b64encode(hashlib.md5(new).digest()).decode(),
            "X-Checksum-Sha256": hashlib.sha256(new).hexdigest()}
    assert blobs.put("c", new, **good).status_code == 200
    assert blobs.get("c").content == new


@pytest.mark.parametrize("header", [{"Content-MD5": "not base64!"},
                                    {"X-Checksum-Sha256": "abc"},
                                    {"X-Blob-Attributes": "[1, 2]"},
                                    {"X-Blob-Attributes": "{bad json"}])
def test_malformed_upload_headers_are_refused_before_reading(blobs: Blobs,
                                                             header: dict[str, str]) -> None:
    assert_error(blobs.put("h", b"data", **header), 400)
    assert not list(blobs.table_dir().iterdir())


# ------------------------------------------------------------------------------ content type


@pytest.mark.parametrize("given,served", [
    ("image/png", "image/png"),
    ("application/pdf", "application/pdf"),
    ("text/html", "application/octet-stream"),
    ("image/svg+xml", "application/octet-stream"),
    ("application/javascript", "application/octet-stream"),
])
def test_content_type_is_served_only_from_the_safe_list(blobs: Blobs, given: str,
                                                         served: str) -> None:
    meta = blobs.put("ct", b"<script>alert(1)</script>", **{"Content-Type": given}).json()
    assert meta["content_type"] == given  # stored as given
    got = blobs.get("ct")
    assert got.headers["content-type"].split(";")[0] == served
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["x-blob-content-type"] == given


# ------------------------------------------------------------------------------ atomicity


def _raw_tls_socket(info: ServerInfo) -> ssl.SSLSocket:
    host, port = info.url.removeprefix("https://").rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=10)
    return tls_context(info).wrap_socket(raw, server_hostname=host)


def _wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_interrupted_upload_leaves_the_old_blob_and_no_temp_file(blobs: Blobs) -> None:
    old = _pattern(CHUNK + 5, 1)
    blobs.put("i", old)
    sock = _raw_tls_socket(blobs.api.info)
    token = blobs.auth["Authorization"]
    host = blobs.api.info.url.removeprefix("https://")
    sock.sendall((f"PUT {blobs.url('i')} HTTP/1.1\r\nHost: {host}\r\n"
                  f"Authorization: {token}\r\nContent-Length: {20 * CHUNK}\r\n\r\n").encode())
    sock.sendall(_pattern(5 * CHUNK, 2))
    assert _wait_for(lambda: any(p.name.endswith(".tmp") for p in blobs.table_dir().iterdir()))
    sock.close()
    assert _wait_for(lambda: not any(p.name.endswith(".tmp")
                                     for p in blobs.table_dir().iterdir()))
    assert blobs.get("i").content == old
    assert len(list(blobs.table_dir().iterdir())) == 1


def test_readers_see_the_old_or_the_new_blob_never_a_mix(blobs: Blobs) -> None:
    size = 4 * CHUNK + 3
    versions = {hashlib.sha256(bytes([c]) * size).hexdigest() for c in b"ab"}
    blobs.put("m", b"a" * size)
    stop = threading.Event()
    seen: list[str] = []
    errors: list[str] = []

    def read() -> None:
        with httpx.Client(base_url=blobs.api.info.url, verify=tls_context(blobs.api.info),
                          timeout=30) as http:
            while not stop.is_set():
                r = http.get(blobs.url("m"), headers=blobs.auth)
                digest = hashlib.sha256(r.content).hexdigest()
                if r.status_code != 200 or digest not in versions:
                    errors.append(f"{r.status_code} {len(r.content)}")
                seen.append(digest)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    for i in range(12):
        blobs.put("m", (b"ab"[i % 2:i % 2 + 1]) * size)
    stop.set()
    for t in readers:
        t.join()
    assert not errors
    assert len(seen) > 3
    assert len(list(blobs.table_dir().iterdir())) == 1


def test_max_blob_size_is_enforced_while_streaming(ekodb_server_factory: ServerFactory
                                                   ) -> None:
    info = ekodb_server_factory(body_limit_overrides={"/api/blob/": 3 * CHUNK})
    api = Api(info)
    try:
        b = Blobs(api)

        def body() -> Iterator[bytes]:  # chunked: no Content-Length to refuse up front
            for _ in range(8):
                yield b"z" * CHUNK

        r = api.http.put(b.url("big"), content=body(), headers=b.auth)
        assert_error(r, 413, "payload_too_large")
        assert_error(b.put("big2", b"z" * (3 * CHUNK + 1)), 413)
        assert b.put("ok", b"z" * (3 * CHUNK)).status_code == 200
        assert_error(b.get("big"), 404)
        assert [p.name.endswith(".blob") for p in b.table_dir().iterdir()] == [True]
    finally:
        api.close()


# ------------------------------------------------------------------------------ at rest


def test_no_plaintext_blob_bytes_or_attributes_on_disk(api: Api, blobs: Blobs) -> None:
    marker = uuid.uuid4().hex.encode()
    text = b"TOP SECRET " + marker + b" " + b"lorem ipsum " * 20_000
    attr = "ATTR" + uuid.uuid4().hex
    assert blobs.put("secret", text, **{"X-Blob-Attributes": f'{{"a":"{attr}"}}',
                                        "Content-Type": "text/plain"}).status_code == 200
    table_attr = "TABLEATTR" + uuid.uuid4().hex
    api.http.put(f"/api/blob/_tables/t{uuid.uuid4().hex[:8]}", headers=blobs.auth,
                 json={"attributes": {"x": table_attr}})
    needles = [marker, b"lorem ipsum lorem", attr.encode(), table_attr.encode(),
               hashlib.sha256(text).hexdigest().encode()]
    for path in api.info.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not [n for n in needles if n in data], path.name


# ------------------------------------------------------------------------------ tampering


def _swap_chunks(path: Path, a: int, b: int) -> None:
    data = bytearray(path.read_bytes())
    ca, cb = data[a * SEALED:(a + 1) * SEALED], data[b * SEALED:(b + 1) * SEALED]
    data[a * SEALED:(a + 1) * SEALED], data[b * SEALED:(b + 1) * SEALED] = cb, ca
    path.write_bytes(bytes(data))


def test_reordered_chunks_fail_the_read_closed(blobs: Blobs) -> None:
    data = _pattern(4 * CHUNK, 3)
    blobs.put("o", data)
    _swap_chunks(blobs.file_of("o"), 1, 2)
    # The first chunk is intact, so headers go out; the bad chunk aborts the connection.
    with pytest.raises(httpx.RemoteProtocolError):
        blobs.get("o")
    # A read starting at a bad chunk fails before any header: a clear error.
    assert_error(blobs.get("o", Range=f"bytes={CHUNK}-"), 500, "blob_corrupted")
    assert blobs.get("o", Range=f"bytes=0-{CHUNK - 1}").content == data[:CHUNK]


def test_a_chunk_moved_from_another_blob_fails(blobs: Blobs) -> None:
    blobs.put("x", _pattern(2 * CHUNK, 4))
    blobs.put("y", _pattern(2 * CHUNK, 5))
    fx, fy = blobs.file_of("x"), blobs.file_of("y")
    fx.write_bytes(fy.read_bytes()[:SEALED] + fx.read_bytes()[SEALED:])
    assert_error(blobs.get("x"), 500, "blob_corrupted")


def test_a_truncated_or_flipped_file_fails(blobs: Blobs) -> None:
    blobs.put("t", _pattern(3 * CHUNK, 6))
    path = blobs.file_of("t")
    original = path.read_bytes()
    path.write_bytes(original[:2 * SEALED])
    assert_error(blobs.get("t"), 500, "blob_corrupted")
    flipped = bytearray(original)
    flipped[100] ^= 1
    path.write_bytes(bytes(flipped))
    assert_error(blobs.get("t", Range="bytes=0-10"), 500, "blob_corrupted")


# ------------------------------------------------------------------------------ permissions


def test_permissions_follow_blob_scopes(api: Api, blobs: Blobs) -> None:
    blobs.put("p", b"visible")
    reader = api.create_key("reader", collection_permissions={
        f"blob:{blobs.table}": ["read"]})["api_key"]
    writer = api.create_key("writer", collection_permissions={
        f"blob:{blobs.table}": ["read", "write"]})["api_key"]
    other = api.create_key("other", collection_permissions={"blob:elsewhere": ["admin"]}
                           )["api_key"]
    r_h, w_h, o_h = api.headers(reader), api.headers(writer), api.headers(other)
    assert api.http.get(blobs.url("p"), headers=r_h).content == b"visible"
    assert_error(api.http.put(blobs.url("p"), content=b"no", headers=r_h), 403)
    assert_error(api.http.delete(blobs.url("p"), headers=r_h), 403)
    assert api.http.put(blobs.url("p"), content=b"yes", headers=w_h).status_code == 200
    assert_error(api.http.delete(f"/api/blob/_tables/{blobs.table}", headers=w_h), 403)
    assert_error(api.http.get(blobs.url("p"), headers=o_h), 403)
    assert_error(api.http.get(f"/api/blob/{blobs.table}", headers=o_h), 403)
    names = [t["name"] for t in api.http.get("/api/blob/_tables", headers=o_h).json()]
    assert blobs.table not in names
    assert api.http.put("/api/blob/_tables/elsewhere", headers=o_h).status_code == 201
    assert api.http.get(blobs.url("p"), headers=blobs.auth).content == b"yes"


@given(header=st.one_of(st.text(max_size=40), st.from_regex(r"bytes=[0-9²]{0,4}-[0-9]{0,4}")),
       length=st.integers(0, 5000))
def test_range_parsing_never_fails_other_than_416(header: str, length: int) -> None:
    try:
        got = parse_range(header, length)
    except ApiError as exc:
        assert exc.status == 416
        assert exc.headers["Content-Range"] == f"bytes */{length}"
        return
    if got is not None:
        first, last = got
        assert 0 <= first <= last < length
