"""Query parameters the official ekoDB client adds to DataStore routes (see
:mod:`mock_server.compat`): validated once, as a router-level dependency."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from mock_server.compat import MAX_TRANSACTION_ID, parse_flag


def client_options(
    bypass_ripple: Annotated[str | None, Query(max_length=8)] = None,
    bypass_cache: Annotated[str | None, Query(max_length=8)] = None,
    transaction_id: Annotated[str | None, Query(min_length=1,
                                                max_length=MAX_TRANSACTION_ID)] = None,
) -> None:
    """400 for a malformed option; accepted ones are no-ops here (ekoDB semantics in the
    README), ``transaction_id`` is read by the routes that join transactions."""
    parse_flag("bypass_ripple", bypass_ripple)
    parse_flag("bypass_cache", bypass_cache)
