"""Tables of binary blobs, streamed both ways (SPEC §3 BlobStore, wire format §4.4).

Plain endpoints use :func:`endpoint`; ``put``, ``get`` and the file helpers prepare their
body or wrap their streamed answer differently on the blocking and the asyncio client, so
they are methods that pick the flavour from ``executor.is_async`` (typed with self-type
overloads) and then run the same module-level call descriptions.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, overload

from pydantic import TypeAdapter
from typing_extensions import Unpack

from .._blob import (
    AsyncBlob,
    Blob,
    BlobData,
    Progress,
    ProgressGate,
    UploadBody,
    metadata_from_headers,
    prepare_async,
    prepare_sync,
    range_header,
)
from .._call import Call, json_call, parse_none, segment
from .._executor import AsyncExecutor, SyncExecutor
from .._http import Response
from .._options import check_idempotency_key
from .._paging import Pager, paged
from .._service import E, Service, WriteOptions, endpoint
from ..errors import APIError, EkoError, InvalidArgumentError, NotFoundError
from ..models import BlobMetadata

_METAS = TypeAdapter(list[BlobMetadata])
ByteRange = tuple[int, int | None]
#: Bytes buffered before an async download writes to disk (in a worker thread).
_WRITE_BATCH = 1024 * 1024


def _table_path(table: str) -> str:
    return f"/api/blob/_tables/{segment(table, 'table')}"


def _blob_path(table: str, blob_id: str) -> str:
    return f"/api/blob/{segment(table, 'table')}/{segment(blob_id, 'blob id')}"


def _create_table(table: str, attributes: Mapping[str, Any] | None = None,
                  **write: Unpack[WriteOptions]) -> Call[None]:
    """Create a table (needs admin on ``blob:<table>``), with optional JSON attributes."""
    return json_call("PUT", _table_path(table), parse_none,
                     {"attributes": dict(attributes or {})})


def _drop_table(table: str, **write: Unpack[WriteOptions]) -> Call[None]:
    """Drop a table and every blob in it (needs admin on ``blob:<table>``)."""
    return json_call("DELETE", _table_path(table), parse_none)


def _list_tables() -> Call[list[str]]:
    """Names of the tables this key may read."""
    return json_call("GET", "/api/blob/_tables", lambda r: [t["name"] for t in r.json()])


def _table_attributes(table: str) -> Call[dict[str, Any]]:
    """The attributes a table was created with."""
    return json_call("GET", _table_path(table), lambda r: dict(r.json()["attributes"]))


def _put(table: str, blob_id: str, body: UploadBody, content_type: str | None,
         attributes: Mapping[str, Any] | None) -> Call[BlobMetadata]:
    headers = dict(body.headers)
    headers["Content-Type"] = content_type or "application/octet-stream"
    if attributes:
        try:
            headers["X-Blob-Attributes"] = json.dumps(dict(attributes), separators=(",", ":"),
                                                      allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"blob attributes must be plain JSON: {exc}") from exc
    hasher = body.stream_hasher

    def parse(response: Response) -> BlobMetadata:
        meta = BlobMetadata.model_validate_json(response.content)
        return hasher.check(meta) if hasher is not None else meta

    return Call("PUT", _blob_path(table, blob_id), parse, content=body.content,
                headers=headers, replayable=body.replayable)


def _get(table: str, blob_id: str, byte_range: ByteRange | None,
         wrap: Callable[[str, str, Response, bool], Any]) -> Call[Any]:
    headers = range_header(byte_range)
    return Call("GET", _blob_path(table, blob_id),
                lambda r: wrap(table, blob_id, r, byte_range is None),
                headers=headers, stream=True)


def _head_error(table: str, blob_id: str) -> Callable[[APIError], EkoError]:
    """A HEAD answer has no body, so the server cannot say what was missing: the SDK can."""
    def explain(error: APIError) -> EkoError:
        if error.status != 404 or error.code not in ("unknown", "not_found"):
            return error
        return NotFoundError(
            f"no blob {blob_id!r} in table {table!r} (or this key may not read it); "
            "check the id, or list the table with blobstore.list(table)",
            status=404, code="not_found", request_id=error.request_id)
    return explain


def _get_metadata(table: str, blob_id: str) -> Call[BlobMetadata]:
    """A blob's metadata without its bytes (HEAD)."""
    return Call("HEAD", _blob_path(table, blob_id),
                lambda r: metadata_from_headers(table, blob_id, r),
                explain=_head_error(table, blob_id))


def _delete(table: str, blob_id: str, **write: Unpack[WriteOptions]) -> Call[None]:
    """Delete one blob."""
    return json_call("DELETE", _blob_path(table, blob_id), parse_none)


