"""How services turn call descriptions into methods, once for sync and async.

A service is one class, generic in its executor. Each endpoint is a module-level function
returning a :class:`~ekoclient._call.Call`, attached with :class:`endpoint`; on a service
over a :class:`SyncExecutor` the attribute is a blocking method, over an
:class:`AsyncExecutor` a coroutine method. Type checkers see both through the overloads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from ._call import Call
from ._executor import AsyncExecutor, SyncExecutor
from ._tokens import Credential

P = ParamSpec("P")
T = TypeVar("T")
E = TypeVar("E", SyncExecutor, AsyncExecutor)


class Service(Generic[E]):
    """A group of endpoints bound to one executor (the pool) and one credential."""

    __slots__ = ("_credential", "_executor")

    def __init__(self, executor: E, credential: Credential | None) -> None:
        self._executor: E = executor
        self._credential = credential

    def __repr__(self) -> str:
        who = self._credential.hint if self._credential else "no key"
        return f"<{type(self).__name__} {who}>"


class endpoint(Generic[P, T]):
    """Attach a call-building function to a service as a sync or async method."""

    def __init__(self, build: Callable[P, Call[T]]) -> None:
        self._build = build
        self.__doc__ = build.__doc__
        self._name = build.__name__.lstrip("_")

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def bind(self, obj: Any) -> Callable[..., Call[T]]:
        """The call builder for one service instance (subclasses add per-service arguments)."""
        return self._build

    @overload
    def __get__(self, obj: None, owner: Any) -> endpoint[P, T]: ...
    @overload
    def __get__(self, obj: Service[SyncExecutor], owner: Any) -> Callable[P, T]: ...
    @overload
    def __get__(self, obj: Service[AsyncExecutor], owner: Any) -> Callable[P, Awaitable[T]]: ...

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        build = self.bind(obj)
        execute = obj._executor.execute
        credential = obj._credential

        def method(*args: Any, **kwargs: Any) -> Any:
            # Sync executors return the result; async ones return the coroutine to await.
            return execute(build(*args, **kwargs), credential)

        method.__doc__ = self.__doc__
        method.__name__ = self._name
        return method

    def describe(self, *args: P.args, **kwargs: P.kwargs) -> Call[T]:
        """The call this endpoint would make, without making it (for tests and tooling)."""
        return self._build(*args, **kwargs)
