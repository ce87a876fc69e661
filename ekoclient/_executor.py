"""Runs :class:`~ekoclient._call.Call` descriptions: host → auth → retry → transport → errors.

All decisions live in :class:`ExecutorCore` and are free of I/O: what headers to send, what an
answer means (done, refresh the token and replay, wait and retry, or raise), how a token
exchange is read. :class:`SyncExecutor` and :class:`AsyncExecutor` only add the I/O, the
sleeping and the locking, each in a loop of a few lines, so the two cannot drift apart.

``with_options``/``with_raw_response`` derive an executor (:meth:`ExecutorCore.derive`): a
shallow copy sharing every piece of state (pool, tokens, hosts, budget, lifecycle) with its
own :class:`~ekoclient._options.CallOptions` and retry policy. Token exchanges always run on
the root executor, so a derived one never changes how keys are exchanged.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any, TypeVar

from typing_extensions import Self

from ._call import Call, json_call
from ._config import ClientOptions
from ._hosts import HostPool
from ._http import AsyncTransport, Response, SyncTransport, ssl_context
from ._observe import (
    Observer,
    RequestInfo,
    ResponseInfo,
    configure_logging_from_env,
    log_request,
    log_response,
    redact,
    span_answer,
    span_attempt,
)
from ._options import CallOptions, RawResponse, raw_headers
from ._pacing import pace
from ._retry import (
    RETRYABLE_STATUSES,
    RetryBudget,
    RetryPolicy,
    RetryState,
    retry_after_of,
)
from ._tokens import Credential, CredentialState, RateLimitInfo, TokenCache
from .errors import (
    APIError,
    AuthenticationError,
    ClientClosedError,
    ConfigurationError,
    EkoError,
    EventLoopError,
    MalformedResponseError,
    TransportError,
    error_from_response,
)

T = TypeVar("T")

logger = logging.getLogger("ekoclient")

HEALTH_PATH = "/api/health"

# What to do after an error answer. REFUSED: drop the token that was refused, then raise.
DONE, REFRESH, RETRY, RAISE, REFUSED = range(5)


def _exchange_call(credential: Credential) -> Call[str]:
    return json_call("POST", "/api/auth/token", _parse_token, {"api_key": credential.reveal()},
                     auth=False)


def _parse_token(response: Response) -> str:
    token = response.json().get("token")
    if not isinstance(token, str):
        raise TransportError("the token endpoint answered without a token")
    return token


class Lifecycle:
    """State every derived copy of an executor shares: closed yet, and (async) whose loop."""

    __slots__ = ("closed", "loop")

    def __init__(self) -> None:
        self.closed = False
        self.loop: asyncio.AbstractEventLoop | None = None


class ExecutorCore:
    """The I/O-free half of an executor, shared by the sync and async flavours."""

    is_async: bool

    def __init__(self, options: ClientOptions) -> None:
        configure_logging_from_env()
        self.options = options
        self.lifecycle = Lifecycle()
        self.call_options = CallOptions()
        self.root: Any = self  # the executor this one was derived from (or itself)
        self.observer = Observer.build(list(options.on_request), list(options.on_response),
                                       options.tracing)
        discovery = options.discovery
        refresh = getattr(discovery, "refresh_interval", None) if discovery else None
        self.hosts = HostPool(options.hosts, cooldown=options.host_cooldown,
                              max_cooldown=options.host_max_cooldown,
                              on_probe=self.start_probe, refresh_interval=refresh,
                              on_refresh=self.start_refresh if refresh else None)
        self.tokens = TokenCache(options.token_cache_size)
        r = options.retry
        self.policy = self.make_policy(
            r, RetryBudget(capacity=r.budget_capacity, ratio=r.budget_ratio,
                           per_second=r.budget_per_second))
        self._margin = options.token_refresh_margin
        # client-side pacing from X-RateLimit-* (opt-in); None keeps the hot path bare
        self.pacing = options.rate_limit if options.rate_limit.adaptive else None
        self._pace_lock = threading.Lock()
        t = options.timeout
        self._default_timeouts = (t.connect, t.read, t.write, t.pool)

    @staticmethod
    def make_policy(r: Any, budget: RetryBudget) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=r.max_attempts,
            initial=r.initial,
            maximum=r.maximum,
            max_elapsed=r.max_elapsed,
            retry_after_cap=r.retry_after_cap,
            budget=budget,
        )

    def derive(self, *, timeouts: tuple[float, float, float, float] | None = None,
               max_retries: int | None = None, extra_headers: Mapping[str, str] | None = None,
               raw: bool | None = None) -> Self:
        """A copy sharing all state, with these per-call options on top of this one's."""
        new = copy.copy(self)
        opts = self.call_options
        new.call_options = CallOptions(
            timeouts=timeouts if timeouts is not None else opts.timeouts,
            extra_headers={**opts.extra_headers, **(extra_headers or {})},
            raw=opts.raw if raw is None else raw,
        )
        if max_retries is not None:
            retry = self.options.retry.model_copy(update={"max_attempts": max_retries + 1})
            new.policy = self.make_policy(retry, self.policy.budget)
        return new

    def closed_error(self) -> ClientClosedError:
        kind = "AsyncClient" if self.is_async else "Client"
        return ClientClosedError(
            f"this {kind} is closed: create a new {kind}, or make every call inside its "
            f"`{'async with' if self.is_async else 'with'}` block (closing a client also "
            "closes every view and with_options() copy of it)")

    def transport_kwargs(self) -> dict[str, Any]:
        o = self.options
        return {
            "transport": o.transport,
            "http_client": o.http_client,
            "proxy": o.proxy,
            "verify": ssl_context(o.ca_bundle, o.verify, o.client_cert, o.client_key),
            "max_connections": o.pool.max_connections,
            "max_keepalive": o.pool.max_keepalive,
            "keepalive_expiry": o.pool.keepalive_expiry,
            "timeouts": (o.timeout.connect, o.timeout.read, o.timeout.write, o.timeout.pool),
            "user_agent": o.user_agent,
            "event_hooks": o.event_hooks,
        }

    def start_probe(self, url: str) -> None:
        """Begin a health probe of a benched host in the background (per executor)."""
        raise NotImplementedError

    def start_refresh(self) -> None:
        """Begin a host discovery refresh in the background (per executor)."""
        raise NotImplementedError

    def discovered_hosts(self) -> tuple[str, ...]:
        """Ask discovery again (blocking; run off the caller's path)."""
        return self.options.checked_hosts(self.options.discovery.hosts())

    def refresh_done(self, urls: tuple[str, ...] | None, exc: BaseException | None) -> None:
        if exc is not None or not urls:
            logger.warning("host discovery gave no usable hosts (%s); keeping %s",
                           exc or "empty list", self.hosts.urls)
            self.hosts.refresh_failed()
        else:
            self.hosts.update(urls)

    def gave_up(self, call: Call[Any], exc: TransportError, retry: RetryState
                ) -> TransportError:
        """Say how many attempts were made and why retrying stopped (and, with several
        hosts, that every one was tried), not only the last failure."""
        if not call.replayable:
            return exc
        count = len(self.hosts.urls)
        where = f" over {count} hosts" if count > 1 else ""
        error = type(exc)(f"no host answered {call.method} {call.path}: "
                          f"{retry.gave_up().replace(' attempt(s)', f' attempt(s){where}', 1)}"
                          f"; last error: {exc}")
        error.__cause__ = exc
        return error

    def attempt_timeouts(self, retry: RetryState
                         ) -> tuple[float, float, float, float] | None:
        """Timeouts for the attempt about to start: the per-call ones (``with_options``) or
        the client's, each cut to the call's time left so that ``max_elapsed`` bounds the
        whole call, the attempt in flight included (None: the client's timeouts as they are).
        """
        chosen = self.call_options.timeouts
        left = retry.remaining(time.monotonic())
        base = chosen if chosen is not None else self._default_timeouts
        # an attempt within half a second of the bound is left alone: no per-request
        # Timeout object on the hot path for a bound the configured timeouts already keep
        if left >= max(base) - 0.5:
            return chosen
        cap = max(left, 0.001)
        connect, read, write, pool = (min(x, cap) for x in base)
        return (connect, read, write, pool)

    def headers(self, call: Call[Any], token: str | None, idempotency_key: str | None
                ) -> Mapping[str, str]:
        extra = self.call_options.extra_headers
        if token is None and idempotency_key is None and not extra:
            return call.headers
        headers = {**call.headers, **extra} if extra else dict(call.headers)
        if token is not None:
            headers["Authorization"] = "Bearer " + token
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    @staticmethod
    def idempotency_key(call: Call[Any], given: str | None = None) -> str | None:
        """One key per logical write, kept across all of its retries (the caller's if given)."""
        if not call.is_write:
            return None
        return given if given is not None else uuid.uuid4().hex

    def sending(self, call: Call[Any], url: str, headers: Mapping[str, str], attempt: int,
                operation: str | None, idem: str | None, span: Any) -> RequestInfo:
        """Tell the hooks, the debug log and the span about an attempt."""
        info = RequestInfo(call.method, url, redact(headers), attempt, operation, idem)
        if logger.isEnabledFor(logging.DEBUG):
            log_request(info)
        span_attempt(span, url, attempt)
        if self.observer is not None:
            self.observer.request(info)
        return info

    def answered(self, info: RequestInfo, response: Response, started: float, span: Any
                 ) -> None:
        rid = response.headers.get("x-request-id")
        if logger.isEnabledFor(logging.DEBUG):
            log_response(info.method, info.url, response.status_code, rid, started)
        span_answer(span, response.status_code, rid)
        if self.observer is not None and self.observer.on_response:
            self.observer.response(ResponseInfo(info, response.status_code,
                                                dict(response.headers), rid,
                                                time.perf_counter() - started))

    @staticmethod
    def raw(response: Response, result: Any, attempts: int, started: float) -> Any:
        return RawResponse(response.status_code, raw_headers(response.headers),
                           response.headers.get("x-request-id"), result, attempts,
                           time.perf_counter() - started)

    def succeeded(self, call: Call[Any], host: str, response: Response,
                  credential: Credential | None) -> None:
        self.policy.budget.deposit()
        self.hosts.succeeded(host)
        if credential is not None:
            headers = response.headers
            if "x-ratelimit-limit" in headers:
                self.observe_rate_limit(credential, headers)

    def pace_delay(self, credential: Credential) -> float:
        """Seconds to hold a call so that its credential stays under its rate limit."""
        pacing = self.pacing
        assert pacing is not None
        state = self.tokens.state(credential)
        with self._pace_lock:  # the slot reservation must be atomic across threads
            delay, state.pace_at = pace(state.rate_limit, state.pace_at, time.time(),
                                        headroom=pacing.headroom, max_delay=pacing.max_delay)
        return delay

    def observe_rate_limit(self, credential: Credential, headers: Mapping[str, str]) -> None:
        def num(name: str) -> int | None:
            try:
                return int(headers[name])
            except (KeyError, ValueError):
                return None

        reset = num("x-ratelimit-reset")
        state = self.tokens.state(credential)
        state.rate_limit = RateLimitInfo(
            limit=num("x-ratelimit-limit"),
            remaining=num("x-ratelimit-remaining"),
            reset=float(reset) if reset is not None else None,
            observed_at=time.time(),
        )

    def judge(
        self,
        call: Call[Any],
        host: str,
        response: Response,
        body: bytes,
        credential: Credential | None,
        retry: RetryState,
        refreshed: bool,
    ) -> tuple[int, Any]:
        """What an error answer means: (REFRESH, None), (RETRY, delay) or (RAISE, error)."""
        status = response.status_code
        headers = response.headers
        if credential is not None and "x-ratelimit-limit" in headers:
            self.observe_rate_limit(credential, headers)
        if status == 401 and call.auth and credential is not None and not refreshed:
            if call.replayable:
                return REFRESH, None
            # A body streamed once cannot be replayed: drop the token, let the caller retry.
            return REFUSED, AuthenticationError(
                "the token was refused and this call's body was streamed, so it cannot be "
                "sent again; call again to use a fresh token",
                status=status, code="token_refused",
                request_id=response.headers.get("x-request-id"))
        retry_after = retry_after_of(headers)
        error = error_from_response(status, headers, body, retry_after=retry_after)
        failover = False
        if status >= 500:
            self.hosts.failed(host)
            failover = self.hosts.has_healthy()
        if status == 401 and credential is not None:
            error = self.revoked(credential, error)
        if status in RETRYABLE_STATUSES and call.replayable:
            delay = retry.next_delay(retry_after)
            if delay is not None:
                if failover:
                    delay = 0.0  # another host is healthy: go there now
                # a 429 wait is the caller's own doing (its key's limit): say it louder
                logger.log(logging.WARNING if status == 429 else logging.INFO,
                           "%s %s answered %s (request id %s); retry %d in %.2fs",
                           call.method, call.path, status, error.request_id,
                           retry.attempt, delay)
                return RETRY, delay
            error.message = f"{error.message}; {retry.gave_up()}"
        return RAISE, error

    def failed(self, call: Call[Any], host: str, exc: TransportError, retry: RetryState
               ) -> float | None:
        """Seconds to wait before retrying a transport failure, or None to raise it."""
        self.hosts.failed(host)
        if not call.replayable:
            return None
        delay = retry.next_delay()
        if delay is not None:
            if self.hosts.has_healthy():
                delay = 0.0  # another host is healthy: go there now
            logger.info("%s %s failed (%s); retry %d in %.2fs",
                        call.method, call.path, type(exc).__name__, retry.attempt, delay)
        return delay

    @staticmethod
    def malformed(call: Call[Any], response: Response, exc: Exception) -> EkoError:
        """A 2xx answer the SDK could not read (a proxy's HTML page, a truncated body)."""
        if isinstance(exc, EkoError):
            return exc
        return MalformedResponseError(
            f"{call.method} {call.path} answered {response.status_code} with a body the SDK "
            f"could not read ({type(exc).__name__}: {str(exc)[:200]}); request id "
            f"{response.headers.get('x-request-id')}")

    @staticmethod
    def revoked(credential: Credential, error: APIError) -> AuthenticationError:
        return AuthenticationError(
            f"API key {credential.hint} was refused: {error.message}. It may have been "
            "revoked, rotated or never existed; a new token will not help.",
            status=error.status, code=error.code, request_id=error.request_id,
        )

    @staticmethod
    def no_credential() -> ConfigurationError:
        return ConfigurationError(
            "this client has no API key: pass api_key=..., set EKODB_API_KEY, or call "
            "through Authenticator(client).using_credentials(key)"
        )

    def store_token(self, state: CredentialState, token: str) -> str:
        state.store(token, self._margin, time.monotonic())
        return token

    def exchange_failed(self, state: CredentialState, credential: Credential,
                        exc: EkoError) -> str:
        """After a failed exchange: keep using a token that still works, else raise.

        Waiters share the failure (no queue of callers each retrying a dead endpoint), and
        only a refused key (401/403) throws away the token it still has.
        """
        refused = isinstance(exc, APIError) and exc.status in (401, 403)
        if isinstance(exc, APIError) and exc.status == 401:
            exc = self.revoked(credential, exc)
        state.fail(exc, drop_token=refused)
        usable = None if refused else state.usable(time.monotonic())
        if usable is None:
            raise exc
        logger.warning("token refresh for %s failed (%s); using the current token until it "
                       "expires", credential.hint, type(exc).__name__)
        return usable

    @staticmethod
    def after_wait(state: CredentialState) -> str | None:
        """After waiting on another caller's exchange: its token, or its failure."""
        if state.error is not None:
            raise state.error.with_traceback(None)
        return state.usable(time.monotonic())


