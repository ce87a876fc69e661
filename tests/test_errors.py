"""Every error status maps to a typed exception with status, code, message and request id."""

from __future__ import annotations

import pytest

from ekoclient import errors
from ekoclient.errors import error_from_response


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.ValidationError),
        (401, errors.AuthenticationError),
        (403, errors.PermissionDeniedError),
        (404, errors.NotFoundError),
        (409, errors.ConflictError),
        (413, errors.PayloadTooLargeError),
        (415, errors.ValidationError),
        (416, errors.RangeNotSatisfiableError),
        (429, errors.RateLimitError),
        (500, errors.ServerError),
        (503, errors.ServerError),
        (418, errors.APIError),
    ],
)
def test_status_maps_to_its_exception(status: int, cls: type[errors.APIError]) -> None:
    body = b'{"error":{"code":"c","message":"m","request_id":"r"}}'
    err = error_from_response(status, {}, body)
    assert type(err) is cls
    assert (err.status, err.code, err.message, err.request_id) == (status, "c", "m", "r")
    assert isinstance(err, errors.EkoError)


def test_rate_limit_error_carries_the_figures() -> None:
    headers = {"x-ratelimit-limit": "100", "x-ratelimit-remaining": "0",
               "x-ratelimit-reset": "42"}
    err = error_from_response(429, headers, b"{}", retry_after=3.0)
    assert isinstance(err, errors.RateLimitError)
    assert (err.retry_after, err.limit, err.remaining, err.reset) == (3.0, 100, 0, 42.0)


def test_a_body_that_is_not_the_envelope_still_gives_a_useful_error() -> None:
    err = error_from_response(502, {"x-request-id": "abc"}, b"<html>Bad gateway</html>")
    assert isinstance(err, errors.ServerError)
    assert "502" in err.message and err.request_id == "abc"
