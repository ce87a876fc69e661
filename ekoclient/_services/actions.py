"""Atomic field actions, upsert, count, exists, distinct, trash (SPEC §3.1).

Attached to :class:`~ekoclient._services.datastore.DataStore`; kept in their own module so
the DataStore's core CRUD stays short. Every action is applied by the server inside the
record's write transaction, so concurrent callers never lose an update, and it carries an
Idempotency-Key like every write, so a retried increment is applied once.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from typing import Any

from typing_extensions import Unpack

from .._call import Call, json_call, segment
from .._filters import Filter, filter_wire
from .._http import Response
from .._service import WriteOptions
from ..errors import InvalidArgumentError
from ._records import Record, _record_body

FilterArg = Filter | Mapping[str, Any] | None

ActionStep = tuple[str, str, Any] | tuple[str, str]


def _record(response: Response) -> dict[str, Any]:
    data = response.json()
    if not isinstance(data, dict):
        raise ValueError("the service answered with something that is not a record")
    return data


def _record_path(collection: str, id: str) -> str:
    return f"{segment(collection, 'collection')}/{segment(id, 'id')}"


def _number(value: Any, what: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"{what} must be a number, got {value!r}")
    return value


def _field(field: str) -> str:
    if not isinstance(field, str) or not field:
        raise InvalidArgumentError(f"field must be a non-empty field name, got {field!r}")
    return field


def _action(action: str, collection: str, id: str, field: str,
            value: Any = None) -> Call[dict[str, Any]]:
    path = (f"/api/update/{_record_path(collection, id)}/action/"
            f"{segment(action, 'action')}")
    return json_call("PUT", path, _record, {"field": _field(field), "value": value})


def _increment(collection: str, id: str, field: str, by: int | float = 1,
               **write: Unpack[WriteOptions]) -> Call[dict[str, Any]]:
    """Add ``by`` to a number field (a missing field counts as 0); returns the record."""
    return _action("increment", collection, id, field, _number(by, "by"))


def _decrement(collection: str, id: str, field: str, by: int | float = 1,
               **write: Unpack[WriteOptions]) -> Call[dict[str, Any]]:
    """Subtract ``by`` from a number field; returns the record."""
    return _action("decrement", collection, id, field, _number(by, "by"))


def _multiply(collection: str, id: str, field: str, by: int | float,
             **write: Unpack[WriteOptions]) -> Call[dict[str, Any]]:
    """Multiply a number field by ``by``; returns the record."""
    return _action("multiply", collection, id, field, _number(by, "by"))


def _divide(collection: str, id: str, field: str, by: int | float,
             **write: Unpack[WriteOptions]) -> Call[dict[str, Any]]:
    """Divide a number field by ``by`` (not 0); returns the record."""
    return _action("divide", collection, id, field, _number(by, "by"))


def _modulo(collection: str, id: str, field: str, by: int | float,
             **write: Unpack[WriteOptions]) -> Call[dict[str, Any]]:
    """Replace a number field by its remainder modulo ``by`` (not 0); returns the record."""
    return _action("modulo", collection, id, field, _number(by, "by"))


def _push(collection: str, id: str, field: str, value: Any,
             **write: Unpack[WriteOptions]) -> Call[dict[str, Any]]:
    """Append ``value`` to an array field (created when missing); returns the record."""
    return _action("push", collection, id, field, value)


def _pop(collection: str, id: str, field: str,
             **write: Unpack[WriteOptions]) -> Call[dict[str, Any]]:
    """Drop the last element of an array field; returns the record."""
    return _action("pop", collection, id, field)


def _shift(collection: str, id: str, field: str,
             **write: Unpack[WriteOptions]) -> Call[dict[str, Any]]:
    """Drop the first element of an array field; returns the record."""
    return _action("shift", collection, id, field)


def _unshift(collection: str, id: str, field: str, value: Any,
             **write: Unpack[WriteOptions]) -> Call[dict[str, Any]]:
    """Insert ``value`` at the front of an array field; returns the record."""
    return _action("unshift", collection, id, field, value)


def _remove(collection: str, id: str, field: str, value: Any,
             **write: Unpack[WriteOptions]) -> Call[dict[str, Any]]:
    """Remove every element equal to ``value`` from an array field; returns the record."""
    return _action("remove", collection, id, field, value)


def _append(collection: str, id: str, field: str, value: str,
             **write: Unpack[WriteOptions]) -> Call[dict[str, Any]]:
    """Append the string ``value`` to a string field; returns the record."""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"append takes a string value, got {value!r}")
    return _action("append", collection, id, field, value)


def _clear(collection: str, id: str, field: str,
             **write: Unpack[WriteOptions]) -> Call[dict[str, Any]]:
    """Reset a field to its type's empty value (0, "", [], {}, false); returns the record."""
    return _action("clear", collection, id, field)


