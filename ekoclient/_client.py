"""Clients, and the per-credential views an Authenticator hands out.

A :class:`Client` owns one executor: one connection pool, one token cache, one retry budget.
Everything reachable from it — its own services and every view from
``Authenticator(client).using_credentials(key)`` — runs over that executor. A view is just
(executor, credential): creating one opens no connection and fetches no token.

``with_options`` and ``with_raw_response`` give the same object over a derived executor
(see :mod:`ekoclient._options`), so both work on clients and views alike and share the pool.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from functools import cached_property
from types import TracebackType
from typing import Any, Generic, overload

from pydantic import ValidationError as PydanticValidationError
from typing_extensions import Self, Unpack

from ._config import (
    ClientBuilder,
    ClientKwargs,
    ClientOptions,
    PoolOptions,
    RateLimitOptions,
    RetryOptions,
    TimeoutOptions,
    options_from_env,
)
from ._executor import AsyncExecutor, SyncExecutor
from ._hosts import HostDiscovery, HostStatus
from ._observe import RequestHook, ResponseHook
from ._options import RawResponse, check_extra_headers
from ._service import E, Service, endpoint
from ._services.admin import Admin
from ._services.blobstore import BlobStore
from ._services.databus import DataBus
from ._services.datastore import DataStore
from ._services.kv import KV
from ._services.queue import DedupQueue, Queue
from ._tokens import Credential, RateLimitInfo
from .errors import ConfigurationError


def _timeouts(timeout: float | TimeoutOptions | Mapping[str, Any],
              current: tuple[float, float, float, float]
              ) -> tuple[float, float, float, float]:
    """A per-call timeout: one number for every phase, a TimeoutOptions, or some of its
    fields (the others stay as they are now)."""
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        if timeout <= 0:
            raise ConfigurationError("timeout must be a positive number of seconds")
        t = float(timeout)
        return (t, t, t, t)
    if isinstance(timeout, Mapping):
        try:
            phases = dict(zip(("connect", "read", "write", "pool"), current, strict=True))
            timeout = TimeoutOptions(**{**phases, **timeout})
        except (PydanticValidationError, TypeError) as exc:
            raise ConfigurationError(f"invalid timeout {dict(timeout)!r}: {exc}") from None
    if not isinstance(timeout, TimeoutOptions):
        raise ConfigurationError(
            "timeout is seconds, a TimeoutOptions or a mapping of its fields")
    return (timeout.connect, timeout.read, timeout.write, timeout.pool)


class ServiceSet(Generic[E]):
    """Every service of one credential over one executor."""

    def __init__(self, executor: E, credential: Credential | None) -> None:
        self._executor: E = executor
        self._credential = credential

    @cached_property
    def admin(self) -> Admin[E]:
        return Admin(self._executor, self._credential)

    @cached_property
    def databus(self) -> DataBus[E]:
        return DataBus(self._executor, self._credential)

    @cached_property
    def datastore(self) -> DataStore[E]:
        return DataStore(self._executor, self._credential)

    @cached_property
    def kv(self) -> KV[E]:
        return KV(self._executor, self._credential)

    @cached_property
    def queue(self) -> Queue[E]:
        return Queue(self._executor, self._credential)

    @cached_property
    def dedup_queue(self) -> DedupQueue[E]:
        return DedupQueue(self._executor, self._credential)

    @cached_property
    def blobstore(self) -> BlobStore[E]:
        return BlobStore(self._executor, self._credential)

    def _derive(self, executor: E) -> Self:
        """The same services over a derived executor (views: a new view; clients: a copy)."""
        return type(self)(executor, self._credential)

    def with_options(
        self,
        *,
        timeout: float | TimeoutOptions | Mapping[str, Any] | None = None,
        max_retries: int | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> Self:
        """A copy whose calls use these options; it shares the pool, tokens and hosts.

        ``timeout`` is seconds for every phase (or per phase as TimeoutOptions fields),
        ``max_retries`` the retries after the first attempt (0 = no retry), and
        ``extra_headers`` are added to every request. Cheap: make one per call if you like.
        """
        if max_retries is not None and (isinstance(max_retries, bool)
                                        or not isinstance(max_retries, int)
                                        or not 0 <= max_retries <= 49):
            raise ConfigurationError("max_retries must be an integer from 0 to 49")
        executor = self._executor.derive(
            timeouts=_timeouts(timeout, self._current_timeouts()) if timeout is not None
            else None,
            max_retries=max_retries,
            extra_headers=check_extra_headers(extra_headers) if extra_headers else None)
        return self._derive(executor)

    def _current_timeouts(self) -> tuple[float, float, float, float]:
        given = self._executor.call_options.timeouts
        if given is not None:
            return given
        t = self._executor.options.timeout
        return (t.connect, t.read, t.write, t.pool)

    @property
    def with_raw_response(self) -> RawServices[E]:
        """The services whose endpoint methods return a :class:`RawResponse` (status,
        headers, request id, and the parsed result as ``.parsed``)."""
        return RawServices(self._derive(self._executor.derive(raw=True)))

    @property
    def rate_limit(self) -> RateLimitInfo | None:
        """Rate-limit figures of the last answer for this credential that carried them."""
        if self._credential is None:
            return None
        state = self._executor.tokens.peek(self._credential)
        return state.rate_limit if state is not None else None


#: Why a method that is not one request has no raw form, where the generic reason misleads.
_NO_RAW: dict[str, str] = {
    "transaction": "it opens a transaction, a context manager over many requests, and the "
                   "calls inside it answer parsed results only; read the transaction's "
                   "state with tx.status()",
}


class _RawMethods(Generic[E]):
    """One service whose endpoint methods answer with a RawResponse."""

    __slots__ = ("_service",)
    _service: Service[E]

    def __init__(self, service: Service[E]) -> None:
        self._service = service

    @overload
    def __getattr__(self: _RawMethods[SyncExecutor], name: str
                    ) -> Callable[..., RawResponse[Any]]: ...
    @overload
    def __getattr__(self: _RawMethods[AsyncExecutor], name: str
                    ) -> Callable[..., Awaitable[RawResponse[Any]]]: ...

    def __getattr__(self, name: str) -> Any:
        service = self._service
        if not isinstance(getattr(type(service), name, None), endpoint):
            if name.startswith("_") or not hasattr(service, name):
                raise AttributeError(name)
            why = _NO_RAW.get(name, "it streams, pages or runs a loop")
            raise AttributeError(
                f"{type(service).__name__}.{name} has no raw form ({why}); call it on the "
                "client itself")
        return getattr(service, name)

    def __dir__(self) -> list[str]:
        return [n for n in dir(type(self._service))
                if isinstance(getattr(type(self._service), n, None), endpoint)]


class RawServices(Generic[E]):
    """``client.with_raw_response``: ``.datastore.get(...)`` etc. return RawResponse."""

    __slots__ = ("_set",)
    _set: ServiceSet[E]

    def __init__(self, services: ServiceSet[E]) -> None:
        self._set = services

    @property
    def admin(self) -> _RawMethods[E]:
        return _RawMethods(self._set.admin)

    @property
    def databus(self) -> _RawMethods[E]:
        return _RawMethods(self._set.databus)

    @property
    def datastore(self) -> _RawMethods[E]:
        return _RawMethods(self._set.datastore)

    @property
    def queue(self) -> _RawMethods[E]:
        return _RawMethods(self._set.queue)

    @property
    def dedup_queue(self) -> _RawMethods[E]:
        return _RawMethods(self._set.dedup_queue)

    @property
    def blobstore(self) -> _RawMethods[E]:
        return _RawMethods(self._set.blobstore)

    def __getattr__(self, name: str) -> _RawMethods[E]:
        """Services added later (kv, ...) too."""
        service = getattr(self._set, name)
        if not isinstance(service, Service):
            raise AttributeError(name)
        return _RawMethods(service)


class _View(ServiceSet[E]):
    """The services as seen by one API key, over its client's shared pool."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._credential!r}>"


