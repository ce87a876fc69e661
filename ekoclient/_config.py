"""Client options: validated once, with messages that say what to fix.

``Client(...)``, ``Client.builder()`` and ``Client.from_env()`` all end in one
:class:`ClientOptions`, so every way of configuring a client gets the same checks.
"""

from __future__ import annotations

import ipaddress
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypedDict, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from ._version import __version__
from .errors import ConfigurationError


class RetryOptions(BaseModel):
    """Exponential backoff with full jitter; see :mod:`ekoclient._retry`."""

    model_config: ClassVar[ConfigDict] = ConfigDict(extra="forbid", frozen=True)

    # defaults ride out a restart of a few seconds (README "Retries"; ekoclient._retry)
    max_attempts: int = Field(8, ge=1, le=50)
    initial: float = Field(0.1, gt=0, le=60)
    maximum: float = Field(2.0, gt=0, le=300)
    max_elapsed: float = Field(30.0, gt=0)
    retry_after_cap: float = Field(60.0, ge=0)
    budget_capacity: float = Field(100.0, ge=0)
    budget_ratio: float = Field(0.2, ge=0)
    budget_per_second: float = Field(10.0, ge=0)


class PoolOptions(BaseModel):
    """Limits of the one connection pool every service and view shares.

    ``max_keepalive`` defaults to the connection limit (httpx's own default is 20): when many
    tenants' calls share one pool, closing idle connections beyond 20 means a new TLS
    handshake for most calls under load.
    """

    model_config: ClassVar[ConfigDict] = ConfigDict(extra="forbid", frozen=True)

    max_connections: int = Field(100, ge=1)
    max_keepalive: int = Field(100, ge=0)
    keepalive_expiry: float = Field(5.0, ge=0)


class TimeoutOptions(BaseModel):
    model_config: ClassVar[ConfigDict] = ConfigDict(extra="forbid", frozen=True)

    connect: float = Field(5.0, gt=0)
    read: float = Field(30.0, gt=0)
    write: float = Field(30.0, gt=0)
    pool: float = Field(10.0, gt=0)


class RateLimitOptions(BaseModel):
    """Client-side pacing from the server's X-RateLimit-* figures; see ekoclient._pacing."""

    model_config: ClassVar[ConfigDict] = ConfigDict(extra="forbid", frozen=True)

    #: Hold calls of a credential whose budget runs low instead of bouncing off 429s.
    adaptive: bool = False
    #: Start pacing when ``remaining`` falls to this fraction of the limit (>= 1 call).
    headroom: float = Field(0.2, ge=0, le=1)
    #: Longest a single call is held.
    max_delay: float = Field(60.0, gt=0)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL with a host name")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{url!r} may not carry credentials, a query or a fragment")
    return url.rstrip("/")


