"""Fuzz every operation of the reference server's OpenAPI description (SPEC §7).

Schemathesis reads ``GET /openapi.json`` of a running server (each test starts its own with
``ekodb_server_factory``, so the fuzzing cannot disturb other tests: per-key rate limits
off, a failed-auth limit no fuzzer reaches) and builds a Hypothesis strategy per operation;
each operation gets ``MAX_EXAMPLES`` schema-valid requests (path and query parameters, JSON
bodies) and as many schema-violating ones (wrong types, out-of-range numbers, over-long
strings, missing or extra fields). ``test_malformed_bodies`` adds what a schema cannot
describe: bodies that are not JSON, not UTF-8, too deeply nested or sent with the wrong
media type. Every request is authenticated as admin, so it reaches the handler, not just
the 401.

The property is the SPEC's: never a 5xx, and every error answer is the §4.2 envelope
``{"error": {"code", "message", "request_id"}}``; and every answer conforms to the
description (``CONFORMANCE``: documented status code, media type, headers and body schema;
schema-violating requests refused). ``test_wrong_methods_get_405_with_the_documented_allow``
checks 405s and their ``Allow`` headers against it. The server documents its error answers
for every route in one place (``mock_server.openapi``), so routes added later are held to
this without any change here.

Both ways: schema-valid requests must be accepted (Schemathesis' ``positive_data_acceptance``,
see ``ACCEPTED``) as well as invalid ones refused, so the description can be neither looser
nor tighter than the handlers (``mock_server.openapi`` shares the names, ids, filters and
records every route uses).

Schemathesis' own pytest integration (``schemathesis.pytest.from_fixture``) is not used: it
rewrites ``Function._nodeid``, which pytest 9.2 no longer has. Its public strategy API
(``APIOperation.as_strategy``) drives plain Hypothesis tests instead, one per operation and
generation mode; failures of all operations are gathered and reported together.

Not fuzzed:

* ``/api/ws`` (WebSocket) is not in the OpenAPI description and has no HTTP answer to check;
  ``test_databus_server.py`` covers its frames.
* ``POST /api/_faults`` installs fault rules that make later answers fail on purpose (503s,
  delays, dropped connections) and would turn every later case into a false finding; its body
  parsing is covered by ``test_bad_inputs.py``. ``GET``/``DELETE /api/_faults`` are fuzzed.
* ``DELETE``/``PUT /api/auth/keys/{key_id}`` and ``.../rotate`` on the admin's own key would
  lock the fuzzer out (deleted, demoted, IP-restricted or rotated). Should a case ever name
  the admin's key id, it is redirected to a decoy key rather than dropped; the targeted runs
  use a fresh key of their own.

Reproducible: Hypothesis ``derandomize=True`` and no example database (``database=None``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from mock_server.pytest_plugin import ServerFactory, ServerInfo
from tests.server.conftest import tls_context

# Schemathesis 4 needs Python >= 3.11 (the dev extra installs it there only).
schemathesis = pytest.importorskip("schemathesis")
import requests  # noqa: E402  (a Schemathesis dependency: its transport)
from schemathesis import Case, GenerationMode  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402
from schemathesis.specs.openapi import checks  # noqa: E402

#: Generated requests per operation and mode (valid, invalid). About 60 operations: the
#: module stays well under a minute; generation costs more than the requests do.
MAX_EXAMPLES = 12

#: Operations never sent (see the module docstring).
EXCLUDED = {("POST", "/api/_faults"),
            # an SSE stream never ends (keep-alives): test_change_feeds.py covers its inputs
            ("GET", "/api/subscribe/{collection}")}

#: Queues come into being on first use, so generated names already reach their handlers:
#: no targeted runs for them.
AUTO_CREATED = ("/api/queue/{name}", "/api/dedupq/{name}")

KEY_PATHS = ("/api/auth/keys/{key_id}", "/api/auth/keys/{key_id}/rotate")

JSON_TYPE = "application/json"

#: (body, content type): not JSON, not UTF-8, JSON the strict parser refuses, too deep,
#: huge numbers, wrong JSON types, and the wrong media type.
MALFORMED: list[tuple[bytes, str]] = [
    (b"", JSON_TYPE),
    (b"{", JSON_TYPE),
    (b'{"a": 1,}', JSON_TYPE),
    (b"\xff\xfe\x00{", JSON_TYPE),
    (b"\x00\x01\x02", JSON_TYPE),
    (b'{"a": 1, "a": 2}', JSON_TYPE),
    (b'{"a": NaN}', JSON_TYPE),
    (b"[" * 100 + b"]" * 100, JSON_TYPE),
    (b'{"a": ' * 70 + b"1" + b"}" * 70, JSON_TYPE),
    (b"1e999", JSON_TYPE),
    (b"-" + b"9" * 5000, JSON_TYPE),
    (b"null", JSON_TYPE),
    (b'"text"', JSON_TYPE),
    (b"[1, 2, 3]", JSON_TYPE),
    (b'{"\\ud800": "\\udfff"}', JSON_TYPE),
    (b'{"ids": "x", "keys": 5, "inserts": {}, "filter": [], "limit": "a"}', JSON_TYPE),
    (b'{"a": 1}', "text/plain"),
    (b"a=1&b=2", "application/x-www-form-urlencoded"),
    (b'{"a": 1}', "application/json; charset=latin-1"),
]
#: What operations without a declared body get (they must ignore or refuse it).
MALFORMED_SAMPLE = [MALFORMED[i] for i in (0, 3, 7, 13, 16)]


@dataclass
class Fuzz:
    """A server of the test's own plus what every request needs."""

    info: ServerInfo
    http: httpx.Client
    session: requests.Session
    headers: dict[str, str]
    admin_key_id: str
    decoy_key_id: str
    spec: dict[str, Any]