class SyncExecutor(ExecutorCore):
    """Runs calls on a blocking httpx pool; safe to share across threads."""

    is_async = False

    def __init__(self, options: ClientOptions) -> None:
        super().__init__(options)
        self.transport = SyncTransport(**self.transport_kwargs())

    def start_probe(self, url: str) -> None:
        threading.Thread(target=self._probe, args=(url,), name="ekoclient-probe",
                         daemon=True).start()

    def _probe(self, url: str) -> None:
        healthy = False
        try:
            response = self.transport.send("GET", url + HEALTH_PATH, {}, None, None)
            healthy = response.status_code == 200
        except Exception as exc:  # closed client, TLS trouble...: all mean "not yet"
            logger.debug("health probe of %s failed: %s", url, exc)
        finally:
            (self.hosts.probe_succeeded if healthy else self.hosts.probe_failed)(url)

    def start_refresh(self) -> None:
        threading.Thread(target=self._refresh, name="ekoclient-discovery",
                         daemon=True).start()

    def _refresh(self) -> None:
        try:
            urls = self.discovered_hosts()
        except Exception as exc:
            self.refresh_done(None, exc)
        else:
            self.refresh_done(urls, None)

    def execute(self, call: Call[T], credential: Credential | None, *,
                idempotency_key: str | None = None, operation: str | None = None,
                target: str | None = None) -> T:
        """Run one call: pick a host, authenticate, retry by the policy, parse the answer."""
        if self.lifecycle.closed:
            raise self.closed_error()
        observer = self.observer
        if observer is None or observer.tracer is None:
            return self._execute(call, credential, idempotency_key, operation, None)
        with observer.span(call.method, operation, target) as span:
            return self._execute(call, credential, idempotency_key, operation, span)

    def _execute(self, call: Call[T], credential: Credential | None, given_key: str | None,
                 operation: str | None, span: Any) -> T:
        retry = self.policy.start(time.monotonic())
        idem = self.idempotency_key(call, given_key)
        options = self.call_options
        observe = self.observer is not None or logger.isEnabledFor(logging.DEBUG)
        refreshed = False
        attempt = 0
        while True:
            if self.pacing is not None and call.auth and credential is not None:
                wait = self.pace_delay(credential)
                if wait > 0:
                    time.sleep(wait)
            host = self.hosts.pick()
            token = self.token(credential) if call.auth else None
            url = host + call.path
            headers = self.headers(call, token, idem)
            attempt += 1
            if observe:
                info = self.sending(call, url, headers, attempt, operation, idem, span)
            started = time.perf_counter()
            try:
                response = self.transport.send(
                    call.method, url, headers, call.params,
                    call.content, call.stream,  # type: ignore[arg-type]
                    timeout=self.attempt_timeouts(retry))
                if response.status_code >= 400:
                    try:
                        body = self.transport.read(response)
                    finally:
                        response.close()
            except TransportError as exc:
                delay = self.failed(call, host, exc, retry)
                if delay is None:
                    raise self.gave_up(call, exc, retry)  # noqa: B904 - cause set inside
                time.sleep(delay)
                continue
            except RuntimeError as exc:
                if self.lifecycle.closed:  # closed by another thread while this call ran
                    raise self.closed_error() from exc
                raise
            if observe:
                try:
                    self.answered(info, response, started, span)
                except BaseException:
                    response.close()  # a failing hook must not leak a streamed connection
                    raise
            if response.status_code < 400:
                self.succeeded(call, host, response, credential)
                try:
                    result = call.parse(response)
                except Exception as exc:
                    response.close()
                    raise self.malformed(call, response, exc) from exc
                if options.raw:
                    return self.raw(response, result, attempt, started)  # type: ignore[no-any-return]
                return result
            verdict, value = self.judge(call, host, response, body, credential, retry,
                                        refreshed)
            if verdict == RETRY:
                time.sleep(value)
                continue
            if verdict != RAISE:
                self.tokens.state(credential).invalidate(token)  # type: ignore[arg-type]
            if verdict != REFRESH:
                raise call.explain(value) if call.explain is not None else value
            refreshed = True

    def token(self, credential: Credential | None) -> str:
        if credential is None:
            raise self.no_credential()
        state = self.tokens.state(credential)
        now = time.monotonic()
        token = state.fresh(now)
        if token is not None:
            return token
        lock = state.thread_lock
        usable = state.usable(now)
        if usable is not None:
            if not lock.acquire(blocking=False):
                return usable  # someone else is refreshing; the old token still works
        else:
            seen = state.generation
            lock.acquire()
            if state.generation != seen:
                lock.release()
                return self.after_wait(state) or self.token(credential)
        try:
            if usable is not None and (token := state.fresh(time.monotonic())) is not None:
                return token  # another thread refreshed between our check and our lock
            return self.store_token(state, self.root.execute(_exchange_call(credential), None))
        except EkoError as exc:
            return self.exchange_failed(state, credential, exc)
        finally:
            lock.release()

    def close(self) -> None:
        self.lifecycle.closed = True
        self.transport.close()


