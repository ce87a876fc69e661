"""App pieces without sockets: bootstrap, unexpected errors, strict JSON helpers."""

from __future__ import annotations

import inspect
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute

from mock_server.app import create_app
from mock_server.config import ServerConfig
from mock_server.errors import ApiError
from mock_server.http_json import json_depth, parse_json_bytes
from mock_server.keys import ADMIN_KEY_ENV
from mock_server.routes import ROUTERS
from mock_server.routes.system import faults_router
from mock_server.state import AppState


def test_bootstrap_once_per_data_dir(tmp_path: Path) -> None:
    first = AppState.open(ServerConfig(data_dir=tmp_path), environ={})
    assert first.admin_key is not None and first.admin_key.startswith("eko_test_")
    admin = first.keys.authenticate(first.admin_key)
    assert admin is not None and admin.is_admin
    first.close()
    second = AppState.open(ServerConfig(data_dir=tmp_path), environ={})
    assert second.admin_key is None
    assert second.keys.authenticate(first.admin_key) is not None
    assert len(second.keys.list()) == 1
    second.close()


def test_admin_key_from_env(tmp_path: Path) -> None:
    given = "eko_test_" + "k" * 40
    st = AppState.open(ServerConfig(data_dir=tmp_path), environ={ADMIN_KEY_ENV: given})
    assert st.admin_key is None  # the operator knows it; nothing to print
    rec = st.keys.authenticate(given)
    assert rec is not None and rec.is_admin
    st.close()
    again = AppState.open(ServerConfig(data_dir=tmp_path), environ={ADMIN_KEY_ENV: given})
    assert len(again.keys.list()) == 1
    again.close()


async def test_unexpected_exception_is_enveloped_500(tmp_path: Path) -> None:
    app = create_app(ServerConfig(data_dir=tmp_path), environ={})

    @app.get("/api/_boom")
    def boom() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get("/api/_boom")
    assert r.status_code == 500
    body = r.json()
    assert body["error"]["code"] == "internal_error"
    assert body["error"]["request_id"] == r.headers["x-request-id"]
    assert "secret internals" not in r.text and "Traceback" not in r.text
    app.state.ekodb.close()


async def test_dependency_overrides_apply_to_compiled_routes(tmp_path: Path) -> None:
    """The compiled route table steps aside while FastAPI's dependency_overrides are set,
    so an override (a test double) takes effect as it would without it."""
    from mock_server.errors import bad_request
    from mock_server.routes.compat import client_options

    app = create_app(ServerConfig(data_dir=tmp_path), environ={})

    async def overridden() -> None:
        raise bad_request("overridden", "validation_error")

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/api/collections")).status_code == 401  # compiled path
        app.dependency_overrides[client_options] = overridden
        r = await client.get("/api/collections")
        app.dependency_overrides.clear()
    assert r.status_code == 400 and r.json()["error"]["message"] == "overridden"
    app.state.ekodb.close()


def test_json_depth_iterative() -> None:
    assert json_depth('{"a": [1, {"b": "[[[["}]}') == 3
    assert json_depth("[" * 100_000 + "]" * 100_000) == 100_000


@pytest.mark.parametrize("raw", [b"NaN", b'{"a":1,"a":1}', b"[" * 70 + b"]" * 70, b"{", b" "])
def test_parse_json_bytes_refuses(raw: bytes) -> None:
    with pytest.raises(ApiError) as info:
        parse_json_bytes(raw, max_depth=64)
    assert info.value.status == 400


def test_openapi_describes_json_bodies(tmp_path: Path) -> None:
    app = create_app(ServerConfig(data_dir=tmp_path), environ={})
    spec = app.openapi()
    body = spec["paths"]["/api/auth/register"]["post"]["requestBody"]
    assert "label" in body["content"]["application/json"]["schema"]["properties"]
    assert "/api/_faults" not in spec["paths"]  # fault injection off by default
    app.state.ekodb.close()


def test_openapi_has_no_dangling_refs(tmp_path: Path) -> None:
    import json

    app = create_app(ServerConfig(data_dir=tmp_path, fault_injection=True), environ={})
    spec = app.openapi()
    text = json.dumps(spec)
    assert "#/$defs/" not in text
    faults = spec["paths"]["/api/_faults"]["post"]["requestBody"]["content"]["application/json"]
    assert faults["schema"]["properties"]["rules"]["items"]["properties"]["when"]
    components = spec.get("components", {}).get("schemas", {})
    for ref in [part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]]:
        assert ref in components, ref
    app.state.ekodb.close()


def test_no_write_route_needs_a_worker_thread_after_its_handler() -> None:
    """See mock_server/routes/__init__.py: a sync write route with a response model would
    validate its answer on a worker thread while holding the write lock."""
    routes = [route for router in [*ROUTERS, faults_router] for route in router.routes
              if isinstance(route, APIRoute)]
    writes = [route for route in routes if route.methods & {"POST", "PUT", "PATCH", "DELETE"}]
    offending = [
        f"{sorted(route.methods)} {route.path}"
        for route in writes
        if not inspect.iscoroutinefunction(route.endpoint) and route.response_field is not None
    ]
    assert len(writes) > 30  # the walk found the routes
    assert offending == [], "declare response_model=None on these routes"


def test_openapi_describes_names_and_ids_as_the_handlers_check_them(tmp_path: Path) -> None:
    """Every path parameter says what the handler accepts (a pattern, an enum, or a length),
    never a bare string: a request the description calls valid is not refused as 400."""
    import json

    app = create_app(ServerConfig(data_dir=tmp_path), environ={})
    spec = app.openapi()
    loose = [f"{method.upper()} {path} {param['name']}"
             for path, ops in spec["paths"].items() for method, op in ops.items()
             for param in op.get("parameters", []) if param["in"] == "path"
             and not {"pattern", "enum", "maxLength"} & set(param["schema"])]
    assert loose == []
    collection = spec["paths"]["/api/insert/{collection}"]["post"]["parameters"][0]["schema"]
    assert collection["pattern"] == "^[A-Za-z0-9_.\\-]+$" and collection["maxLength"] == 128
    assert "x-component" not in json.dumps(spec)  # every shared grammar became a $ref
    # a route that refuses transaction_id does not offer it
    upsert = spec["paths"]["/api/upsert/{collection}/{record_id}"]["put"]["parameters"]
    assert "transaction_id" not in {p["name"] for p in upsert}
    app.state.ekodb.close()
