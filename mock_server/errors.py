"""Framework-free API errors; the app turns them into the SPEC §4.2 envelope."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Mapping


class ApiError(Exception):
    """An error with an HTTP status and a stable machine code, safe to show to clients."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})


def bad_request(message: str, code: str = "bad_request") -> ApiError:
    return ApiError(400, code, message)


def unauthorized(message: str = "invalid or expired token") -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


def forbidden(message: str = "not permitted") -> ApiError:
    return ApiError(403, "forbidden", message)


def not_found(message: str = "not found") -> ApiError:
    return ApiError(404, "not_found", message)


def conflict(message: str, code: str = "conflict") -> ApiError:
    return ApiError(409, code, message)


def payload_too_large(limit: int) -> ApiError:
    return ApiError(
        413, "payload_too_large", f"request body exceeds {limit} bytes", {"Connection": "close"}
    )


def rate_limited(retry_after: int, message: str = "too many requests") -> ApiError:
    return ApiError(429, "rate_limited", message, {"Retry-After": str(max(1, retry_after))})


#: Default machine code for a bare HTTP status (used for framework-raised errors).
STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    501: "not_implemented",
    503: "service_unavailable",
    507: "insufficient_storage",
}


def code_for_status(status: int) -> str:
    if status in STATUS_CODES:
        return STATUS_CODES[status]
    return "bad_request" if status < 500 else "internal_error"


#: Seconds a client is told to wait after a write refused for lack of disk space.
DISK_FULL_RETRY_AFTER = 30
_SQLITE_FULL = 13


def disk_full(exc: BaseException) -> ApiError | None:
    """507 for an error that means "no space left" (SQLite's SQLITE_FULL, or ENOSPC/EDQUOT
    from a file write), else None. The request's writes were rolled back with it."""
    full = False
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        full = (code is not None and code & 0xFF == _SQLITE_FULL) \
            or "database or disk is full" in str(exc)
    elif isinstance(exc, OSError):
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if not full:
        return None
    return ApiError(507, "insufficient_storage",
                    "the server's disk is full, so this write was not made (nothing was "
                    "stored); reads still work. Retry once space is freed on the server.",
                    {"Retry-After": str(DISK_FULL_RETRY_AFTER)})
