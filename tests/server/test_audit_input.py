"""Audit findings on input and protocol (issue 13, items 1, 3, 12, 13): each is a request an
attacker can send without any privilege, answered with a clear 4xx/5xx envelope and no
lasting effect on the server."""

from __future__ import annotations

import json

import pytest

from mock_server.pytest_plugin import ServerInfo
from tests.server.conftest import Api, assert_error, raw_exchange


def split_answer(data: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v for k, v in (line.split(b": ", 1) for line in lines[1:])}
    return status, headers, body


# --- item 1: metrics cardinality, unknown methods -----------------------------------------

def test_unknown_methods_get_501_and_add_no_metric_series(api: Api) -> None:
    """Each made-up method used to become a permanent `method` label value."""
    before = api.http.get("/api/metrics", headers=api.admin).text
    for i in range(30):
        r = api.http.request(f"X{i:03d}YZ", "/api/health")
        err = assert_error(r, 501, "not_implemented")
        assert "GET" in err["message"]
    after = api.http.get("/api/metrics", headers=api.admin).text
    assert "X000YZ" not in after
    assert 'method="OTHER"' in after
    # 30 odd requests, at most one new series (OTHER / unmatched / 501)
    assert len(after.splitlines()) - len(before.splitlines()) <= 3


def test_known_method_on_a_path_without_it_is_405(api: Api) -> None:
    r = api.http.request("TRACE", "/api/health")
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "GET"


# --- item 3: Content-Length with Transfer-Encoding ----------------------------------------

def test_content_length_with_transfer_encoding_is_refused_and_closed(
        ekodb_server: ServerInfo) -> None:
    # a second request follows on the same connection: it must never be answered
    smuggled = (b"POST /api/auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"0\r\n\r\nGET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
    data = raw_exchange(ekodb_server, smuggled)
    status, headers, body = split_answer(data)
    assert status == 400
    assert headers[b"connection"] == b"close"
    assert json.loads(body.split(b"HTTP/1.1")[0])["error"]["code"] == "bad_request"
    assert data.count(b"HTTP/1.1 ") == 1, data  # closed: the trailing request got nothing


# --- item 12: strict JSON everywhere ------------------------------------------------------

@pytest.mark.parametrize("body", [b'{"name": "\\ud800"}', b'{"\\udfff": 1}',
                                  b'{"a": ["ok", {"b": "x\\uDC00y"}]}'])
def test_lone_surrogate_in_a_record_is_400(api: Api, body: bytes) -> None:
    api.http.post("/api/collections/surrogates", headers=api.admin)
    r = api.http.post("/api/insert/surrogates", content=body,
                      headers={**api.admin, "content-type": "application/json"})
    err = assert_error(r, 400, "invalid_json")
    assert "surrogate" in err["message"]
    found = api.http.post("/api/find/surrogates", json={}, headers=api.admin)
    assert found.status_code == 200 and found.json() == [], found.text


def test_surrogate_pair_is_still_accepted(api: Api) -> None:
    api.http.post("/api/collections/surrogates_ok", headers=api.admin)
    r = api.http.post("/api/insert/surrogates_ok", content=b'{"s": "\\ud83d\\ude00"}',
                      headers={**api.admin, "content-type": "application/json"})
    assert r.status_code == 200, r.text
    got = api.http.get(f"/api/find/surrogates_ok/{r.json()['id']}", headers=api.admin)
    assert got.json()["s"] == "\U0001f600"


@pytest.mark.parametrize(("attributes", "why"), [
    ('{"a": 1, "a": 2}', "duplicate key"),
    ("[" * 3000 + "]" * 3000, "nesting"),
    ('{"a": NaN}', "not valid JSON"),
    ('{"a": "\\ud800"}', "surrogate"),
])
def test_blob_attributes_header_uses_the_strict_parser(api: Api, attributes: str,
                                                       why: str) -> None:
    h = api.admin
    api.http.put("/api/blob/_tables/attrs", headers=h)
    r = api.http.put("/api/blob/attrs/b1", content=b"data",
                     headers={**h, "X-Blob-Attributes": attributes})
    err = assert_error(r, 400)
    assert why in err["message"] and err["message"].startswith("attributes: ")
    assert api.http.get("/api/blob/attrs/b1", headers=h).status_code == 404


def test_blob_attributes_header_accepts_utf8(api: Api) -> None:
    h = api.admin
    api.http.put("/api/blob/_tables/attrs_ok", headers=h)
    raw = json.dumps({"owner": "Zoë"}, ensure_ascii=False).encode()
    r = api.http.put("/api/blob/attrs_ok/b1", content=b"data",
                     headers=[*h.items(), ("X-Blob-Attributes", raw)])  # type: ignore[list-item]
    assert r.status_code in (200, 201), r.text
    meta = api.http.head("/api/blob/attrs_ok/b1", headers=h)
    assert json.loads(meta.headers["x-blob-attributes"]) == {"owner": "Zoë"}


# --- item 13: allowlist CIDRs -------------------------------------------------------------

@pytest.mark.parametrize(("cidr", "hint"), [
    ("10.0.0.1/8", "'10.0.0.0/8'"),
    ("2001:db8::1/32", "'2001:db8::/32'"),
    ("0.0.0.0/0", "allows every address"),
    ("::/0", "allows every address"),
])
def test_allowlist_cidr_with_host_bits_or_slash_zero_is_refused(api: Api, cidr: str,
                                                                 hint: str) -> None:
    r = api.http.post("/api/auth/register", json={"label": "cidr", "allowed_ips": [cidr]},
                      headers=api.admin)
    err = assert_error(r, 400, "validation_error")
    assert hint in err["message"], err
    key = api.create_key("cidr-ok")
    r = api.http.put(f"/api/auth/keys/{key['key_id']}", json={"allowed_ips": [cidr]},
                     headers=api.admin)
    assert_error(r, 400, "validation_error")


def test_exact_networks_and_addresses_are_kept(api: Api) -> None:
    key = api.create_key("cidr-exact", allowed_ips=["10.0.0.0/8", "127.0.0.1", "::1/128"])
    listed = {k["key_id"]: k for k in api.http.get("/api/auth/keys", headers=api.admin).json()}
    assert listed[key["key_id"]]["allowed_ips"] == ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]


# --- item 15: the description documents the real error answers ---------------------------

def test_openapi_documents_error_envelopes_and_no_422(api: Api) -> None:
    spec = api.http.get("/openapi.json").json()
    assert spec["components"]["schemas"]["Error"]["required"] == ["error"]
    operations = [(path, method, op) for path, ops in spec["paths"].items()
                  for method, op in ops.items()]
    assert len(operations) >= 60
    for path, method, op in operations:
        responses = op["responses"]
        assert "422" not in responses, (method, path)
        errors = {code for code in responses if code[0] in "45"}
        assert {"400", "503"} <= errors, (method, path, sorted(errors))
        for code in errors:
            schema = responses[code]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, code)
        if path != "/api/health":  # every other operation authenticates its caller
            assert {"401", "403", "429"} <= errors, (method, path, sorted(errors))
        if method in ("post", "put", "patch", "delete"):
            assert {"409", "413", "507"} <= errors, (method, path)