def _check_plain_http_url(url: str, allow_insecure: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme == "http" and not allow_insecure and not _is_loopback(parts.hostname or ""):
        raise ValueError(
            f"refusing plain http to {parts.hostname}: use https, or pass "
            "allow_insecure=True if you really mean to send keys in clear"
        )


class ClientOptions(BaseModel):
    """Everything a client can be told. Built by the constructor, builder or ``from_env``."""

    model_config: ClassVar[ConfigDict] = ConfigDict(extra="forbid", frozen=True,
                                                    arbitrary_types_allowed=True)

    hosts: tuple[str, ...]
    api_key: SecretStr | None = None
    ca_bundle: str | None = None
    verify: bool = True
    allow_insecure: bool = False
    retry: RetryOptions = RetryOptions()
    pool: PoolOptions = PoolOptions()
    timeout: TimeoutOptions = TimeoutOptions()
    rate_limit: RateLimitOptions = RateLimitOptions()
    token_refresh_margin: float = Field(60.0, ge=0)
    token_cache_size: int = Field(10_000, ge=1)
    user_agent_suffix: str | None = None
    event_hooks: Mapping[str, list[Callable[..., Any]]] | None = None
    transport: Any = None
    #: An ``httpx.Client`` / ``httpx.AsyncClient`` to send through, as it is configured.
    http_client: Any = None
    #: ``http://[user:pass@]host:port`` for HTTP, HTTPS and the WebSocket stream.
    proxy: str | None = Field(None, repr=False)  # may carry a password
    #: PEM client certificate for mutual TLS (may hold the key too), and its key file.
    client_cert: str | None = None
    client_key: str | None = None
    host_cooldown: float = Field(1.0, gt=0)
    host_max_cooldown: float = Field(30.0, gt=0)
    #: A :class:`ekoclient.HostDiscovery`; ``hosts`` then holds its first answer.
    discovery: Any = None
    #: Called before each attempt with a RequestInfo (Authorization redacted).
    on_request: tuple[Callable[..., Any], ...] = ()
    #: Called with each answer's ResponseInfo, retried error answers included.
    on_response: tuple[Callable[..., Any], ...] = ()
    #: OpenTelemetry spans per call (needs the ``otel`` extra); EKOCLIENT_TRACING=1 too.
    tracing: bool = Field(default_factory=lambda: _env_flag("EKOCLIENT_TRACING"))

    @field_validator("hosts")
    @classmethod
    def _check_hosts(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        if not hosts:
            raise ValueError("give a base_url or at least one host")
        return tuple(_check_url(url) for url in hosts)

    @field_validator("on_request", "on_response", mode="before")
    @classmethod
    def _one_or_many(cls, hooks: Any) -> Any:
        if hooks is None:
            return ()
        return (hooks,) if callable(hooks) else tuple(hooks)

    @field_validator("ca_bundle")
    @classmethod
    def _check_ca(cls, path: str | None) -> str | None:
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"CA bundle {path!r} is not a readable file")
        return path

    @model_validator(mode="after")
    def _check_plain_http(self) -> ClientOptions:
        for url in self.hosts:
            _check_plain_http_url(url, self.allow_insecure)
        return self

    @field_validator("client_cert", "client_key")
    @classmethod
    def _check_cert_file(cls, path: str | None) -> str | None:
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"{path!r} is not a readable file")
        return path

    @field_validator("proxy")
    @classmethod
    def _check_proxy(cls, url: str | None) -> str | None:
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{_redacted(url)!r} is not an http(s)://host:port proxy URL")
        return url

    @model_validator(mode="after")
    def _check_injection(self) -> ClientOptions:
        """A custom transport or client makes its own connections: settings the SDK would
        apply to them cannot be honoured, so say so instead of silently ignoring them."""
        injected = ("transport" if self.transport is not None else
                    "http_client" if self.http_client is not None else None)
        if injected is None:
            if self.client_key is not None and self.client_cert is None:
                raise ValueError("client_key needs client_cert")
            return self
        if self.transport is not None and self.http_client is not None:
            raise ValueError("give either transport or http_client, not both")
        clash = sorted(name for name in ("ca_bundle", "verify", "pool", "proxy", "client_cert",
                                         "client_key") if name in self.model_fields_set)
        if clash:
            raise ValueError(
                f"{injected} makes its own connections, so {', '.join(clash)} cannot be "
                f"applied to it: configure {'them' if len(clash) > 1 else 'it'} on the "
                f"{injected} itself (e.g. httpx.HTTPTransport(verify=ssl_ctx, limits=...)), "
                f"or drop {injected}")
        return self

    def checked_hosts(self, urls: Sequence[str]) -> tuple[str, ...]:
        """A host list from discovery, held to the same rules as configured hosts."""
        out = tuple(_check_url(url) for url in urls)
        for url in out:
            _check_plain_http_url(url, self.allow_insecure)
        return out

    @property
    def user_agent(self) -> str:
        ua = f"ekoclient/{__version__} python/{platform.python_version()}"
        return f"{ua} {self.user_agent_suffix}" if self.user_agent_suffix else ua

    @classmethod
    def build(cls, **kwargs: Any) -> ClientOptions:
        """Validate keyword options, turning pydantic's report into a ConfigurationError."""
        base_url = kwargs.pop("base_url", None)
        hosts = kwargs.pop("hosts", None)
        if base_url is not None and hosts is not None:
            raise ConfigurationError("give either base_url or hosts, not both")
        discovery = kwargs.get("discovery")
        if discovery is not None:
            if base_url is not None or hosts is not None:
                raise ConfigurationError("give either discovery or base_url/hosts, not both")
            hosts = _first_hosts(discovery)
        kwargs["hosts"] = tuple(hosts) if hosts is not None else (
            (base_url,) if base_url is not None else ())
        timeout = kwargs.get("timeout")
        if isinstance(timeout, (int, float)):
            kwargs["timeout"] = TimeoutOptions(connect=timeout, read=timeout, write=timeout,
                                               pool=timeout)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        try:
            return cls(**kwargs)
        except PydanticValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {e['msg']}"
                for e in exc.errors(include_input=False)
            )
            raise ConfigurationError(f"invalid client options: {problems}") from None