@pytest.fixture
def fuzz(ekodb_server_factory: ServerFactory) -> Iterator[Fuzz]:
    info = ekodb_server_factory(rate_limits_enabled=False, failed_auth_limit=1_000_000)
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would override the session's CA
    session.verify = str(info.ca_bundle)
    with httpx.Client(base_url=info.url, verify=tls_context(info), timeout=30) as http, \
            session:
        r = http.post("/api/auth/token", json={"api_key": info.admin_key})
        assert r.status_code == 200, r.text
        headers = {"Authorization": f"Bearer {r.json()['token']}"}
        me = http.get("/api/auth/permissions", headers=headers)
        assert me.status_code == 200, me.text
        decoy = http.post("/api/auth/register", json={"label": "fuzz-decoy"}, headers=headers)
        assert decoy.status_code == 200, decoy.text
        spec = http.get("/openapi.json")
        assert spec.status_code == 200, spec.text
        yield Fuzz(info, http, session, headers, str(me.json()["key_id"]),
                   str(decoy.json()["key_id"]), spec.json())
        # the fuzzing left the server healthy and the admin able to work
        assert http.get("/api/health").status_code == 200
        assert http.get("/api/auth/keys", headers=headers).status_code == 200


def envelope_problem(status: int, headers: httpx.Headers | dict[str, str],
                     body: bytes) -> str | None:
    """Why an answer breaks the §4.2 contract (a 5xx, or an error that is not the envelope)."""
    if status >= 500:
        return f"server error {status}: {body[:300]!r}"
    if status < 400:
        return None
    content_type = headers.get("content-type") or ""
    if not content_type.startswith(JSON_TYPE):
        return f"{status} with content-type {content_type!r}: {body[:300]!r}"
    try:
        data = json.loads(body)
    except ValueError:
        return f"{status} answer is not JSON: {body[:300]!r}"
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(data, dict) or set(data) != {"error"} or not isinstance(err, dict) \
            or set(err) != {"code", "message", "request_id"}:
        return f"{status} answer is not the error envelope: {data!r:.300}"
    if not all(isinstance(v, str) and v for v in err.values()):
        return f"{status} envelope with an empty or non-string field: {err!r:.300}"
    if err["request_id"] != headers.get("x-request-id"):
        return f"{status} request_id {err['request_id']!r} != X-Request-Id header"
    return None


def _guard_admin_key(case: Case, fuzz: Fuzz) -> None:
    if case.path in KEY_PATHS and case.path_parameters \
            and case.path_parameters.get("key_id") == fuzz.admin_key_id:
        case.path_parameters["key_id"] = fuzz.decoy_key_id


#: Response conformance: every answer must be one /openapi.json describes (status code,
#: media type, headers, body schema), schema-valid requests must be accepted and invalid
#: ones refused. The server documents its errors in one place (mock_server.openapi), so an
#: operation added later is held to this without any change here.
#: What refusing a schema-violating request may look like (Schemathesis' list, plus 413).
REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428",
              "429", "5xx"]