class _AfterPager(Pager[BlobMetadata]):
    """Keyset paging: each page starts after the last blob id of the previous one."""

    def __init__(self, table: str, page_size: int, limit: int | None) -> None:
        self._table = table
        self._page_size = page_size
        self._remaining = limit
        self._after: str | None = None
        self._done = False

    def _size(self) -> int:
        return self._page_size if self._remaining is None else min(self._page_size,
                                                                    self._remaining)

    def next_call(self) -> Call[list[BlobMetadata]] | None:
        if self._done or self._remaining == 0:
            return None
        params: dict[str, str | int | float | bool] = {"limit": self._size()}
        if self._after is not None:
            params["from"] = self._after
        return Call("GET", f"/api/blob/{segment(self._table, 'table')}",
                    lambda r: _METAS.validate_json(r.content), params=params)

    def feed(self, page: list[BlobMetadata]) -> list[BlobMetadata]:
        if len(page) < self._size():
            self._done = True
        if page:
            self._after = page[-1].blob_id
        if self._remaining is not None:
            self._remaining -= len(page)
        return page


def _list(table: str, *, page_size: int = 100, limit: int | None = None
          ) -> Pager[BlobMetadata]:
    """Metadata of every blob in a table, sorted by id, fetched a page at a time."""
    if not 1 <= page_size <= 1000:
        raise InvalidArgumentError("page_size must be between 1 and 1000")
    segment(table, "table")
    return _AfterPager(table, page_size, limit)


def _temp_beside(target: Path) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}.part")