def _redacted(url: str) -> str:
    """A URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def _first_hosts(discovery: Any) -> tuple[str, ...]:
    if not callable(getattr(discovery, "hosts", None)):
        raise ConfigurationError("discovery must have a hosts() method returning base URLs")
    try:
        return tuple(discovery.hosts())
    except Exception as exc:
        raise ConfigurationError(f"host discovery failed: {type(exc).__name__}: {exc}") from exc


C = TypeVar("C")


def _given(arguments: dict[str, Any]) -> dict[str, Any]:
    """A builder method's keyword arguments that were actually given."""
    return {k: v for k, v in arguments.items() if k != "self" and v is not None}


class ClientKwargs(TypedDict, total=False):
    """The keyword options of ``Client(...)``, for typed ``Client.from_env(**overrides)``."""

    base_url: str
    hosts: list[str] | tuple[str, ...]
    api_key: str
    ca_bundle: str
    verify: bool
    allow_insecure: bool
    retry: RetryOptions | Mapping[str, Any]
    pool: PoolOptions | Mapping[str, Any]
    timeout: float | TimeoutOptions | Mapping[str, Any]
    rate_limit: RateLimitOptions | Mapping[str, Any]
    token_refresh_margin: float
    token_cache_size: int
    user_agent_suffix: str
    event_hooks: Mapping[str, list[Callable[..., Any]]]
    transport: Any
    host_cooldown: float
    host_max_cooldown: float
    discovery: Any
    on_request: Callable[..., Any] | list[Callable[..., Any]]
    on_response: Callable[..., Any] | list[Callable[..., Any]]
    tracing: bool


