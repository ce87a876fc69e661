"""Clients, and the per-credential views an Authenticator hands out.

A :class:`Client` owns one executor: one connection pool, one token cache, one retry budget.
Everything reachable from it — its own services and every view from
``Authenticator(client).using_credentials(key)`` — runs over that executor. A view is just
(executor, credential): creating one opens no connection and fetches no token.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cached_property
from types import TracebackType
from typing import Any, Generic

from typing_extensions import Self

from ._config import (
    ClientBuilder,
    ClientOptions,
    PoolOptions,
    RateLimitOptions,
    RetryOptions,
    TimeoutOptions,
    options_from_env,
)
from ._executor import AsyncExecutor, SyncExecutor
from ._hosts import HostDiscovery, HostStatus
from ._service import E
from ._services.admin import Admin
from ._services.blobstore import BlobStore
from ._services.databus import DataBus
from ._services.datastore import DataStore
from ._services.queue import DedupQueue, Queue
from ._tokens import Credential, RateLimitInfo


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
    def queue(self) -> Queue[E]:
        return Queue(self._executor, self._credential)

    @cached_property
    def dedup_queue(self) -> DedupQueue[E]:
        return DedupQueue(self._executor, self._credential)

    @cached_property
    def blobstore(self) -> BlobStore[E]:
        return BlobStore(self._executor, self._credential)

    @property
    def rate_limit(self) -> RateLimitInfo | None:
        """Rate-limit figures of the last answer for this credential that carried them."""
        if self._credential is None:
            return None
        state = self._executor.tokens.peek(self._credential)
        return state.rate_limit if state is not None else None


class CredentialsView(ServiceSet[E]):
    """The services as seen by one API key, over its client's shared pool."""

    def __repr__(self) -> str:
        return f"<CredentialsView {self._credential!r}>"


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
            )
        self.options = options
        key = options.api_key.get_secret_value() if options.api_key is not None else None
        self._executor = self._make_executor(options)
        self._credential = Credential(key) if key else None

    def _make_executor(self, options: ClientOptions) -> E:
        raise NotImplementedError

    @classmethod
    def builder(cls) -> ClientBuilder[Self]:
        """Fluent construction; ends with ``.build()``."""
        return ClientBuilder(cls)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
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


class _AuthenticatorBase(Generic[E]):
    def __init__(self, client: _ClientBase[E]) -> None:
        self._executor: E = client._executor

    def using_credentials(self, api_key: str) -> CredentialsView[E]:
        """The services as ``api_key`` sees them. Cheap: no connection, no token yet."""
        return CredentialsView(self._executor, Credential(api_key))


class Authenticator(_AuthenticatorBase[SyncExecutor]):
    """Hands out per-key views of a :class:`Client`, all over its one pool."""

    def __init__(self, client: Client) -> None:
        super().__init__(client)


class AsyncAuthenticator(_AuthenticatorBase[AsyncExecutor]):
    """Hands out per-key views of an :class:`AsyncClient`, all over its one pool."""

    def __init__(self, client: AsyncClient) -> None:
        super().__init__(client)