class BlobStore(Service[E]):
    """Binary blobs in tables; uploads and downloads stream, so size is not bounded by RAM."""

    __slots__ = ()

    create_table = endpoint(_create_table)
    drop_table = endpoint(_drop_table)
    list_tables = endpoint(_list_tables)
    table_attributes = endpoint(_table_attributes)
    get_metadata = endpoint(_get_metadata)
    delete = endpoint(_delete)
    list = paged(_list)

    def _sync(self) -> SyncExecutor:
        executor = self._executor
        assert isinstance(executor, SyncExecutor)
        return executor

    def _async(self) -> AsyncExecutor:
        executor = self._executor
        assert isinstance(executor, AsyncExecutor)
        return executor

    # ------------------------------------------------------------------ put

    @overload
    def put(self: BlobStore[SyncExecutor], table: str, blob_id: str, data: BlobData, *,
            content_type: str | None = None, attributes: Mapping[str, Any] | None = None,
            progress: Progress | None = None,
            idempotency_key: str | None = None) -> BlobMetadata: ...
    @overload
    def put(self: BlobStore[AsyncExecutor], table: str, blob_id: str, data: BlobData, *,
            content_type: str | None = None, attributes: Mapping[str, Any] | None = None,
            progress: Progress | None = None,
            idempotency_key: str | None = None) -> Awaitable[BlobMetadata]: ...

    def put(self, table: str, blob_id: str, data: BlobData, *,
            content_type: str | None = None, attributes: Mapping[str, Any] | None = None,
            progress: Progress | None = None, idempotency_key: str | None = None) -> Any:
        """Store ``data`` (bytes, a binary file, or an iterator of bytes) under ``blob_id``.

        Replaces an existing blob atomically: readers see the old or the new bytes.
        ``progress(bytes_sent, total)`` as for ``upload_file`` (total None for an iterator).
        """
        _blob_path(table, blob_id)  # refuse bad names before touching the data
        key = check_idempotency_key(idempotency_key) if idempotency_key is not None else None
        if self._executor.is_async:
            return self._aput(table, blob_id, data, content_type, attributes, progress, key)
        return self._sput(table, blob_id, data, content_type, attributes, progress, key)

    def _sput(self, table: str, blob_id: str, data: BlobData, content_type: str | None,
              attributes: Mapping[str, Any] | None, progress: Progress | None,
              idempotency_key: str | None = None) -> BlobMetadata:
        body = prepare_sync(data, progress)
        return self._sync().execute(_put(table, blob_id, body, content_type, attributes),
                                    self._credential, idempotency_key=idempotency_key,
                                    operation="put", target=table)

    async def _aput(self, table: str, blob_id: str, data: BlobData,
                    content_type: str | None, attributes: Mapping[str, Any] | None,
                    progress: Progress | None, idempotency_key: str | None = None
                    ) -> BlobMetadata:
        body = await prepare_async(data, progress)
        return await self._async().execute(
            _put(table, blob_id, body, content_type, attributes), self._credential,
            idempotency_key=idempotency_key, operation="put", target=table)

    # ------------------------------------------------------------------ get

    @overload
    def get(self: BlobStore[SyncExecutor], table: str, blob_id: str, *,
            byte_range: ByteRange | None = None) -> Blob: ...
    @overload
    def get(self: BlobStore[AsyncExecutor], table: str, blob_id: str, *,
            byte_range: ByteRange | None = None) -> Awaitable[AsyncBlob]: ...

    def get(self, table: str, blob_id: str, *, byte_range: ByteRange | None = None) -> Any:
        """Open a blob for streaming: ``.metadata`` at once, bytes as you iterate.

        ``byte_range=(start, stop)`` reads ``blob[start:stop]`` (stop None = to the end;
        ``(-n, None)`` = the last n bytes). A full read is checked against its SHA-256.
        Use it as a context manager (``async with await ...get(...)`` on AsyncClient).
        """
        wrap = AsyncBlob if self._executor.is_async else Blob
        return self._executor.execute(_get(table, blob_id, byte_range, wrap),
                                      self._credential)

    # ------------------------------------------------------------------ files

    @overload
    def upload_file(self: BlobStore[SyncExecutor], table: str, blob_id: str,
                    path: str | os.PathLike[str], *, content_type: str | None = None,
                    attributes: Mapping[str, Any] | None = None,
                    progress: Progress | None = None) -> BlobMetadata: ...
    @overload
    def upload_file(self: BlobStore[AsyncExecutor], table: str, blob_id: str,
                    path: str | os.PathLike[str], *, content_type: str | None = None,
                    attributes: Mapping[str, Any] | None = None,
                    progress: Progress | None = None) -> Awaitable[BlobMetadata]: ...

    def upload_file(self, table: str, blob_id: str, path: str | os.PathLike[str], *,
                    content_type: str | None = None,
                    attributes: Mapping[str, Any] | None = None,
                    progress: Progress | None = None) -> Any:
        """Upload a file, streamed; ``progress(bytes_sent, total)`` at the start, every MiB
        or 1 % (whichever is larger) and at the end.

        The content type defaults to a guess from the file name. On a retry the file is
        sent again from the start, so progress may go back to 0.
        """
        _blob_path(table, blob_id)
        if content_type is None:
            content_type = mimetypes.guess_type(os.fspath(path))[0]
        if self._executor.is_async:
            return self._aupload_file(table, blob_id, path, content_type, attributes, progress)
        with open(path, "rb") as f:
            return self._sput(table, blob_id, f, content_type, attributes, progress)

    async def _aupload_file(self, table: str, blob_id: str, path: str | os.PathLike[str],
                            content_type: str | None, attributes: Mapping[str, Any] | None,
                            progress: Progress | None) -> BlobMetadata:
        f: BinaryIO = await asyncio.to_thread(open, path, "rb")
        try:
            return await self._aput(table, blob_id, f, content_type, attributes, progress)
        finally:
            await asyncio.to_thread(f.close)

    @overload
    def download_file(self: BlobStore[SyncExecutor], table: str, blob_id: str,
                      path: str | os.PathLike[str], *, progress: Progress | None = None
                      ) -> BlobMetadata: ...
    @overload
    def download_file(self: BlobStore[AsyncExecutor], table: str, blob_id: str,
                      path: str | os.PathLike[str], *, progress: Progress | None = None
                      ) -> Awaitable[BlobMetadata]: ...

    def download_file(self, table: str, blob_id: str, path: str | os.PathLike[str], *,
                      progress: Progress | None = None) -> Any:
        """Download to ``path`` via a temp file beside it, renamed into place only once
        every byte arrived and matched the recorded SHA-256; ``progress(done, total)``."""
        target = Path(path)
        if self._executor.is_async:
            return self._adownload_file(table, blob_id, target, progress)
        tmp = _temp_beside(target)
        blob: Blob = self._sync().execute(_get(table, blob_id, None, Blob), self._credential)
        with blob:
            total, done = blob.metadata.length, 0
            gate = ProgressGate(progress, total)
            try:
                with open(tmp, "wb") as f:
                    gate(0)
                    for chunk in blob.iter_bytes():
                        f.write(chunk)
                        done += len(chunk)
                        gate(done)
                    gate.finish(done)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        return blob.metadata

    async def _adownload_file(self, table: str, blob_id: str, target: Path,
                              progress: Progress | None) -> BlobMetadata:
        tmp = _temp_beside(target)
        blob: AsyncBlob = await self._async().execute(_get(table, blob_id, None, AsyncBlob),
                                                      self._credential)
        async with blob:
            total, done = blob.metadata.length, 0
            gate = ProgressGate(progress, total)
            f: BinaryIO = await asyncio.to_thread(open, tmp, "wb")
            try:
                try:
                    gate(0)
                    pending = bytearray()
                    async for chunk in blob.aiter_bytes():
                        pending += chunk
                        if len(pending) >= _WRITE_BATCH:
                            await asyncio.to_thread(f.write, bytes(pending))
                            done += len(pending)
                            pending.clear()
                            gate(done)
                    await asyncio.to_thread(f.write, bytes(pending))
                    done += len(pending)
                    gate.finish(done)
                    await asyncio.to_thread(_flush_and_sync, f)
                finally:
                    await asyncio.to_thread(f.close)
                await asyncio.to_thread(os.replace, tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        return blob.metadata


def _flush_and_sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())