#: What answering a schema-valid request may look like: success, or what the fuzz state
#: legitimately causes for a well-formed request — 404 (a generated name, id, key or
#: transaction that does not exist), 409 (one that already exists, or a transaction in
#: another state) and 401 (a well-formed API key that is not one: the token exchange).
#: Not 400 (the request's shape is the schema's to say), not 403 (every request is the
#: admin's), not 413 (the schema bounds batches), not 429 (rate limits are off here), not
#: 5xx (never allowed at all).
ACCEPTED = ["2xx", "401", "404", "409"]

#: 400 codes that are about the server's state, not the request's shape: a well-formed
#: message id the queue never minted (ids carry a MAC no schema can describe), a record
#: the collection's schema (set by an earlier request of the run) refuses.
STATE_REFUSALS = frozenset({"unknown_id", "schema_violation"})

#: Operations whose valid requests the positive check cannot judge, and why.
#: A field action's value must suit both the action (a path parameter: ``increment`` takes
#: a number, ``append`` a string) and what the record's field holds now; the server refuses
#: either as 400 ``validation_error``, indistinguishable from a malformed request.
#: A schema update's regex must compile (Python syntax), its default meet the field's own
#: constraints, and a new field needs a type while an existing one keeps its own.
NOT_JUDGED = {("PUT", "/api/update/{collection}/{record_id}/action/{action}"),
              ("PUT", "/api/update/sequence/{collection}/{record_id}"),
              ("PUT", "/api/schemas/{collection}")}

CONFORMANCE = [
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]
ACCEPTANCE = [*CONFORMANCE, checks.positive_data_acceptance]


def _satisfy_cross_field_rules(case: Case, definition: dict[str, Any]) -> None:
    """Make a generated valid request obey the rules JSON Schema cannot state (each is in
    its operation's description): ``_move`` between two different queues, ``kv/batch/set``
    values as many as keys, a ``transaction_id`` given twice (query and body) the same, a
    sort naming each field once, a record's ``ttl`` given once and not in a transaction;
    no made-up find cursor (only one the server returned is valid); and integers written
    as integers (JSON Schema counts ``3.0`` as an integer, the server wants ``3``)."""
    query, body = case.query or {}, case.body
    if "ttl" in query and ("transaction_id" in query
                           or (isinstance(body, dict) and "ttl" in body)):
        del query["ttl"]
    if isinstance(body, dict) and "ttl" in body and "transaction_id" in query:
        del body["ttl"]
    if case.path.endswith("/_move") and query.get("from") == query.get("to"):
        query["to"] = "fuzz-other" if query.get("from") != "fuzz-other" else "fuzz-other2"
    if not isinstance(body, dict):
        return
    if case.path == "/api/kv/batch/set" and isinstance(body.get("keys"), list) \
            and isinstance(body.get("values"), list):
        body["values"] = (body["values"] + [None] * len(body["keys"]))[:len(body["keys"])]
    if case.path.startswith("/api/find/"):
        body.pop("cursor", None)
    schema = definition.get("requestBody", {}).get("content", {}).get(JSON_TYPE, {}).get(
        "schema", {})
    for name, prop in schema.get("properties", {}).items():
        value = body.get(name)
        integer = any(s.get("type") == "integer" for s in [prop, *prop.get("anyOf", [])])
        if integer and isinstance(value, float) and value.is_integer():
            body[name] = int(value)
    if "transaction_id" in body and "transaction_id" in query:
        body["transaction_id"] = query["transaction_id"]
    if isinstance(body.get("sort"), list):
        fields: list[object] = []
        for item in body["sort"]:
            if isinstance(item, dict) and item.get("field") not in fields:
                fields.append(item.get("field"))
        body["sort"] = [next(i for i in body["sort"] if isinstance(i, dict)
                             and i.get("field") == f) for f in fields]


