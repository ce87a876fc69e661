"""Options ekoDB's official client (0.31.0) sends that the reference server accepts.

The official client serialises every optional field of a find as an explicit ``null`` and
adds ``bypass_ripple`` to each batch item (ekoDB's own examples also put it, and
``transaction_id``, at the top of a batch body); options also travel as query parameters. We take
``null`` to mean "not given" and check the type of every value we accept, while any other
unknown key is still refused (400), so a typo never silently changes a request's meaning.

Meaning on the reference server (documented in the README):

- ``bypass_ripple`` — ekoDB skips replicating the write to its peers ("ripples"); the
  reference server has no peers, so it is a no-op.
- ``bypass_cache`` — ekoDB skips its read cache; the reference server has none: a no-op.
- ``transaction_id`` — accepted here (a string); the transactions feature gives it meaning.
- ``join`` — only ``null`` is accepted: joins are not implemented, and refusing a real join
  beats answering without the joined data.
"""

from __future__ import annotations

from typing import Any, Final

from mock_server.errors import bad_request

__all__ = ["BATCH_OPTIONS", "FIND_OPTIONS", "ITEM_OPTIONS", "parse_flag", "strip_options"]

FIND_OPTIONS: Final = ("bypass_cache", "bypass_ripple", "join", "transaction_id")
ITEM_OPTIONS: Final = ("bypass_ripple",)
BATCH_OPTIONS: Final = ("bypass_ripple", "transaction_id")
MAX_TRANSACTION_ID: Final = 128
_TRUE: Final = frozenset({"true", "1"})
_FALSE: Final = frozenset({"false", "0"})


def _check(key: str, value: Any, where: str) -> None:
    if value is None:
        return
    if key in ("bypass_cache", "bypass_ripple"):
        if not isinstance(value, bool):
            raise bad_request(f"{where}{key}: expected true, false or null", "validation_error")
    elif key == "transaction_id":
        if not isinstance(value, str) or not 1 <= len(value) <= MAX_TRANSACTION_ID:
            raise bad_request(f"{where}{key}: expected a transaction id string or null",
                              "validation_error")
    elif key == "join":
        raise bad_request(f"{where}join: joins are not supported by this server; send "
                          "null or leave it out", "validation_error")


def strip_options(body: dict[str, Any], allowed: tuple[str, ...],
                  where: str = "") -> dict[str, Any]:
    """``body`` without the accepted client options (each type-checked; 400 otherwise)."""
    if not any(key in body for key in allowed):
        return body
    for key in allowed:
        if key in body:
            _check(key, body[key], where)
    return {k: v for k, v in body.items() if k not in allowed}


def parse_flag(name: str, raw: str | None) -> bool | None:
    """A boolean query parameter (``true``/``false``/``1``/``0``); 400 for anything else."""
    if raw is None:
        return None
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise bad_request(f"query parameter {name}: expected true or false", "validation_error")