class AsyncExecutor(ExecutorCore):
    """Runs calls on an asyncio httpx pool; safe to share across tasks of one loop."""

    is_async = True

    def __init__(self, options: ClientOptions) -> None:
        super().__init__(options)
        self.transport = AsyncTransport(**self.transport_kwargs())
        self._background: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # raises off-loop: probe fails
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def start_probe(self, url: str) -> None:
        self._spawn(self._probe(url))

    async def _probe(self, url: str) -> None:
        healthy = False
        try:
            response = await self.transport.send("GET", url + HEALTH_PATH, {}, None, None)
            healthy = response.status_code == 200
        except Exception as exc:
            logger.debug("health probe of %s failed: %s", url, exc)
        finally:
            (self.hosts.probe_succeeded if healthy else self.hosts.probe_failed)(url)

    def start_refresh(self) -> None:
        self._spawn(self._refresh())

    async def _refresh(self) -> None:
        try:
            urls = await asyncio.to_thread(self.discovered_hosts)
        except Exception as exc:
            self.refresh_done(None, exc)
        else:
            self.refresh_done(urls, None)

    async def execute(self, call: Call[T], credential: Credential | None, *,
                      idempotency_key: str | None = None, operation: str | None = None,
                      target: str | None = None) -> T:
        """Run one call: pick a host, authenticate, retry by the policy, parse the answer."""
        lifecycle = self.lifecycle
        if lifecycle.closed:
            raise self.closed_error()
        loop = asyncio.get_running_loop()
        if lifecycle.loop is not loop:
            if lifecycle.loop is not None:
                raise EventLoopError(
                    "this AsyncClient was first used on another event loop, and its "
                    "connections and locks belong to that loop: create one AsyncClient per "
                    "event loop (for example inside the coroutine given to asyncio.run), or "
                    "use the blocking Client from threads")
            lifecycle.loop = loop
        observer = self.observer
        if observer is None or observer.tracer is None:
            return await self._execute(call, credential, idempotency_key, operation, None)
        with observer.span(call.method, operation, target) as span:
            return await self._execute(call, credential, idempotency_key, operation, span)

    async def _execute(self, call: Call[T], credential: Credential | None,
                       given_key: str | None, operation: str | None, span: Any) -> T:
        retry = self.policy.start(time.monotonic())
        idem = self.idempotency_key(call, given_key)
        options = self.call_options
        observe = self.observer is not None or logger.isEnabledFor(logging.DEBUG)
        refreshed = False
        attempt = 0
        while True:
            if self.pacing is not None and call.auth and credential is not None:
                wait = self.pace_delay(credential)
                if wait > 0:
                    await asyncio.sleep(wait)
            host = self.hosts.pick()
            token = await self.token(credential) if call.auth else None
            url = host + call.path
            headers = self.headers(call, token, idem)
            attempt += 1
            if observe:
                info = self.sending(call, url, headers, attempt, operation, idem, span)
            started = time.perf_counter()
            try:
                response = await self.transport.send(
                    call.method, url, headers, call.params, call.content, call.stream,
                    timeout=self.attempt_timeouts(retry))
                if response.status_code >= 400:
                    try:
                        body = await self.transport.read(response)
                    finally:
                        await response.aclose()
            except TransportError as exc:
                delay = self.failed(call, host, exc, retry)
                if delay is None:
                    raise self.gave_up(call, exc, retry)  # noqa: B904 - cause set inside
                await asyncio.sleep(delay)
                continue
            except RuntimeError as exc:
                if self.lifecycle.closed:  # closed by another task while this call ran
                    raise self.closed_error() from exc
                raise
            if observe:
                try:
                    self.answered(info, response, started, span)
                except BaseException:
                    await response.aclose()  # a failing hook must not leak a connection
                    raise
            if response.status_code < 400:
                self.succeeded(call, host, response, credential)
                try:
                    result = call.parse(response)
                except Exception as exc:
                    await response.aclose()
                    raise self.malformed(call, response, exc) from exc
                if options.raw:
                    return self.raw(response, result, attempt, started)  # type: ignore[no-any-return]
                return result
            verdict, value = self.judge(call, host, response, body, credential, retry,
                                        refreshed)
            if verdict == RETRY:
                await asyncio.sleep(value)
                continue
            if verdict != RAISE:
                self.tokens.state(credential).invalidate(token)  # type: ignore[arg-type]
            if verdict != REFRESH:
                raise call.explain(value) if call.explain is not None else value
            refreshed = True

    async def token(self, credential: Credential | None) -> str:
        if credential is None:
            raise self.no_credential()
        state = self.tokens.state(credential)
        now = time.monotonic()
        token = state.fresh(now)
        if token is not None:
            return token
        lock = state.async_lock
        usable = state.usable(now)
        if usable is not None:
            if lock.locked():
                return usable  # someone else is refreshing; the old token still works
            await lock.acquire()
        else:
            seen = state.generation
            await lock.acquire()
            if state.generation != seen:
                lock.release()
                return self.after_wait(state) or await self.token(credential)
        try:
            return self.store_token(
                state, await self.root.execute(_exchange_call(credential), None))
        except EkoError as exc:
            return self.exchange_failed(state, credential, exc)
        finally:
            lock.release()

    async def aclose(self) -> None:
        self.lifecycle.closed = True
        for task in list(self._background):
            task.cancel()
        await self.transport.aclose()
