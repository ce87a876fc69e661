"""Iterators that page through results, defined once for sync and async.

A :class:`Pager` is sans-I/O: it says which call fetches the next page and reads each page
it is fed. :class:`paged` attaches a pager-building function to a service as a method that
returns an iterator (sync executor) or an async iterator (async executor).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, ParamSpec, TypeVar, overload

from ._call import Call
from ._executor import AsyncExecutor, SyncExecutor
from ._service import MethodFace, Service, public_signature
from ._tokens import Credential

P = ParamSpec("P")
T = TypeVar("T")


class Pager(Generic[T]):
    """Offset paging: ask for ``page_size`` items at a time until a short page or ``limit``."""

    def __init__(self, make_call: Callable[[int, int], Call[list[T]]], *, page_size: int,
                 limit: int | None = None, skip: int = 0) -> None:
        self._make_call = make_call
        self._page_size = page_size
        self._remaining = limit
        self._skip = skip
        self._done = False

    def next_call(self) -> Call[list[T]] | None:
        if self._done or self._remaining == 0:
            return None
        size = self._page_size if self._remaining is None else min(self._page_size,
                                                                    self._remaining)
        return self._make_call(self._skip, size)

    def feed(self, page: list[T]) -> list[T]:
        size = self._page_size if self._remaining is None else min(self._page_size,
                                                                   self._remaining)
        if len(page) < size:
            self._done = True
        self._skip += len(page)
        if self._remaining is not None:
            self._remaining -= len(page)
        return page


def _iterate(pager: Pager[T], executor: SyncExecutor, credential: Credential | None
             ) -> Iterator[T]:
    while (call := pager.next_call()) is not None:
        yield from pager.feed(executor.execute(call, credential))


async def _aiterate(pager: Pager[T], executor: AsyncExecutor, credential: Credential | None
                    ) -> AsyncIterator[T]:
    while (call := pager.next_call()) is not None:
        for item in pager.feed(await executor.execute(call, credential)):
            yield item


class paged(MethodFace, Generic[P, T]):
    """Attach a pager-building function as an iterating method."""

    returns_sync = "Iterator[{}]"
    returns_async = "AsyncIterator[{}]"

    def __init__(self, build: Callable[P, Pager[T]]) -> None:
        self._build = build
        self.init_face(build, public_signature(build, unwrap="Pager"))

    @overload
    def __get__(self, obj: None, owner: Any) -> paged[P, T]: ...
    @overload
    def __get__(self, obj: Service[SyncExecutor], owner: Any) -> Callable[P, Iterator[T]]: ...
    @overload
    def __get__(self, obj: Service[AsyncExecutor], owner: Any
                ) -> Callable[P, AsyncIterator[T]]: ...

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        build = self._build
        executor = obj._executor
        run = _aiterate if executor.is_async else _iterate

        def method(*args: Any, **kwargs: Any) -> Any:
            return run(build(*args, **kwargs), executor, obj._credential)

        return self.dress(method, executor.is_async)