class CredentialsView(_View[SyncExecutor]):
    """What ``Authenticator(client).using_credentials(key)`` returns: blocking services."""


class AsyncCredentialsView(_View[AsyncExecutor]):
    """What ``AsyncAuthenticator(client).using_credentials(key)`` returns: async services."""


class _ClientBase(ServiceSet[E]):
    def __init__(
        self,
        *,
        base_url: str | None = None,
        hosts: list[str] | tuple[str, ...] | None = None,
        api_key: str | None = None,
        ca_bundle: str | None = None,
        verify: bool | None = None,
        allow_insecure: bool | None = None,
        retry: RetryOptions | Mapping[str, Any] | None = None,
        pool: PoolOptions | Mapping[str, Any] | None = None,
        timeout: float | TimeoutOptions | Mapping[str, Any] | None = None,
        rate_limit: RateLimitOptions | Mapping[str, Any] | None = None,
        token_refresh_margin: float | None = None,
        token_cache_size: int | None = None,
        user_agent_suffix: str | None = None,
        event_hooks: Mapping[str, list[Callable[..., Any]]] | None = None,
        transport: Any = None,
        http_client: Any = None,
        proxy: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        host_cooldown: float | None = None,
        host_max_cooldown: float | None = None,
        discovery: HostDiscovery | None = None,
        on_request: RequestHook | list[RequestHook] | None = None,
        on_response: ResponseHook | list[ResponseHook] | None = None,
        tracing: bool | None = None,
        options: ClientOptions | None = None,
    ) -> None:
        if options is None:
            options = ClientOptions.build(
                base_url=base_url, hosts=hosts, api_key=api_key, ca_bundle=ca_bundle,
                verify=verify, allow_insecure=allow_insecure, retry=retry, pool=pool,
                timeout=timeout, rate_limit=rate_limit, token_refresh_margin=token_refresh_margin,
                token_cache_size=token_cache_size, user_agent_suffix=user_agent_suffix,
                event_hooks=event_hooks, transport=transport, http_client=http_client,
                proxy=proxy, client_cert=client_cert, client_key=client_key,
                host_cooldown=host_cooldown,
                host_max_cooldown=host_max_cooldown, discovery=discovery,
                on_request=on_request, on_response=on_response, tracing=tracing,
            )
        self.options = options
        key = options.api_key.get_secret_value() if options.api_key is not None else None
        self._executor = self._make_executor(options)
        self._credential = Credential(key) if key else None

    def _make_executor(self, options: ClientOptions) -> E:
        raise NotImplementedError

    def _derive(self, executor: E) -> Self:
        new = object.__new__(type(self))
        # cached services are bound to the old executor: leave them out
        new.__dict__.update({k: v for k, v in self.__dict__.items()
                             if not isinstance(v, Service)})
        new._executor = executor
        return new

    @classmethod
    def builder(cls) -> ClientBuilder[Self]:
        """Fluent construction; ends with ``.build()``."""
        return ClientBuilder(cls)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 **overrides: Unpack[ClientKwargs]) -> Self:
        """A client from ``EKODB_URL``, ``EKODB_API_KEY`` and ``EKODB_CA_BUNDLE``."""
        return cls(**options_from_env(environ, **overrides))

    def host_status(self) -> list[HostStatus]:
        """Each host as the client sees it now: healthy, benched, being probed."""
        return self._executor.hosts.status()

    @property
    def token_cache_size(self) -> int:
        """How many credentials currently have a cached token."""
        return len(self._executor.tokens)

    def __repr__(self) -> str:
        key = self._credential.hint if self._credential else None
        return f"{type(self).__name__}(hosts={list(self.options.hosts)!r}, api_key={key!r})"