def _check_case(case: Case, fuzz: Fuzz, mode: GenerationMode) -> None:
    _guard_admin_key(case, fuzz)
    judged = mode is GenerationMode.POSITIVE \
        and (case.method.upper(), case.path) not in NOT_JUDGED
    if judged:
        _satisfy_cross_field_rules(case, fuzz.spec["paths"][case.path][case.method.lower()])
    r = case.call(session=fuzz.session, headers=fuzz.headers, timeout=30,
                  verify=str(fuzz.info.ca_bundle))
    headers = {k.lower(): v[0] if isinstance(v, list) else str(v) for k, v in r.headers.items()}
    problem = envelope_problem(r.status_code, headers, r.content)
    assert problem is None, f"{problem}\n  {case.as_curl_command()[:2000]}"
    if judged and r.status_code == 400 \
            and json.loads(r.content)["error"]["code"] in STATE_REFUSALS:
        judged = False
    case.validate_response(r, checks=ACCEPTANCE if judged else CONFORMANCE)


def _existing(fuzz: Fuzz) -> dict[str, str]:
    """Make sure one of each named thing exists; parameter name -> its name or id.

    Called before each operation's targeted runs, since the previous one may have deleted it.
    """
    h, http = fuzz.headers, fuzz.http
    http.put("/api/blob/_tables/fuzz", headers=h)  # 201, or 409 when it exists
    http.put("/api/blob/fuzz/b1", content=b"blob", headers=h)
    http.put("/api/bus/subscriptions/fuzz", json={"collections": ["fuzz"]}, headers=h)
    http.post("/api/collections/fuzz", headers=h)
    http.post("/api/queue/fuzz/send", json={"n": 1}, headers=h)
    http.post("/api/dedupq/fuzz/send", json={"n": 1}, headers=h)
    http.post("/api/kv/set/fuzz", json={"value": 1}, headers=h)
    record = http.post("/api/insert/fuzz", json={"n": 1, "s": "x"}, headers=h)
    key = http.post("/api/auth/register", json={"label": "fuzz-target"}, headers=h)
    assert record.status_code == 200 and key.status_code == 200, (record.text, key.text)
    tx = http.post("/api/transactions", json={}, headers=h)  # with a savepoint "fuzz"
    txid = str(tx.json()["transaction_id"]) if tx.status_code == 200 else "tx_" + "0" * 24
    http.post(f"/api/transactions/{txid}/savepoints", json={"name": "fuzz"}, headers=h)
    return {"table": "fuzz", "blob_id": "b1", "name": "fuzz", "collection": "fuzz",
            "record_id": str(record.json()["id"]), "key_id": str(key.json()["key_id"]),
            "from": "fuzz", "to": "fuzz2", "transaction_id": txid, "key": "fuzz",
            "action": "increment", "field": "n"}


def _can_be_invalid(definition: dict[str, Any], fixed: set[str]) -> bool:
    """Whether negative generation has anything to violate in an operation.

    Not when every parameter is fixed or an unconstrained string and the body (if any)
    accepts any JSON: Hypothesis would only give up with Unsatisfiable after a long search.
    """
    for param in definition.get("parameters", []):
        if param["name"] in fixed:
            continue
        if param["in"] != "path" or set(param.get("schema", {})) - {"type", "title"}:
            return True
    body = definition.get("requestBody", {}).get("content", {}).get(JSON_TYPE, {})
    return bool(body.get("schema"))


def _fuzz_operation(op: Any, fuzz: Fuzz, mode: GenerationMode,
                    path: dict[str, str] | None = None,
                    query: dict[str, str] | None = None) -> str | None:
    """Run one Hypothesis test for an operation; a failure's description, else None."""

    # no deadline and no health checks: the server round trip is the slow part, and
    # negative generation filters a lot by design
    @settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink])
    @given(case=op.as_strategy(generation_mode=mode, path_parameters=path, query=query))
    def run(case: Case) -> None:
        _check_case(case, fuzz, mode)

    try:
        run()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # Schemathesis reports a FailureGroup (a BaseExceptionGroup)
        where = f" with {path or {}} {query or {}}" if path or query else ""
        return f"{op.method.upper()} {op.path} ({mode.value}{where}): {exc}"[:4000]
    return None