class ClientBuilder(Generic[C]):
    """Fluent construction: ``Client.builder().base_url(u).api_key(k).build()``."""

    def __init__(self, factory: Callable[..., C]) -> None:
        self._factory = factory
        self._options: dict[str, Any] = {}

    def __repr__(self) -> str:
        shown = {k: ("***" if k == "api_key" else v) for k, v in self._options.items()}
        return f"ClientBuilder({shown})"

    def base_url(self, url: str) -> ClientBuilder[C]:
        self._options["base_url"] = url
        return self

    def hosts(self, urls: list[str] | tuple[str, ...]) -> ClientBuilder[C]:
        self._options["hosts"] = tuple(urls)
        return self

    def discovery(self, discovery: Any) -> ClientBuilder[C]:
        """Hosts from a :class:`ekoclient.HostDiscovery` (DNS, a registry...)."""
        self._options["discovery"] = discovery
        return self

    def host_cooldown(self, seconds: float, maximum: float | None = None) -> ClientBuilder[C]:
        """How long a failing host is benched first, and at most (it doubles per failure)."""
        self._options["host_cooldown"] = seconds
        if maximum is not None:
            self._options["host_max_cooldown"] = maximum
        return self

    def api_key(self, key: str) -> ClientBuilder[C]:
        self._options["api_key"] = key
        return self

    def ca_bundle(self, path: str | os.PathLike[str]) -> ClientBuilder[C]:
        self._options["ca_bundle"] = os.fspath(path)
        return self

    def verify(self, verify: bool) -> ClientBuilder[C]:
        self._options["verify"] = verify
        return self

    def allow_insecure(self, allow: bool = True) -> ClientBuilder[C]:
        self._options["allow_insecure"] = allow
        return self

    def retry(self, *, max_attempts: int | None = None, initial: float | None = None,
              maximum: float | None = None, max_elapsed: float | None = None,
              retry_after_cap: float | None = None, budget_capacity: float | None = None,
              budget_ratio: float | None = None, budget_per_second: float | None = None
              ) -> ClientBuilder[C]:
        """Retry policy (see RetryOptions); unset fields keep their defaults."""
        self._options["retry"] = _given(locals())
        return self

    def pool(self, *, max_connections: int | None = None, max_keepalive: int | None = None,
             keepalive_expiry: float | None = None) -> ClientBuilder[C]:
        """Connection pool limits (see PoolOptions)."""
        self._options["pool"] = _given(locals())
        return self

    def timeout(self, *, connect: float | None = None, read: float | None = None,
                write: float | None = None, pool: float | None = None) -> ClientBuilder[C]:
        """Seconds per phase (see TimeoutOptions)."""
        self._options["timeout"] = _given(locals())
        return self

    def rate_limit(self, *, adaptive: bool | None = None, headroom: float | None = None,
                   max_delay: float | None = None) -> ClientBuilder[C]:
        """Client-side pacing, e.g. ``.rate_limit(adaptive=True)`` (see RateLimitOptions)."""
        self._options["rate_limit"] = _given(locals())
        return self

    def token_refresh_margin(self, seconds: float) -> ClientBuilder[C]:
        self._options["token_refresh_margin"] = seconds
        return self

    def token_cache_size(self, size: int) -> ClientBuilder[C]:
        self._options["token_cache_size"] = size
        return self

    def user_agent_suffix(self, suffix: str) -> ClientBuilder[C]:
        self._options["user_agent_suffix"] = suffix
        return self

    def event_hooks(self, hooks: Mapping[str, list[Callable[..., Any]]]) -> ClientBuilder[C]:
        self._options["event_hooks"] = hooks
        return self

    def on_request(self, hook: Callable[..., Any]) -> ClientBuilder[C]:
        """Call ``hook(RequestInfo)`` before every attempt (may be given more than once)."""
        self._options["on_request"] = (*self._options.get("on_request", ()), hook)
        return self

    def on_response(self, hook: Callable[..., Any]) -> ClientBuilder[C]:
        """Call ``hook(ResponseInfo)`` after every answer (may be given more than once)."""
        self._options["on_response"] = (*self._options.get("on_response", ()), hook)
        return self

    def tracing(self, enabled: bool = True) -> ClientBuilder[C]:
        """OpenTelemetry spans per call (``pip install 'ekoclient[otel]'``)."""
        self._options["tracing"] = enabled
        return self

    def transport(self, transport: Any) -> ClientBuilder[C]:
        """An httpx transport to use instead of the network (tests, custom proxies)."""
        self._options["transport"] = transport
        return self

    def proxy(self, url: str) -> ClientBuilder[C]:
        """Send HTTP(S) and the WebSocket stream through ``http://host:port``."""
        self._options["proxy"] = url
        return self

    def client_cert(self, cert: str | os.PathLike[str],
                    key: str | os.PathLike[str] | None = None) -> ClientBuilder[C]:
        """A PEM client certificate (and key file, unless the PEM holds it) for mutual TLS."""
        self._options["client_cert"] = os.fspath(cert)
        if key is not None:
            self._options["client_key"] = os.fspath(key)
        return self

    def http_client(self, client: Any) -> ClientBuilder[C]:
        """Send through this ``httpx.Client``/``AsyncClient`` as configured (not closed by
        the SDK); ``ca_bundle``, ``pool``, ``proxy`` and ``client_cert`` are then refused."""
        self._options["http_client"] = client
        return self

    def build(self) -> C:
        return self._factory(**self._options)


def options_from_env(environ: Mapping[str, str] | None = None, **overrides: Any) -> dict[str, Any]:
    """Options from ``EKODB_URL``, ``EKODB_API_KEY``, ``EKODB_CA_BUNDLE``, ``EKODB_PROXY``,
    ``EKODB_CLIENT_CERT`` and ``EKODB_CLIENT_KEY``."""
    env = os.environ if environ is None else environ
    url = env.get("EKODB_URL")
    given = {"base_url", "hosts", "discovery"} & overrides.keys()
    if not url and not given:
        raise ConfigurationError("EKODB_URL is not set; it should hold the service's base URL")
    options: dict[str, Any] = {}
    if url and not given:
        options["base_url"] = url
    if env.get("EKODB_API_KEY"):
        options["api_key"] = env["EKODB_API_KEY"]
    if env.get("EKODB_CA_BUNDLE"):
        options["ca_bundle"] = env["EKODB_CA_BUNDLE"]
    for name in ("proxy", "client_cert", "client_key"):
        if env.get(f"EKODB_{name.upper()}"):
            options[name] = env[f"EKODB_{name.upper()}"]
    options.update(overrides)
    return options
