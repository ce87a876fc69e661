"""Blob bodies and downloads: streamed both ways, never held whole in memory.

Upload bodies: ``bytes`` and seekable binary files are *replayable* (hashed first, then sent
with ``X-Checksum-Sha256`` so the service verifies them, and re-read from the start if a
retry is needed); iterators and non-seekable files are sent once, hashed while they stream,
and the digest is compared with what the service recorded afterwards.

Only SHA-256 is computed client-side: it alone protects the bytes end to end (the service
refuses a mismatch, and it still records the MD5 itself for ``BlobMetadata.md5``). MD5 cost
more CPU per byte than SHA-256 (with SHA-NI) and made uploads ~1.5x slower for no added safety.
On the async client, file reads run in a worker thread (``asyncio.to_thread``) per 1 MiB,
while a plain (sync) iterator given to the async client is iterated on the event loop.

Downloads: :class:`Blob` / :class:`AsyncBlob` wrap a streamed response; a full download is
hashed as it is iterated and raises :class:`~ekoclient.errors.IntegrityError` at the end if
its SHA-256 or length differ from the metadata.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, BinaryIO

from typing_extensions import Self

from ._http import AsyncTransport, Response, SyncTransport
from .errors import IntegrityError, InvalidArgumentError
from .models import BlobMetadata

#: Bytes read from a file per step.
READ_SIZE = 1024 * 1024

Progress = Callable[[int, int | None], object]
BlobData = bytes | bytearray | memoryview | BinaryIO | Iterable[bytes] | AsyncIterable[bytes]


class _Hasher:
    """sha256 + length of whatever passes through (see the module docstring: no md5)."""

    __slots__ = ("length", "sha256")

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.length = 0

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        self.length += len(data)

    def headers(self) -> dict[str, str]:
        return {"X-Checksum-Sha256": self.sha256.hexdigest()}

    def check(self, meta: BlobMetadata) -> BlobMetadata:
        """After a streamed upload: did the service record what we sent?"""
        if meta.sha256 != self.sha256.hexdigest() or meta.length != self.length:
            raise IntegrityError(
                f"blob {meta.blob_id!r} was stored with sha256 {meta.sha256} and length "
                f"{meta.length}, but {self.length} bytes with sha256 "
                f"{self.sha256.hexdigest()} were sent")
        return meta


class UploadBody:
    """A prepared upload: what to send, its headers, and whether a retry may resend it."""

    def __init__(self, content: Any, headers: dict[str, str], replayable: bool,
                 hasher: _Hasher | None) -> None:
        self.content = content
        self.headers = headers
        self.replayable = replayable
        #: Set for bodies hashed while streaming: compare with the answer afterwards.
        self.stream_hasher = hasher


def _is_file(data: object) -> bool:
    return hasattr(data, "read") and not isinstance(data, (bytes, bytearray, memoryview))


def _seekable(f: Any) -> bool:
    try:
        return bool(f.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _hash_file(f: BinaryIO) -> tuple[_Hasher, int]:
    """One pass over a seekable file from its current position; leaves it where it started."""
    start = f.tell()
    hasher = _Hasher()
    while chunk := f.read(READ_SIZE):
        if not isinstance(chunk, bytes):
            raise InvalidArgumentError("blob files must be opened in binary mode ('rb')")
        hasher.update(chunk)
    f.seek(start)
    return hasher, start


PROGRESS_STEP = 1024 * 1024


class ProgressGate:
    """Calls ``progress(done, total)`` at a sane rate: at the start, then each time the
    transfer has moved on by 1 MiB or 1 % of ``total`` (whichever is larger: about a hundred
    calls for a big blob, one per MiB for a small one), and at the end. Every call of the
    gate with ``done == total`` reports, so the last call always says "finished"."""

    __slots__ = ("_last", "_next", "_progress", "_step", "_total")

    def __init__(self, progress: Progress | None, total: int | None) -> None:
        self._progress = progress
        self._total = total
        self._step = max(PROGRESS_STEP, total // 100) if total else PROGRESS_STEP
        self._next = 0
        self._last = -1

    def __call__(self, done: int) -> None:
        if self._progress is None or done == self._last:
            return
        if done >= self._next or done == self._total:
            self._progress(done, self._total)
            self._last = done
            self._next = done + self._step

    def finish(self, done: int) -> None:
        """The transfer ended at ``done`` bytes (report it unless just reported)."""
        if self._progress is not None and done != self._last:
            self._progress(done, self._total)
            self._last = done


class _FileBody:
    """Re-iterable view of a seekable file region (sync): each iteration starts over."""

    def __init__(self, f: BinaryIO, start: int, length: int, progress: Progress | None) -> None:
        self._f, self._start, self._length, self._progress = f, start, length, progress

    def __iter__(self) -> Iterator[bytes]:
        self._f.seek(self._start)
        done = 0
        gate = ProgressGate(self._progress, self._length)
        gate(0)
        while done < self._length:
            chunk = self._f.read(min(READ_SIZE, self._length - done))
            if not chunk:
                break
            done += len(chunk)
            yield chunk
            gate(done)


class _AsyncFileBody:
    """Re-iterable async view of a seekable file region; reads run in a worker thread."""

    def __init__(self, f: BinaryIO, start: int, length: int, progress: Progress | None) -> None:
        self._f, self._start, self._length, self._progress = f, start, length, progress

    async def __aiter__(self) -> AsyncIterator[bytes]:
        await asyncio.to_thread(self._f.seek, self._start)
        done = 0
        gate = ProgressGate(self._progress, self._length)
        gate(0)
        while done < self._length:
            chunk = await asyncio.to_thread(self._f.read, min(READ_SIZE, self._length - done))
            if not chunk:
                break
            done += len(chunk)
            yield chunk
            gate(done)


def _hashing(chunks: Iterable[bytes], hasher: _Hasher, progress: Progress | None
             ) -> Iterator[bytes]:
    gate = ProgressGate(progress, None)  # size unknown: every MiB, and at the end
    for chunk in chunks:
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise InvalidArgumentError(f"blob data must yield bytes, got {type(chunk).__name__}")
        chunk = bytes(chunk)
        hasher.update(chunk)
        yield chunk
        gate(hasher.length)
    gate.finish(hasher.length)


async def _ahashing(chunks: Iterable[bytes] | AsyncIterable[bytes], hasher: _Hasher,
                    progress: Progress | None) -> AsyncIterator[bytes]:
    if isinstance(chunks, AsyncIterable):
        gate = ProgressGate(progress, None)
        async for chunk in chunks:
            hasher.update(chunk)
            yield chunk
            gate(hasher.length)
        gate.finish(hasher.length)
    else:
        for chunk in _hashing(chunks, hasher, progress):
            yield chunk


def _file_reader(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(READ_SIZE):
        yield chunk


def prepare_sync(data: BlobData, progress: Progress | None = None) -> UploadBody:
    """An upload body for the blocking client."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return _from_bytes(bytes(data))
    if _is_file(data) and _seekable(data):
        hasher, start = _hash_file(data)  # type: ignore[arg-type]
        body = _FileBody(data, start, hasher.length, progress)  # type: ignore[arg-type]
        return _replayable(body, hasher)
    if _is_file(data):
        data = _file_reader(data)  # type: ignore[arg-type]
    if isinstance(data, str) or not isinstance(data, Iterable):
        raise _bad_data(data)
    hasher = _Hasher()
    return UploadBody(_hashing(data, hasher, progress), {}, False, hasher)