def _apply(collection: str, id: str, actions: Iterable[ActionStep],
             **write: Unpack[WriteOptions]) -> Call[dict[str, Any]]:
    """Apply ``[(action, field, value), ...]`` in order, atomically, in one request
    (``(action, field)`` for actions without a value); returns the record."""
    steps: list[list[Any]] = []
    for step in actions:
        if not isinstance(step, (tuple, list)) or len(step) not in (2, 3):
            raise InvalidArgumentError(
                f"each action is (action, field, value) or (action, field), got {step!r}")
        steps.append([str(step[0]), _field(step[1]), step[2] if len(step) == 3 else None])
    if not steps:
        raise InvalidArgumentError("apply needs at least one action")
    return json_call("PUT", f"/api/update/sequence/{_record_path(collection, id)}", _record,
                     steps)


def _upsert(collection: str, id: str, record: Record,
             **write: Unpack[WriteOptions]) -> Call[dict[str, Any]]:
    """Update the record with this id (deep merge), or create it under this id; atomic on
    the server. ``record`` is a mapping or a pydantic model, as for ``insert``. Returns the
    record as stored."""
    return json_call("PUT", f"/api/upsert/{_record_path(collection, id)}",
                     lambda r: dict(r.json()["record"]), _record_body(record, "a record"))


def _count(collection: str, filter: FilterArg = None) -> Call[int]:
    """How many records match ``filter`` (all when None), counted by the server."""
    body = {"filter": filter_wire(filter)} if filter is not None else {}
    return json_call("POST", f"/api/count/{segment(collection, 'collection')}",
                     lambda r: int(r.json()["count"]), body, read_only=True)


def _exists(collection: str, id: str) -> Call[bool]:
    """Whether a record with this id exists (and this key may read the collection)."""
    return json_call("GET", f"/api/exists/{_record_path(collection, id)}",
                     lambda r: bool(r.json()["exists"]))


def _values(response: Response) -> list[Any]:
    data = response.json()
    return list(data["values"] if isinstance(data, dict) else data)


def _distinct(collection: str, field: str, filter: FilterArg = None) -> Call[list[Any]]:
    """The distinct values of ``field`` among records matching ``filter``."""
    body = {"filter": filter_wire(filter)} if filter is not None else {}
    path = f"/api/distinct/{segment(collection, 'collection')}/{segment(_field(field), 'field')}"
    return json_call("POST", path, _values, body, read_only=True)


def ttl_wire(ttl: float | dt.timedelta) -> str:
    """A record TTL as ekoDB's insert body carries it: a duration string (``"90s"``, or
    whole milliseconds ``"1500ms"`` for a fraction; the server's grain is 1 ms)."""
    if isinstance(ttl, dt.timedelta):
        ttl = ttl.total_seconds()
    if (isinstance(ttl, bool) or not isinstance(ttl, (int, float))
            or not math.isfinite(ttl) or not ttl > 0):
        raise InvalidArgumentError(f"ttl must be a positive number of seconds, got {ttl!r}")
    if ttl < 0.001:
        raise InvalidArgumentError(f"ttl must be at least 1 ms (0.001 s), got {ttl!r} s")
    if float(ttl).is_integer():
        return f"{int(ttl)}s"
    return f"{round(ttl * 1000)}ms"


def _restore(collection: str, id: str, **write: Unpack[WriteOptions]) -> Call[bool]:
    """Bring a deleted record back from the trash (within the server's retention window);
    NotFoundError when it is not there."""
    return json_call("POST", f"/api/trash/{_record_path(collection, id)}",
                     lambda r: bool(r.json()["restored"]))


def _restore_all(collection: str, **write: Unpack[WriteOptions]) -> Call[int]:
    """Bring back every record of the collection still in the trash; how many came back."""
    return json_call("POST", f"/api/trash/{segment(collection, 'collection')}",
                     lambda r: int(r.json()["records_restored"]))
