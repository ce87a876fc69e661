"""CompiledRoutes: run the app's FastAPI routes without FastAPI's per-request machinery.

The routes stay the single definition of every endpoint (signature, parameters, answer,
/openapi.json); this layer only executes them faster. Profiling ``GET /api/find/{c}/{id}``
showed about three quarters of the server's Python time in FastAPI itself: matching the path
against every route of every included router in turn, and re-deriving each request's
dependency graph (annotation introspection per parameter per request). Here both are done
once at start: routes are bucketed by method and first literal path segments, and each
route's dependency tree is compiled into a list of small steps.

Only what the routes use is compiled: path parameters, query parameters (validated by the
same pydantic field as FastAPI, errors raised as the same RequestValidationError), Request
and Response parameters, and dependencies built from those. A route using anything else
(headers, cookies, bodies declared as parameters, yield dependencies, background tasks,
security scopes) is left to FastAPI, as is every request no compiled route matches (404,
405, /openapi.json). ``tests/server/test_dispatch.py`` checks both paths answer alike.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.routing import WebSocketRoute

from mock_server.asgi import ASGIApp, Receive, Scope, Send

#: Response models whose validation returns its input unchanged for JSON data: their
#: answers are serialised as they are (FastAPI would validate and copy them first).
_PASS_THROUGH = frozenset({"None", "typing.Any", "dict[str, typing.Any]",
                           "list[dict[str, typing.Any]]", "list[typing.Any]",
                           "list[list[typing.Any]]"})
_MISSING = object()
_NO_BODY = frozenset({204, 304})

Handler = Callable[[Request], Awaitable[Any]]
ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


class _NotCompilable(Exception):
    """The route uses a feature this layer leaves to FastAPI."""


@dataclass(frozen=True)
class _Param:
    """A path or query parameter: where it comes from and how it is validated."""

    name: str
    alias: str
    source: str  # "path" or "query"
    adapter: TypeAdapter[Any] | None  # None: a plain str needs no validation
    required: bool
    default: Any

    def resolve(self, raw: object, errors: list[dict[str, Any]]) -> Any:
        if raw is None:
            if self.required:
                errors.append({"type": "missing", "loc": (self.source, self.alias),
                               "msg": "Field required", "input": None})
                return None
            return self.default
        if self.adapter is None:
            return raw
        try:
            return self.adapter.validate_python(raw)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                errors.append({**err, "loc": (self.source, self.alias, *err["loc"])})
            return None


def _param(field: Any, source: str) -> _Param:
    info = field.field_info
    annotation = info.annotation
    required = bool(info.is_required())
    plain_str = annotation is str and not info.metadata
    default = None if required else info.get_default(call_default_factory=True)
    form: Any = Annotated[annotation, info]  # the field as FastAPI validates it
    adapter: TypeAdapter[Any] | None = None if plain_str else TypeAdapter(form)
    return _Param(field.name, field.alias, source, adapter, required, default)


@dataclass(frozen=True)
class _Step:
    """One dependant (a dependency or the endpoint): what it takes and how it is called."""

    call: Callable[..., Any]
    is_async: bool
    name: str | None  # the keyword its result is passed as to its parent (None: discarded)
    params: tuple[_Param, ...]
    request_name: str | None
    response_name: str | None
    children: tuple[_Step, ...]
    use_cache: bool


def _compile_step(dependant: Any) -> _Step:
    if (dependant.header_params or dependant.cookie_params or dependant.body_params
            or dependant.background_tasks_param_name or dependant.websocket_param_name
            or dependant.http_connection_param_name
            or dependant.security_scopes_param_name):
        raise _NotCompilable("parameters of a kind left to FastAPI")
    call = dependant.call
    if call is None or inspect.isgeneratorfunction(call) or inspect.isasyncgenfunction(call) \
            or inspect.isclass(call):
        raise _NotCompilable("a yield or class dependency")
    params = tuple([_param(f, "path") for f in dependant.path_params]
                   + [_param(f, "query") for f in dependant.query_params])
    return _Step(
        call=call,
        is_async=inspect.iscoroutinefunction(call),
        name=dependant.name,
        params=params,
        request_name=dependant.request_param_name,
        response_name=dependant.response_param_name,
        children=tuple(_compile_step(d) for d in dependant.dependencies),
        use_cache=bool(dependant.use_cache),
    )


class _Solved:
    """Per-request state of a dependency solve: errors, cached results, the sub-response."""

    __slots__ = ("cache", "errors", "path_params", "query", "request", "response")

    def __init__(self, request: Request, path_params: dict[str, Any]) -> None:
        self.request = request
        self.path_params = path_params
        self.query: QueryParams | None = None
        self.errors: list[dict[str, Any]] = []
        self.cache: dict[Callable[..., Any], Any] = {}
        self.response: Response | None = None

    def raw(self, param: _Param) -> object:
        if param.source == "path":
            return self.path_params.get(param.alias)
        if self.query is None:
            self.query = self.request.query_params
        return self.query.get(param.alias)

    def sub_response(self) -> Response:
        if self.response is None:
            self.response = Response()
            self.response.status_code = None  # type: ignore[assignment]  # as FastAPI: unset
            del self.response.headers["content-length"]
        return self.response


async def _solve(step: _Step, solved: _Solved) -> Any:
    """Call ``step`` with its arguments, as FastAPI's solve_dependencies does: dependencies
    first, in order, each called unless its own parameters (or its own dependencies')
    failed, errors collected. A failure elsewhere does not skip a step: authentication
    still runs (and counts against the rate limit) when another dependency's option was
    invalid."""
    start = len(solved.errors)
    kwargs: dict[str, Any] = {}
    for child in step.children:
        if child.use_cache and child.call in solved.cache:
            value = solved.cache[child.call]
        else:
            before = len(solved.errors)
            value = await _solve(child, solved)
            if len(solved.errors) != before:
                continue
            if child.use_cache:
                solved.cache[child.call] = value
        if child.name is not None:
            kwargs[child.name] = value
    for param in step.params:
        kwargs[param.name] = param.resolve(solved.raw(param), solved.errors)
    if step.request_name is not None:
        kwargs[step.request_name] = solved.request
    if step.response_name is not None:
        kwargs[step.response_name] = solved.sub_response()
    if len(solved.errors) != start:
        return None
    if step.is_async:
        return await step.call(**kwargs)
    return await run_in_threadpool(step.call, **kwargs)


def _encode(content: Any) -> bytes:
    """The JSON FastAPI's JSONResponse writes for ``content``."""
    try:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None,
                          separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError):  # not plain JSON data: FastAPI's own conversion
        return bytes(JSONResponse(jsonable_encoder(content)).body)