class Client(_ClientBase[SyncExecutor]):
    """The blocking client. Thread-safe; share one per process."""

    def _make_executor(self, options: ClientOptions) -> SyncExecutor:
        return SyncExecutor(options)

    def close(self) -> None:
        """Close the connection pool."""
        self._executor.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncClient(_ClientBase[AsyncExecutor]):
    """The asyncio client. Share one per event loop."""

    def _make_executor(self, options: ClientOptions) -> AsyncExecutor:
        return AsyncExecutor(options)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._executor.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


def _client_of(client: object, wanted: type[_ClientBase[Any]], who: str) -> Any:
    """Refuse the wrong flavour at once, not at the first call deep inside a request."""
    if isinstance(client, wanted):
        return client._executor
    if isinstance(client, AsyncClient):
        hint = "; for an AsyncClient use AsyncAuthenticator(async_client)"
    elif isinstance(client, Client):
        hint = "; for a Client use Authenticator(client)"
    else:
        hint = ""
    raise ConfigurationError(f"{who} needs a {wanted.__name__}, got a "
                             f"{type(client).__name__}{hint}")


class Authenticator:
    """Hands out per-key views of a :class:`Client`, all over its one pool."""

    def __init__(self, client: Client) -> None:
        self._executor: SyncExecutor = _client_of(client, Client, "Authenticator")

    def using_credentials(self, api_key: str) -> CredentialsView:
        """The services as ``api_key`` sees them. Cheap: no connection, no token yet."""
        return CredentialsView(self._executor, Credential(api_key))


class AsyncAuthenticator:
    """Hands out per-key views of an :class:`AsyncClient`, all over its one pool."""

    def __init__(self, client: AsyncClient) -> None:
        self._executor: AsyncExecutor = _client_of(client, AsyncClient, "AsyncAuthenticator")

    def using_credentials(self, api_key: str) -> AsyncCredentialsView:
        """The services as ``api_key`` sees them. Cheap: no connection, no token yet."""
        return AsyncCredentialsView(self._executor, Credential(api_key))
