"""Query parameters the official ekoDB client adds to DataStore routes (see
:mod:`mock_server.compat`): validated once, as a router-level dependency."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from mock_server.compat import MAX_TRANSACTION_ID, parse_flag
from mock_server.errors import bad_request


async def client_options(
    bypass_ripple: Annotated[str | None, Query(max_length=8)] = None,
    bypass_cache: Annotated[str | None, Query(max_length=8)] = None,
    transaction_id: Annotated[str | None, Query(min_length=1, max_length=MAX_TRANSACTION_ID,
                                                include_in_schema=False)] = None,
) -> None:
    """400 for a malformed option; accepted ones are no-ops here (ekoDB semantics in the
    README), ``transaction_id`` is read by the routes that join transactions (and offered
    by /openapi.json there only; elsewhere it is ignored). Async: validation only, so
    FastAPI needs no worker thread for it."""
    _flags(bypass_ripple, bypass_cache)


def _flags(bypass_ripple: str | None, bypass_cache: str | None) -> None:
    parse_flag("bypass_ripple", bypass_ripple)
    parse_flag("bypass_cache", bypass_cache)


async def outside_transactions(
    bypass_ripple: Annotated[str | None, Query(max_length=8)] = None,
    bypass_cache: Annotated[str | None, Query(max_length=8)] = None,
    transaction_id: Annotated[str | None, Query(min_length=1, max_length=MAX_TRANSACTION_ID,
                                                include_in_schema=False)] = None,
) -> None:
    """The same options on routes that cannot join a transaction: a ``transaction_id`` there
    is refused (400) rather than ignored, so a caller never believes a write was staged when
    it was applied at once (and /openapi.json does not offer it)."""
    _flags(bypass_ripple, bypass_cache)
    if transaction_id is not None:
        raise bad_request("this operation cannot join a transaction; call it outside the "
                          "transaction (or after commit)", "validation_error")