def test_openapi_operations_never_5xx(fuzz: Fuzz) -> None:
    """Each operation: generated parameters, then (when it names things) existing names.

    With generated names nearly every request stops at "not found" or an invalid name; the
    targeted runs fix path parameters (and ``_move``'s from/to) to things that exist, so the
    generated query parameters and bodies reach the handlers' own logic. Negative runs are
    skipped where nothing can be invalid (see ``_can_be_invalid``).
    """
    # invalid data may also be refused as too large (413: more items than a batch takes)
    config = SchemathesisConfig.from_dict({"base-url": fuzz.info.url, "checks": {
        "negative_data_rejection": {"expected-statuses": REJECTIONS},
        "positive_data_acceptance": {"expected-statuses": ACCEPTED}}})
    schema = schemathesis.openapi.from_dict(fuzz.spec, config=config)
    failures: list[str] = []
    fuzzed = 0
    for result in schema.get_all_operations():
        op = result.ok()  # raises on an operation Schemathesis cannot read
        if (op.method.upper(), op.path) in EXCLUDED:
            continue
        fuzzed += 1
        runs: list[tuple[dict[str, str] | None, dict[str, str] | None]] = [(None, None)]
        path_names = [p.name for p in op.path_parameters]
        move_names = [p.name for p in op.query if p.name in ("from", "to")] \
            if op.path.endswith("/_move") else []
        if (path_names or move_names) and not op.path.startswith(AUTO_CREATED):
            existing = _existing(fuzz)
            runs.append(({n: existing[n] for n in path_names} or None,
                         {n: existing[n] for n in move_names} or None))
        definition = fuzz.spec["paths"][op.path][op.method.lower()]
        for path, query in runs:
            fixed = set(path or {}) | set(query or {})
            for mode in GenerationMode:
                if mode is GenerationMode.NEGATIVE and not _can_be_invalid(definition, fixed):
                    continue
                failure = _fuzz_operation(op, fuzz, mode, path, query)
                if failure is not None:
                    failures.append(failure)
    assert fuzzed >= 60, f"only {fuzzed} operations in /openapi.json"
    assert not failures, "\n\n".join(failures)


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(METHOD, path template) of every operation in the description, less EXCLUDED."""
    for path, ops in spec["paths"].items():
        for method in ops:
            if (method.upper(), path) not in EXCLUDED:
                yield method.upper(), path


def test_malformed_bodies(fuzz: Fuzz) -> None:
    """Every operation gets malformed bodies: all of them where a JSON body is declared,
    a sample where none is (those must ignore or refuse a body, never fail on it).

    Path parameters name things that exist (see ``_existing``), so the body reaches the
    handler rather than a 404; deletions run last.
    """
    values = _existing(fuzz)
    operations = sorted(_operations(fuzz.spec), key=lambda op: op[0] == "DELETE")
    failures: list[str] = []
    for method, path in operations:
        url = path.format(**values)
        declared = "requestBody" in fuzz.spec["paths"][path][method.lower()]
        for body, content_type in MALFORMED if declared else MALFORMED_SAMPLE:
            r = fuzz.http.request(method, url, content=body,
                                  headers={**fuzz.headers, "content-type": content_type})
            problem = envelope_problem(r.status_code, r.headers, r.content)
            if problem is not None:
                failures.append(f"{method} {url} body={body[:60]!r} ({content_type}): {problem}")
    assert len(operations) >= 60
    assert not failures, "\n".join(failures[:50])


def test_wrong_methods_get_405_with_the_documented_allow(fuzz: Fuzz) -> None:
    """Every described path: a method it does not describe gets 405 whose Allow header
    lists the described methods (and HEAD where a route serves it undescribed: a HEAD
    answer has no body to check), as the envelope."""
    values = _existing(fuzz)
    failures: list[str] = []
    templates = [(re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(p)) + "$"),
                  {m.upper() for m in ops}) for p, ops in fuzz.spec["paths"].items()]
    for path in fuzz.spec["paths"]:
        url = path.format(**values)
        # a URL can match several described paths (/api/queue/_move and /api/queue/{name})
        documented = set().union(*(ms for rx, ms in templates if rx.match(url)))
        for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - documented):
            r = fuzz.http.request(method, url, headers=fuzz.headers)
            allow = {m.strip() for m in r.headers.get("allow", "").split(",") if m.strip()}
            problem = envelope_problem(r.status_code, r.headers, r.content)
            if r.status_code != 405 or allow - {"HEAD"} != documented or problem is not None:
                failures.append(f"{method} {url}: {r.status_code} Allow={sorted(allow)} "
                                f"(described: {sorted(documented)}) {problem or ''}")
    assert not failures, "\n".join(failures)
