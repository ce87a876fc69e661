"""Live change feeds over Server-Sent Events (ekoDB's ``GET /api/subscribe/{collection}``).

:class:`SSEDecoder` is sans-I/O: bytes in, ``(event, data)`` pairs out. :class:`ChangeStream`
(blocking) and :class:`AsyncChangeStream` (asyncio) wrap one streamed response and yield
:class:`~ekoclient.models.MutationNotification` objects; an ``error`` event from the service
(key revoked, read right lost, consumer too slow) is raised as an :class:`APIError`.

These feeds are live and best-effort: nothing is replayed after a disconnect. For changes
that must not be missed, use the DataBus (``client.databus``), which claims and redelivers.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any

from pydantic import ValidationError as PydanticValidationError
from typing_extensions import Self

from ._http import AsyncTransport, Response, SyncTransport
from .errors import APIError, AuthenticationError, MalformedResponseError, PermissionDeniedError
from .models import MutationNotification

MAX_EVENT = 16 * 1024 * 1024


class SSEDecoder:
    """Incremental ``text/event-stream`` parser (the parts of the format the service uses)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event = "message"
        self._data: list[str] = []
        self._size = 0  # characters of data accumulated for the event being read

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        """The events completed by ``chunk``; MalformedResponseError for an event over
        MAX_EVENT (one line or many ``data:`` lines together) or bytes that are not UTF-8."""
        self._buffer += chunk
        if len(self._buffer) > MAX_EVENT:
            raise MalformedResponseError("a change-feed event is larger than 16 MiB")
        out: list[tuple[str, str]] = []
        while True:
            cut = self._buffer.find(b"\n")
            if cut < 0:
                return out
            try:
                line = self._buffer[:cut].rstrip(b"\r").decode("utf-8")
            except UnicodeDecodeError as exc:
                raise MalformedResponseError(
                    f"a change-feed line is not UTF-8 text: {exc}") from None
            self._buffer = self._buffer[cut + 1:]
            if not line:
                if self._data:
                    out.append((self._event, "\n".join(self._data)))
                self._event, self._data, self._size = "message", [], 0
            elif line.startswith(":"):
                continue  # keep-alive comment
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    self._event = value
                elif name == "data":
                    self._size += len(value) + 1
                    if self._size > MAX_EVENT:
                        raise MalformedResponseError(
                            "a change-feed event is larger than 16 MiB")
                    self._data.append(value)


def _error(data: dict[str, Any]) -> APIError:
    code = str(data.get("code", "error"))
    message = str(data.get("message", "the change feed ended with an error"))
    if code in ("unauthorized", "invalid_token", "token_expired"):
        return AuthenticationError(message, status=401, code=code)
    if code == "forbidden":
        return PermissionDeniedError(message, status=403, code=code)
    return APIError(message, status=503 if code == "overflow" else 500, code=code)


class _StreamBase:
    def __init__(self, response: Response) -> None:
        self._response = response
        self._decoder = SSEDecoder()
        self._pending: deque[tuple[str, str]] = deque()
        #: What the service said when the stream opened (``subscription_id``, ``collection``).
        self.subscription: dict[str, Any] = {}

    def _take(self) -> MutationNotification | None:
        """The next notification already decoded, handling other events; None if none yet."""
        while self._pending:
            event, text = self._pending.popleft()
            try:
                data = json.loads(text)
            except ValueError as exc:
                raise MalformedResponseError(f"a change-feed event is not JSON: {exc}") from exc
            if event == "mutation":
                try:
                    return MutationNotification.model_validate(data)
                except PydanticValidationError as exc:
                    raise MalformedResponseError(
                        f"a change-feed notification has an unexpected shape: "
                        f"{exc.error_count()} problem(s)") from None
            if event == "subscribed" and isinstance(data, dict):
                self.subscription = data
            elif event == "error" and isinstance(data, dict):
                raise _error(data)
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.subscription.get('collection', '?')}>"


class ChangeStream(_StreamBase):
    """A blocking iterator of change notifications; close it (or use ``with``) when done."""

    def __init__(self, response: Response) -> None:
        super().__init__(response)
        self._chunks: Iterator[bytes] = iter(SyncTransport.iter_bytes(response))

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> MutationNotification:
        while True:
            note = self._take()
            if note is not None:
                return note
            chunk = next(self._chunks, None)
            if chunk is None:
                self.close()
                raise StopIteration
            self._pending.extend(self._decoder.feed(chunk))

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncChangeStream(_StreamBase):
    """The asyncio flavour: ``async for note in stream``; ``async with`` closes it."""

    def __init__(self, response: Response) -> None:
        super().__init__(response)
        self._chunks: AsyncIterator[bytes] = AsyncTransport.iter_bytes(response)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> MutationNotification:
        while True:
            note = self._take()
            if note is not None:
                return note
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                await self.aclose()
                raise
            self._pending.extend(self._decoder.feed(chunk))

    async def aclose(self) -> None:
        await self._response.aclose()

    close = aclose

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()
