"""Seeing what the SDK does: the ``EKOCLIENT_LOG`` switch, request/response hooks, OTel spans.

All three hang off one :class:`Observer` per executor, built once from the options; with no
hooks and no tracing it is ``None`` and the call path pays one ``is None`` test (debug logging
is checked per call with ``logger.isEnabledFor``, which the logging module caches).
Nothing here ever sees a secret: hooks get the headers with ``Authorization`` replaced, and
spans carry method, URL path, host, status and ids only.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger("ekoclient")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
_configured = False


def configure_logging_from_env(environ: Mapping[str, str] | None = None) -> None:
    """``EKOCLIENT_LOG=debug|info|warning``: log the SDK to stderr without any set-up code.

    Done once per process, and only if the application has not given the ``ekoclient``
    logger a handler itself (its own logging set-up wins).
    """
    global _configured
    if _configured:
        return
    value = (os.environ if environ is None else environ).get("EKOCLIENT_LOG", "")
    level = _LEVELS.get(value.strip().lower())
    if level is None:
        return
    _configured = True
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


_REDACTED = "<redacted>"


def redact(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers with ``Authorization`` hidden: what a hook or a log may see."""
    return {k: (_REDACTED if k.lower() == "authorization" else v) for k, v in headers.items()}


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """One attempt about to be sent (``attempt`` counts from 1 across retries)."""

    method: str
    url: str
    headers: Mapping[str, str]
    attempt: int
    operation: str | None
    idempotency_key: str | None


@dataclass(frozen=True, slots=True)
class ResponseInfo:
    """The answer to one attempt (also for error statuses that will be retried)."""

    request: RequestInfo
    status_code: int
    headers: Mapping[str, str]
    request_id: str | None
    elapsed: float


RequestHook = Callable[[RequestInfo], object]
ResponseHook = Callable[[ResponseInfo], object]


class Observer:
    """Hooks and OpenTelemetry spans for one client."""

    def __init__(self, on_request: list[RequestHook], on_response: list[ResponseHook],
                 tracer: Any) -> None:
        self.on_request = on_request
        self.on_response = on_response
        self.tracer = tracer

    @classmethod
    def build(cls, on_request: list[RequestHook], on_response: list[ResponseHook],
              tracing: bool) -> Observer | None:
        tracer = _tracer() if tracing else None
        if not on_request and not on_response and tracer is None:
            return None
        return cls(on_request, on_response, tracer)

    @contextmanager
    def span(self, method: str, operation: str | None, target: str | None
             ) -> Iterator[Any]:
        """One CLIENT span per SDK call (retries are attempts inside it)."""
        if self.tracer is None:
            yield None
            return
        from opentelemetry.trace import SpanKind

        name = f"{operation} {target}" if operation and target else (operation or method)
        attributes: dict[str, Any] = {"db.system.name": "ekodb", "http.request.method": method}
        if operation:
            attributes["db.operation.name"] = operation
        if target:
            attributes["db.collection.name"] = target
        with self.tracer.start_as_current_span(name, kind=SpanKind.CLIENT,
                                               attributes=attributes) as span:
            try:
                yield span
            except BaseException as exc:
                # set once, from the outcome: a retried 503 before a 200 is no error
                if span.is_recording():
                    status = status_of(exc)
                    span.set_attribute("error.type", str(status) if status is not None
                                       else type(exc).__qualname__)
                raise

    def request(self, info: RequestInfo) -> None:
        for hook in self.on_request:
            hook(info)

    def response(self, info: ResponseInfo) -> None:
        for hook in self.on_response:
            hook(info)


def span_attempt(span: Any, url: str, attempt: int) -> None:
    """Attributes of the attempt being made (the last one wins, as the conventions ask)."""
    if span is None or not span.is_recording():
        return
    parts = urlsplit(url)
    span.set_attribute("url.full", f"{parts.scheme}://{parts.netloc}{parts.path}")
    span.set_attribute("server.address", parts.hostname or "")
    if parts.port is not None:
        span.set_attribute("server.port", parts.port)
    if attempt > 1:
        span.set_attribute("http.request.resend_count", attempt - 1)


def span_answer(span: Any, status: int, request_id: str | None) -> None:
    if span is None or not span.is_recording():
        return
    span.set_attribute("http.response.status_code", status)
    if request_id:
        span.set_attribute("ekodb.request_id", request_id)


def status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _tracer() -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        from .errors import ConfigurationError

        raise ConfigurationError(
            "tracing=True needs OpenTelemetry: pip install 'ekoclient[otel]'") from None
    from ._version import __version__

    return trace.get_tracer("ekoclient", __version__)


def log_request(info: RequestInfo) -> None:
    logger.debug("-> %s %s attempt %d%s", info.method, info.url, info.attempt,
                 f" ({info.operation})" if info.operation else "")


def log_response(method: str, url: str, status: int, request_id: str | None,
                 started: float) -> None:
    logger.debug("<- %s %s %d in %.1f ms (request id %s)", method, url, status,
                 (time.perf_counter() - started) * 1000, request_id)
