"""Find pages on the wire: ekoDB's plain array, with X-Has-More / X-Next-Cursor beside it."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest

from mock_server.query import SortKey, decode_cursor, encode_cursor, keyset_page
from tests.server.conftest import Api, assert_error


@pytest.fixture
def filled(api: Api) -> tuple[str, dict[str, str]]:
    headers = api.admin
    name = f"pages_{uuid.uuid4().hex[:10]}"
    assert api.http.post(f"/api/collections/{name}", headers=headers).status_code == 200
    r = api.http.post(f"/api/batch/insert/{name}", headers=headers,
                      json={"inserts": [{"data": {"n": i}} for i in range(5)]})
    assert r.status_code == 200, r.text
    return name, headers


def test_find_answers_an_array_and_says_whether_more_match(
        api: Api, filled: tuple[str, dict[str, str]]) -> None:
    name, headers = filled
    first = api.http.post(f"/api/find/{name}", headers=headers, json={"limit": 3})
    assert first.status_code == 200 and isinstance(first.json(), list)
    assert first.headers["x-has-more"] == "true" and first.headers["x-next-cursor"]
    rest = api.http.post(f"/api/find/{name}", headers=headers,
                         json={"limit": 3, "cursor": first.headers["x-next-cursor"]})
    assert [r["n"] for r in first.json() + rest.json()] == [0, 1, 2, 3, 4]
    assert rest.headers["x-has-more"] == "false" and "x-next-cursor" not in rest.headers


def _forged(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    7, "", "x" * 5000, "!!!", _forged([1, 2]), _forged({"v": 1, "s": "?", "k": [], "q": 1}),
    _forged({"v": 1, "s": None, "k": [[2, 0, "str"]], "q": "one"}),
])
def test_bad_cursors_get_a_400_envelope_and_nothing_breaks(
        api: Api, filled: tuple[str, dict[str, str]], cursor: Any) -> None:
    name, headers = filled
    r = api.http.post(f"/api/find/{name}", headers=headers, json={"cursor": cursor})
    err = assert_error(r, 400)
    assert "cursor" in err["message"]
    assert api.http.post(f"/api/find/{name}", headers=headers, json={}).status_code == 200


def test_cursor_and_skip_together_are_refused(api: Api,
                                              filled: tuple[str, dict[str, str]]) -> None:
    name, headers = filled
    first = api.http.post(f"/api/find/{name}", headers=headers, json={"limit": 1})
    r = api.http.post(f"/api/find/{name}", headers=headers,
                      json={"skip": 1, "cursor": first.headers["x-next-cursor"]})
    assert "cannot be combined" in assert_error(r, 400)["message"]


def test_a_forged_cursor_mixing_value_kinds_compares_without_raising() -> None:
    sort = (SortKey("v"),)
    rows = [(1, {"v": 1}), (2, {"v": "a"}), (3, {"v": None}), (4, {"v": [1]})]
    real = decode_cursor(encode_cursor({"v": 1}, 1, sort), sort)
    assert real is not None
    page, more = keyset_page(rows, None, sort, 10, 0, real)
    assert [seq for seq, _ in page] == [2, 4] and not more  # after 1: strings, then others
    # a cursor built by hand with a number where strings rank: compared, never a 500
    mixed = type(real)(((3, 0, 5),), 0)
    page, _ = keyset_page(rows, None, sort, 10, 0, mixed)
    assert {seq for seq, _ in page} <= {2, 4}