async def prepare_async(data: BlobData, progress: Progress | None = None) -> UploadBody:
    """An upload body for the asyncio client (file reads in a worker thread)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return _from_bytes(bytes(data))
    if _is_file(data) and _seekable(data):
        hasher, start = await asyncio.to_thread(_hash_file, data)  # type: ignore[arg-type]
        body = _AsyncFileBody(data, start, hasher.length, progress)  # type: ignore[arg-type]
        return _replayable(body, hasher)
    hasher = _Hasher()
    if _is_file(data):
        f: Any = data

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await asyncio.to_thread(f.read, READ_SIZE):
                yield chunk

        return UploadBody(_ahashing(chunks(), hasher, progress), {}, False, hasher)
    if isinstance(data, str) or not isinstance(data, (Iterable, AsyncIterable)):
        raise _bad_data(data)
    return UploadBody(_ahashing(data, hasher, progress), {}, False, hasher)  # type: ignore[arg-type]


def _from_bytes(data: bytes) -> UploadBody:
    hasher = _Hasher()
    hasher.update(data)
    return UploadBody(data, hasher.headers(), True, None)


def _replayable(content: Any, hasher: _Hasher) -> UploadBody:
    headers = hasher.headers()
    headers["Content-Length"] = str(hasher.length)
    return UploadBody(content, headers, True, None)


def _bad_data(data: object) -> InvalidArgumentError:
    return InvalidArgumentError(
        "blob data must be bytes, a binary file object or an iterator of bytes, got "
        f"{type(data).__name__}" + (" (encode text first)" if isinstance(data, str) else ""))


# ------------------------------------------------------------------------------ downloads


def metadata_from_headers(table: str, blob_id: str, response: Response) -> BlobMetadata:
    h = response.headers
    try:
        attributes = json.loads(h.get("x-blob-attributes") or "{}")
    except ValueError:
        attributes = {}
    stamp = h.get("x-blob-timestamp")
    return BlobMetadata(
        table=table, blob_id=blob_id,
        length=int(h.get("x-blob-length", "0")),
        md5=h.get("x-blob-md5", ""), sha256=h.get("x-blob-sha256", ""),
        content_type=h.get("x-blob-content-type") or h.get("content-type")
        or "application/octet-stream",
        timestamp=datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp
        else datetime.now(timezone.utc),
        attributes=attributes if isinstance(attributes, dict) else {},
    )


def range_header(byte_range: tuple[int, int | None] | None) -> dict[str, str]:
    """``(start, stop)`` with Python slice meaning (stop exclusive, None = to the end);
    a negative start with stop None means the last ``-start`` bytes."""
    if byte_range is None:
        return {}
    try:
        start, stop = byte_range
    except (TypeError, ValueError):
        raise InvalidArgumentError("byte_range is a (start, stop) pair") from None
    if not isinstance(start, int) or not (stop is None or isinstance(stop, int)):
        raise InvalidArgumentError("byte_range bounds must be integers (stop may be None)")
    if start < 0:
        if stop is not None:
            raise InvalidArgumentError("a negative start (the last n bytes) needs stop=None")
        return {"Range": f"bytes=-{-start}"}
    if stop is None:
        return {"Range": f"bytes={start}-"}
    if stop <= start:
        raise InvalidArgumentError("byte_range stop must be greater than start")
    return {"Range": f"bytes={start}-{stop - 1}"}


class _BlobBase:
    def __init__(self, table: str, blob_id: str, response: Response, whole: bool) -> None:
        self.metadata = metadata_from_headers(table, blob_id, response)
        self._response = response
        #: True for a full download: its bytes are checked against metadata.sha256.
        self._verify = whole and response.status_code == 200
        self._hasher = _Hasher()
        self._used = False
        cr = response.headers.get("content-range")
        self.content_range: tuple[int, int, int] | None = None
        if cr and cr.startswith("bytes ") and "/" in cr and "-" in cr:
            span, total = cr[6:].split("/", 1)
            first, last = span.split("-", 1)
            self.content_range = (int(first), int(last), int(total))

    @property
    def length(self) -> int:
        """Bytes this response carries (the range's size for a partial read)."""
        if self.content_range is not None:
            return self.content_range[1] - self.content_range[0] + 1
        return self.metadata.length

    def _start(self) -> None:
        if self._used:
            raise InvalidArgumentError("the blob's bytes can be iterated only once")
        self._used = True

    def _seen(self, chunk: bytes) -> None:
        if self._verify:
            self._hasher.update(chunk)

    def _finish(self) -> None:
        if self._verify and (self._hasher.sha256.hexdigest() != self.metadata.sha256
                             or self._hasher.length != self.metadata.length):
            raise IntegrityError(
                f"blob {self.metadata.blob_id!r}: the downloaded bytes do not match the "
                f"recorded sha256 {self.metadata.sha256} (got {self._hasher.length} bytes)")

    def __repr__(self) -> str:
        m = self.metadata
        return f"<{type(self).__name__} {m.table}/{m.blob_id} {self.length} bytes>"


class Blob(_BlobBase):
    """A blob being downloaded: ``metadata`` now, bytes as you iterate. Close it (or use
    ``with``) if you stop early, so the connection returns to the pool."""

    def iter_bytes(self, chunk_size: int | None = None) -> Iterator[bytes]:
        self._start()
        try:
            for chunk in SyncTransport.iter_bytes(self._response, chunk_size):
                self._seen(chunk)
                yield chunk
            self._finish()
        finally:
            self.close()

    def read(self) -> bytes:
        """All the bytes at once (for blobs you know to be small)."""
        return b"".join(self.iter_bytes())

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncBlob(_BlobBase):
    """The asyncio flavour of :class:`Blob` (``aiter_bytes``, ``aread``, ``async with``)."""

    async def aiter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        self._start()
        try:
            async for chunk in AsyncTransport.iter_bytes(self._response, chunk_size):
                self._seen(chunk)
                yield chunk
            self._finish()
        finally:
            await self.aclose()

    async def aread(self) -> bytes:
        buf = io.BytesIO()
        async for chunk in self.aiter_bytes():
            buf.write(chunk)
        return buf.getvalue()

    async def aclose(self) -> None:
        await self._response.aclose()

    # The names of the sync Blob, so code moving to AsyncClient only adds await / async for.
    read = aread
    iter_bytes = aiter_bytes
    close = aclose

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()
