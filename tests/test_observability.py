"""Seeing what the SDK does: EKOCLIENT_LOG, request/response hooks, OpenTelemetry spans."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ekoclient import Client, RequestInfo, ResponseInfo
from ekoclient.errors import NotFoundError

from .sdk_helpers import admin_token

ROOT = Path(__file__).resolve().parent.parent

_SCRIPT = """
from ekoclient import Client
with Client.from_env() as c:
    c.datastore.list_collections()
    c.datastore.create_collection("logged_" + __import__("uuid").uuid4().hex[:6])
"""


def test_ekoclient_log_debug_logs_each_request_and_answer_without_secrets(
        ekodb_server: Any) -> None:
    env = {**os.environ, "EKOCLIENT_LOG": "debug", "EKODB_URL": ekodb_server.url,
           "EKODB_API_KEY": ekodb_server.admin_key,
           "EKODB_CA_BUNDLE": str(ekodb_server.ca_bundle), "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    log = result.stderr
    assert f"-> GET {ekodb_server.url}/api/collections attempt 1" in log
    assert f"<- GET {ekodb_server.url}/api/collections 200 in" in log
    assert "-> POST" in log and "/api/auth/token" in log
    assert ekodb_server.admin_key not in log
    assert "Bearer" not in log and "eyJ" not in log  # no token either


def test_without_the_switch_nothing_is_printed(ekodb_server: Any) -> None:
    env = {k: v for k, v in os.environ.items() if k != "EKOCLIENT_LOG"}
    env.update({"EKODB_URL": ekodb_server.url, "EKODB_API_KEY": ekodb_server.admin_key,
                "EKODB_CA_BUNDLE": str(ekodb_server.ca_bundle), "PYTHONPATH": str(ROOT)})
    result = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == ""


def test_hooks_see_every_attempt_and_answer_with_authorization_redacted(
        ekodb_server: Any) -> None:
    requests: list[RequestInfo] = []
    responses: list[ResponseInfo] = []
    with Client(base_url=ekodb_server.url, api_key=ekodb_server.admin_key,
                ca_bundle=ekodb_server.ca_bundle, on_request=requests.append,
                on_response=responses.append) as client:
        name = f"hook{uuid.uuid4().hex[:8]}"
        client.datastore.create_collection(name, idempotency_key=f"mk-{name}")
    token_call, create = requests
    assert token_call.url.endswith("/api/auth/token")
    assert create.method == "POST" and create.operation == "create_collection"
    assert create.headers["Authorization"] == "<redacted>"
    assert create.idempotency_key == f"mk-{name}"
    assert [r.status_code for r in responses] == [200, 200]
    assert responses[-1].request is create and responses[-1].request_id
    assert responses[-1].elapsed > 0
    for info in requests:
        assert ekodb_server.admin_key not in repr(info)


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        pytest.skip("another test already set the global OpenTelemetry provider")
    yield exporter
    provider.shutdown()


def test_tracing_makes_one_client_span_per_call_with_the_conventional_attributes(
        ekodb_server: Any, spans: InMemorySpanExporter) -> None:
    spans.clear()
    with Client(base_url=ekodb_server.url, api_key=ekodb_server.admin_key,
                ca_bundle=ekodb_server.ca_bundle, tracing=True) as client:
        name = f"otel{uuid.uuid4().hex[:8]}"
        client.datastore.create_collection(name)
        stored = client.datastore.insert(name, {"a": 1})
        with pytest.raises(NotFoundError):
            client.datastore.get(name, "missing")
    by_name = {s.name: s for s in spans.get_finished_spans()}
    insert = by_name[f"insert {name}"]
    attrs = dict(insert.attributes or {})
    assert insert.kind is SpanKind.CLIENT
    assert attrs["db.system.name"] == "ekodb"
    assert attrs["db.operation.name"] == "insert"
    assert attrs["db.collection.name"] == name
    assert attrs["http.request.method"] == "POST"
    assert attrs["http.response.status_code"] == 200
    assert attrs["server.address"] == "127.0.0.1" and isinstance(attrs["server.port"], int)
    assert attrs["url.full"] == f"{ekodb_server.url}/api/insert/{name}"
    assert attrs["ekodb.request_id"]
    failed = by_name[f"get {name}"]
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(failed.attributes or {})["error.type"] == "404"
    everything = repr([(s.name, dict(s.attributes or {}), [e.attributes for e in s.events])
                       for s in spans.get_finished_spans()])
    assert ekodb_server.admin_key not in everything and "Bearer" not in everything
    assert stored["id"]


def test_a_call_retried_to_success_is_one_span_without_an_error(
        ekodb_server: Any, spans: InMemorySpanExporter) -> None:
    spans.clear()
    with Client(base_url=ekodb_server.url, api_key=ekodb_server.admin_key,
                ca_bundle=ekodb_server.ca_bundle, tracing=True,
                retry={"initial": 0.01, "maximum": 0.02}) as client:
        name = f"otel{uuid.uuid4().hex[:8]}"
        client.datastore.create_collection(name)
        tls = ssl.create_default_context(cafile=str(ekodb_server.ca_bundle))
        rules = {"rules": [{"path_prefix": f"/api/insert/{name}", "status": 503}]}
        httpx.post(f"{ekodb_server.url}/api/_faults", json=rules, verify=tls,
                   headers={"Authorization": f"Bearer {admin_token(ekodb_server)}"}
                   ).raise_for_status()
        client.datastore.insert(name, {"a": 1})
    (insert,) = [s for s in spans.get_finished_spans() if s.name == f"insert {name}"]
    attrs = dict(insert.attributes or {})
    assert attrs["http.request.resend_count"] == 1
    assert attrs["http.response.status_code"] == 200
    assert "error.type" not in attrs and insert.status.status_code is not StatusCode.ERROR


def test_tracing_needs_the_otel_extra_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from ekoclient.errors import ConfigurationError

    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ConfigurationError, match=r"ekoclient\[otel\]"):
        Client(base_url="https://127.0.0.1:9", tracing=True)
