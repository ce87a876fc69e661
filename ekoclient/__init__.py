"""ekoclient: one pool, many API keys, for ekoDB-compatible services.

The public surface is small: the clients, the Authenticator, the ``where`` filter builder,
and the :mod:`ekoclient.errors` and :mod:`ekoclient.models` modules.
"""

from ._client import (
    AsyncAuthenticator,
    AsyncClient,
    AsyncCredentialsView,
    Authenticator,
    Client,
    CredentialsView,
    RawServices,
)
from ._config import (
    ClientBuilder,
    ClientOptions,
    PoolOptions,
    RateLimitOptions,
    RetryOptions,
    TimeoutOptions,
)
from ._filters import Filter, where
from ._hosts import HostDiscovery, HostStatus, StaticHosts
from ._observe import RequestInfo, ResponseInfo
from ._options import RawResponse
from ._tokens import RateLimitInfo
from ._version import __version__

__all__ = [
    "AsyncAuthenticator",
    "AsyncClient",
    "AsyncCredentialsView",
    "Authenticator",
    "Client",
    "ClientBuilder",
    "ClientOptions",
    "CredentialsView",
    "Filter",
    "HostDiscovery",
    "HostStatus",
    "PoolOptions",
    "RateLimitInfo",
    "RateLimitOptions",
    "RawResponse",
    "RawServices",
    "RequestInfo",
    "ResponseInfo",
    "RetryOptions",
    "StaticHosts",
    "TimeoutOptions",
    "__version__",
    "where",
]
