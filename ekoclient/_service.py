"""How services turn call descriptions into methods, once for sync and async.

A service is one class, generic in its executor. Each endpoint is a module-level function
returning a :class:`~ekoclient._call.Call`, attached with :class:`endpoint`; on a service
over a :class:`SyncExecutor` the attribute is a blocking method, over an
:class:`AsyncExecutor` a coroutine method. Type checkers see both through the overloads.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Generic, ParamSpec, TypedDict, TypeVar, overload

from ._call import Call
from ._executor import AsyncExecutor, SyncExecutor
from ._options import check_idempotency_key
from ._tokens import Credential
from .errors import InvalidArgumentError

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


class WriteOptions(TypedDict, total=False):
    """Keywords every write accepts, handled by :class:`endpoint` rather than the builder.

    A write builder declares ``**write: Unpack[WriteOptions]`` so that type checkers and
    ``help()`` show the keyword; the endpoint takes it out before calling the builder.
    """

    #: Your own Idempotency-Key: a retry of the whole operation with the same key (after a
    #: crash, from another process) is applied once; the server answers it with the first
    #: result. Without one, the SDK makes a key per call, kept across its own retries.
    idempotency_key: str


_TARGETS = ("collection", "table", "queue", "name", "source")
_IDEM = inspect.Parameter("idempotency_key", inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation="str | None")


def public_signature(build: Callable[..., Any], *, drop_first: bool = False,
                     unwrap: str = "Call") -> inspect.Signature:
    """What ``help()`` and ``inspect.signature`` show for the method built from ``build``:
    its parameters, with ``**write`` shown as the ``idempotency_key`` keyword it stands for,
    returning what the call returns (``Call[X]`` → ``X``)."""
    sig = inspect.signature(build)
    params = list(sig.parameters.values())[1 if drop_first else 0:]
    out = [_IDEM if p.kind is p.VAR_KEYWORD and "WriteOptions" in str(p.annotation) else p
           for p in params]
    returns = sig.return_annotation
    if isinstance(returns, str) and returns.startswith(unwrap + "[") and returns.endswith("]"):
        returns = returns[len(unwrap) + 1:-1]
    return sig.replace(parameters=out, return_annotation=returns)


def _returning(sig: inspect.Signature, template: str) -> inspect.Signature:
    returns = sig.return_annotation
    if returns is inspect.Signature.empty:
        return sig
    return sig.replace(return_annotation=template.format(returns))


class MethodFace:
    """What a method made by a descriptor shows: name, docstring, real signature.

    Descriptors that build a method per access (:class:`endpoint`, and the paging and
    streaming ones) inherit this so ``help()``, ``inspect.signature`` and IDEs show the
    builder's parameters instead of ``(*args, **kwargs)``. On the class the descriptor reads
    and works as an unbound method (``DataStore.get(service, ...)``).
    """

    #: How the builder's return annotation reads on a sync / async service.
    returns_sync = "{}"
    returns_async = "Awaitable[{}]"

    def init_face(self, build: Callable[..., Any], sig: inspect.Signature) -> None:
        self.__doc__ = build.__doc__
        self.__wrapped__ = build
        self._name = self.__name__ = self.__qualname__ = build.__name__.lstrip("_")
        self._signature = _returning(sig, self.returns_sync)
        self._async_signature = _returning(sig, self.returns_async)
        this = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self.__signature__ = self._signature.replace(
            parameters=[this, *self._signature.parameters.values()])

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = self.__name__ = name
        self.__qualname__ = f"{owner.__qualname__}.{name}"

    def dress(self, method: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
        method.__doc__ = self.__doc__
        method.__name__ = self._name
        method.__qualname__ = self.__qualname__
        method.__signature__ = (  # type: ignore[attr-defined]
            self._async_signature if is_async else self._signature)
        return method

    def __call__(self, service: Service[Any], /, *args: Any, **kwargs: Any) -> Any:
        """``DataStore.get(service, ...)``: the unbound form, as for any method."""
        descriptor: Any = self
        return descriptor.__get__(service, type(service))(*args, **kwargs)


class endpoint(MethodFace, Generic[P, T]):
    """Attach a call-building function to a service as a sync or async method.

    The method made on each attribute access carries the builder's name, docstring and
    signature (see :class:`MethodFace`). ``idempotency_key=`` is taken out here, for every
    write, before the builder runs.
    """

    def __init__(self, build: Callable[P, Call[T]]) -> None:
        self._build = build
        self.init_face(build, self.signature(build))
        names = list(self._signature.parameters)
        self._target = names[0] if names and names[0] in _TARGETS else None

    def signature(self, build: Callable[..., Any]) -> inspect.Signature:
        return public_signature(build)

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
        executor = obj._executor
        execute = executor.execute
        credential = obj._credential
        name = self._name
        traced = executor.observer is not None and executor.observer.tracer is not None
        target_name = self._target if traced else None

        def method(*args: Any, **kwargs: Any) -> Any:
            # Sync executors return the result; async ones return the coroutine to await.
            key = kwargs.pop("idempotency_key", None) if kwargs else None
            call = build(*args, **kwargs)
            if key is not None:
                key = check_idempotency_key(key)
                if not call.is_write:
                    raise InvalidArgumentError(
                        f"{name}() does not change anything, so idempotency_key does not "
                        "apply to it")
            target = None
            if target_name is not None:
                target = args[0] if args else kwargs.get(target_name)
            return execute(call, credential, idempotency_key=key, operation=name,
                           target=target if isinstance(target, str) else None)

        return self.dress(method, executor.is_async)

    def describe(self, *args: P.args, **kwargs: P.kwargs) -> Call[T]:
        """The call this endpoint would make, without making it (for tests and tooling)."""
        kw: dict[str, Any] = kwargs
        kw.pop("idempotency_key", None)
        return self._build(*args, **kwargs)
