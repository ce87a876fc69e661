"""The compiled route table answers exactly as FastAPI's own router does.

Two servers over TLS, one with ``compiled_routes`` (the default) and one routing every
request through FastAPI, get the same requests: hostile and malformed ones above all
(validation order, error envelopes, 404/405, status codes, headers). Answers must match
apart from what is random per server (request ids, record ids).
"""

from __future__ import annotations

import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mock_server.config import ServerConfig
from mock_server.dispatch import CompiledRoutes
from mock_server.routes import ROUTERS
from mock_server.server import ReferenceServer

from .conftest import Api

ADMIN = "eko_test_dispatch_admin_key_0123456789"
#: Headers whose values must agree (others, like dates and request ids, differ per server).
COMPARED_HEADERS = ("content-type", "allow", "x-has-more", "location", "retry-after")
#: Answer fields that differ per server (ids, timestamps: any key ending in "_at" too).
RANDOM_FIELDS = frozenset({"id", "request_id", "key_id", "message_id"})


class Pair:
    """The same request to both servers; their answers, normalised."""

    def __init__(self, compiled: ReferenceServer, plain: ReferenceServer) -> None:
        self.clients = [self._client(s) for s in (compiled, plain)]
        tokens = [c.post("/api/auth/token", json={"api_key": ADMIN}).json()["token"]
                  for c in self.clients]
        self.auth = [{"Authorization": f"Bearer {t}"} for t in tokens]

    @staticmethod
    def _client(server: ReferenceServer) -> httpx.Client:
        assert server.ca_bundle is not None
        return httpx.Client(base_url=f"https://127.0.0.1:{server.port}", timeout=30,
                            verify=ssl.create_default_context(cafile=str(server.ca_bundle)))

    def both(self, method: str, url: str, *, auth: bool = True,
             **kwargs: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        answers = []
        extra = kwargs.pop("headers", {})
        for client, headers in zip(self.clients, self.auth, strict=True):
            hdrs = {**(headers if auth else {}), **extra}
            resp = client.request(method, url, headers=hdrs, **kwargs)
            answers.append(_normalised(resp))
        return answers[0], answers[1]

    def close(self) -> None:
        for client in self.clients:
            client.close()


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("<random>" if k in RANDOM_FIELDS or k.endswith("_at") else _scrub(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _normalised(resp: httpx.Response) -> tuple[Any, ...]:
    try:
        body: Any = _scrub(resp.json())
    except ValueError:
        body = resp.content
    headers = tuple((h, resp.headers.get(h)) for h in COMPARED_HEADERS)
    return resp.status_code, body, headers


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with tempfile.TemporaryDirectory() as tmp:
        servers = [ReferenceServer(ServerConfig(data_dir=Path(tmp) / name, compiled_routes=on,
                                                rate_limits_enabled=False),
                                   environ={"EKODB_ADMIN_KEY": ADMIN})
                   for name, on in (("compiled", True), ("plain", False))]
        with servers[0], servers[1]:
            p = Pair(*servers)
            for name in ("things", "q_things"):
                p.both("POST", f"/api/collections/{name}")
            p.both("POST", "/api/insert/things", json={"n": 1, "team": "a"})
            yield p
            p.close()


CASES: list[tuple[str, str, dict[str, Any]]] = [
    # query validation: constraints, types, missing, repeated, empty, aliases
    ("GET", "/api/find/things/x?select_fields=" + "a" * 8193, {}),
    ("GET", "/api/queue/q/peek?limit=0", {}),
    ("GET", "/api/queue/q/peek?limit=abc", {}),
    ("GET", "/api/queue/q/peek?limit=", {}),
    ("GET", "/api/queue/q/peek?limit=5000&limit=2", {}),
    ("GET", "/api/queue/q/peek?limit=2&limit=5000", {}),
    ("POST", "/api/queue/_move", {}),
    ("POST", "/api/queue/_move?source=a", {}),
    ("POST", "/api/queue/q/poll?claim_ttl=0&limit=2000&wait=99", {}),
    ("GET", "/api/blob/t?from=" + "z" * 300, {}),
    ("GET", "/api/audit?limit=1&since=-1&key_id=" + "k" * 65, {}),
    # router-level dependencies and their order against the route's own parameters
    ("GET", "/api/find/things/x?bypass_ripple=maybe", {}),
    ("GET", "/api/find/things/x?bypass_ripple=maybe&select_fields=" + "a" * 8193, {}),
    ("GET", "/api/kv/get/k?transaction_id=tx1", {}),
    ("GET", "/api/kv/get/k?transaction_id=", {}),
    ("GET", "/api/find/things/x?transaction_id=" + "t" * 129, {}),
    # authentication comes before the route's own parameters, after the dependencies'
    ("GET", "/api/queue/q/peek?limit=0", {"auth": False}),
    ("GET", "/api/find/things/x?bypass_ripple=maybe", {"auth": False}),
    ("GET", "/api/find/things/x", {"auth": False, "headers": {"Authorization": "Bearer x"}}),
    # a dependency's invalid option does not skip authentication (a later dependency)
    ("GET", "/api/find/things/x?transaction_id=" + "t" * 129, {"auth": False}),
    ("GET", "/api/find/things/x?bypass_ripple=" + "b" * 9, {"auth": False}),
    ("GET", "/api/kv/get/k?transaction_id=", {"auth": False}),
    ("GET", "/api/find/things/x?bypass_ripple=" + "b" * 9,
     {"auth": False, "headers": {"Authorization": "Bearer x"}}),
    # not found, wrong method, unknown paths
    ("GET", "/api/find/things/nope", {}),
    ("GET", "/api/find/missing_collection/nope", {}),
    ("DELETE", "/api/find/things", {}),
    ("PATCH", "/api/insert/things", {}),
    ("GET", "/api/nothing/here", {}),
    ("GET", "/api/find", {}),
    ("GET", "/api/find/things/a/b/c", {}),
    # bodies: content type, malformed JSON, wrong shapes
    ("POST", "/api/find/things", {"content": b"{", "headers": {"Content-Type":
                                                                "application/json"}}),
    ("POST", "/api/find/things", {"content": b"{}", "headers": {"Content-Type": "text/plain"}}),
    ("POST", "/api/find/things", {"json": {"limit": 0}}),
    ("POST", "/api/find/things", {"json": {"nope": 1}}),
    ("POST", "/api/insert/things?ttl=banana", {"json": {"n": 2}}),
    ("POST", "/api/queue/q/send", {"json": None}),
    # successes: plain answers, sub-response headers, status codes, typed answer models
    ("POST", "/api/find/things", {"json": {"filter": {"type": "Condition", "content": {
        "field": "team", "operator": "Eq", "value": "a"}}}}),
    ("POST", "/api/count/things", {"json": {}}),
    ("GET", "/api/collections", {}),
    ("PUT", "/api/blob/_tables/tbl", {"json": {}}),
    ("GET", "/api/blob/_tables/tbl", {}),
    ("GET", "/api/queue/q/size", {}),
    ("POST", "/api/queue/q/send", {"json": {"m": 1}}),
    ("GET", "/api/queue/q/peek?limit=5", {}),
    ("GET", "/api/auth/permissions", {}),
    ("GET", "/api/health", {"auth": False}),
    ("GET", "/openapi.json", {"auth": False}),
]


@pytest.mark.parametrize(("method", "url", "kwargs"), CASES,
                         ids=[f"{m} {u[:60]}{'' if k.get('auth', True) else ' (anon)'}"
                              for m, u, k in CASES])
def test_compiled_routes_answer_as_fastapi_does(pair: Pair, method: str, url: str,
                                                kwargs: dict[str, Any]) -> None:
    compiled, plain = pair.both(method, url, **dict(kwargs))
    assert compiled == plain


def test_requests_with_invalid_options_still_count_against_the_rate_limit(api: Api) -> None:
    """Authentication (and its rate-limit count) runs even when another dependency's query
    option is invalid, as under FastAPI: such requests cannot bypass the key's limit."""
    key = api.create_key("limited", rate_limit=3,
                         collection_permissions={"things": ["read"]})["api_key"]
    h = api.headers(key)  # the token exchange counts once
    statuses = [api.http.get("/api/find/things/x?bypass_ripple=" + "b" * 9,
                             headers=h).status_code for _ in range(4)]
    assert statuses[:2] == [400, 400] and statuses[-1] == 429, statuses


def test_hot_routes_are_compiled() -> None:
    """A route change that silently falls back to FastAPI's slow path fails here."""
    table = CompiledRoutes(_unused_app, [r for router in ROUTERS for r in router.routes], {})
    for route in [("GET", "/api/find/{collection}/{record_id}"),
                  ("POST", "/api/find/{collection}"), ("POST", "/api/insert/{collection}"),
                  ("PUT", "/api/update/{collection}/{record_id}"),
                  ("POST", "/api/queue/{name}/send"), ("POST", "/api/queue/{name}/poll"),
                  ("POST", "/api/bus/subscriptions/{name}/poll"), ("GET", "/api/kv/get/{key}"),
                  ("GET", "/api/blob/{table}/{blob_id}"), ("PUT", "/api/blob/{table}/{blob_id}")]:
        assert route in table.compiled
    assert set(table.skipped) == {"GET /api/metrics"}  # a plain-text answer


def test_a_route_it_cannot_place_leaves_all_routing_to_fastapi() -> None:
    """A plain Starlette route may match any request in its place: rather than guess the
    order, the table serves nothing and FastAPI routes everything."""
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    def plain(request: Any) -> PlainTextResponse:
        return PlainTextResponse("plain")

    routes = [Route("/api/find/x/y", plain), *[r for router in ROUTERS for r in router.routes]]
    table = CompiledRoutes(_unused_app, routes, {})
    assert not table.compiled and "*" in table.skipped


async def _unused_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called")