@dataclass(frozen=True)
class _Route:
    route: APIRoute
    step: _Step
    serialize: Callable[[Any], Any] | None  # None: the answer is sent as it is


def _compile(route: APIRoute) -> _Route:
    response_class = getattr(route.response_class, "value", route.response_class)
    if response_class is not JSONResponse:
        raise _NotCompilable("a response class other than JSONResponse")
    if (route.response_model_include or route.response_model_exclude
            or route.response_model_exclude_unset or route.response_model_exclude_defaults
            or route.response_model_exclude_none or not route.response_model_by_alias):
        raise _NotCompilable("response model options")
    serialize = None
    if repr(route.response_model) not in _PASS_THROUGH:
        adapter: TypeAdapter[Any] = TypeAdapter(route.response_model)

        def serialize(value: Any, adapter: TypeAdapter[Any] = adapter) -> Any:
            return adapter.dump_python(adapter.validate_python(value), mode="json")

    return _Route(route, _compile_step(route.dependant), serialize)


def _leading(path: str) -> tuple[str, ...]:
    """The literal first two segments of a route path or request path ("" for a param)."""
    parts = path.split("/")[1:3]
    return tuple("" if "{" in p else p for p in parts)


class CompiledRoutes:
    """ASGI middleware: serves the compiled routes itself, hands the rest to ``app``.

    ``routes`` must be in the order the app's router tries them (first full match wins).
    """

    def __init__(self, app: ASGIApp, routes: Iterable[object],
                 error_handlers: dict[Any, ErrorHandler],
                 dependency_overrides: dict[Any, Any] | None = None) -> None:
        self.app = app
        self._handlers = error_handlers
        #: The app's ``dependency_overrides`` (a live dict): while any is set, FastAPI
        #: serves every request, so overrides apply as they would without this layer.
        self._overrides = dependency_overrides if dependency_overrides is not None else {}
        #: (method, leading literal segments) → the routes that may match, in router order;
        #: an uncompiled one keeps its place (None) so that FastAPI serves what it matches
        self._table: dict[tuple[str, tuple[str, ...]], list[tuple[APIRoute, _Route | None]]]
        self._table = {}
        #: "METHODS path" of the routes left to FastAPI, and why
        self.skipped: dict[str, str] = {}
        for route in routes:
            path = getattr(route, "path", "")
            if not isinstance(route, APIRoute):
                if isinstance(route, WebSocketRoute):
                    continue  # matches WebSocket connections only, never an HTTP request
                self._table = {}  # anything else might match any path: keep FastAPI's order
                self.skipped["*"] = f"{type(route).__name__} {path!r} may match any path"
                return
            try:
                entry: _Route | None = _compile(route)
            except _NotCompilable as why:
                entry = None
                self.skipped[f"{'|'.join(sorted(route.methods or ()))} {route.path}"] = str(why)
            lead = _leading(route.path)
            if "" in lead:  # a parameter in the leading segments: may match any path there
                self._table = {}
                self.skipped["*"] = f"{route.path!r} has a parameter in its first segments"
                return
            for method in route.methods or ():
                self._table.setdefault((method, lead), []).append((route, entry))

    @property
    def compiled(self) -> set[tuple[str, str]]:
        """(method, path template) of every route served here."""
        return {(method, route.path) for (method, _), entries in self._table.items()
                for route, entry in entries if entry is not None}

    def _match(self, scope: Scope) -> tuple[_Route, dict[str, Any]] | None:
        if scope.get("root_path"):
            return None  # mounted under a prefix: FastAPI strips it, leave it to FastAPI
        path: str = scope["path"]
        for route, entry in self._table.get((scope["method"], _leading(path)), ()):
            found = route.path_regex.match(path)
            if found is None:
                continue
            if entry is None:
                return None  # an uncompiled route comes first: FastAPI serves it
            convertors = route.param_convertors
            return entry, {k: convertors[k].convert(v) for k, v in found.groupdict().items()}
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._overrides:
            await self.app(scope, receive, send)
            return
        matched = self._match(scope)
        if matched is None:
            await self.app(scope, receive, send)
            return
        entry, path_params = matched
        route = entry.route
        scope["path_params"] = {**scope.get("path_params", {}), **path_params}
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        request = Request(scope, receive, send)
        try:
            response = await self._run(entry, request, path_params)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise  # the app's outermost layer answers 500, as for FastAPI's routes
            response = await handler(request, exc)
        await response(scope, receive, send)

    async def _run(self, entry: _Route, request: Request,
                   path_params: dict[str, Any]) -> Response:
        solved = _Solved(request, path_params)
        content = await _solve(entry.step, solved)
        if solved.errors:
            raise RequestValidationError(solved.errors)
        if isinstance(content, Response):
            return content
        if entry.serialize is not None:
            content = entry.serialize(content)
        status = entry.route.status_code or 200
        sub = solved.response
        if sub is not None and sub.status_code:
            status = sub.status_code
        response = Response(status_code=status, media_type="application/json",
                            content=b"" if status in _NO_BODY or status < 200
                            else _encode(content))
        if sub is not None:
            response.raw_headers.extend(sub.raw_headers)
        return response

    def _handler_for(self, exc: Exception) -> ErrorHandler | None:
        """The handler the app's exception layer would use (not the catch-all 500 one,
        which sits outside every middleware and must see the exception itself)."""
        handlers = self._handlers
        if isinstance(exc, HTTPException) and exc.status_code in handlers:
            return handlers[exc.status_code]
        for cls in type(exc).__mro__:
            if cls is Exception or cls is BaseException:
                return None
            if cls in handlers:
                return handlers[cls]
        return None


__all__ = ["CompiledRoutes"]
