"""What a write sends as a record: shared by the DataStore's CRUD and its actions (upsert)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from ..errors import InvalidArgumentError

Record = Mapping[str, Any] | BaseModel


def _record_body(record: object, what: str, *, partial: bool = False) -> dict[str, Any]:
    """A record to send: a mapping as given, or a pydantic model's JSON form.

    A model's ``id`` is left out (the server owns ids and refuses one in a body); for
    ``update`` only the fields that were set are sent, so a partial model changes only them.
    """
    if isinstance(record, BaseModel):
        data = record.model_dump(mode="json", by_alias=True, exclude_unset=partial)
        data.pop("id", None)
        return data
    if not isinstance(record, Mapping):
        raise InvalidArgumentError(
            f"{what} is a mapping of fields or a pydantic model, got {type(record).__name__}")
    return dict(record)
