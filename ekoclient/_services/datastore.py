"""Collections and records (SPEC §3 DataStore, wire format §4.3)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, TypeAdapter

from .._call import Call, json_call, parse_none, segment
from .._filters import Filter, filter_wire
from .._http import Response
from .._paging import Pager, paged
from .._service import E, Service, endpoint
from ..errors import InvalidArgumentError
from ..models import BatchResult
from . import actions as _actions

FilterArg = Filter | Mapping[str, Any] | None
SortArg = Sequence[tuple[str, bool] | Mapping[str, Any] | str] | None


def _record(response: Response) -> dict[str, Any]:
    data = response.json()
    if not isinstance(data, dict):
        raise InvalidArgumentError("the service answered with something that is not a record")
    return data


def _records(response: Response) -> list[dict[str, Any]]:
    data = response.json()
    return list(data["records"] if isinstance(data, dict) else data)


def _batch(response: Response) -> BatchResult:
    return BatchResult.model_validate_json(response.content)


def _as_model(model: type[BaseModel] | None, parse: Any) -> Any:
    if model is None:
        return parse
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise InvalidArgumentError(f"model must be a pydantic model class, got {model!r}")
    if parse is _record:
        return lambda r: model.model_validate(_record(r))
    adapter = TypeAdapter(list[model])  # type: ignore[valid-type]
    return lambda r: adapter.validate_python(_records(r))


def _fields(value: Iterable[str] | None, what: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise InvalidArgumentError(f"{what} takes a list of field names, not a single string")
    return list(value)


def _sort(sort: SortArg) -> list[dict[str, Any]] | None:
    """Accept ``[("age", False)]``, ``["name"]`` or wire dicts ``[{"field", "ascending"}]``."""
    if sort is None:
        return None
    out: list[dict[str, Any]] = []
    for item in sort:
        if isinstance(item, str):
            out.append({"field": item, "ascending": True})
        elif isinstance(item, tuple) and len(item) == 2:
            out.append({"field": item[0], "ascending": bool(item[1])})
        elif isinstance(item, Mapping):
            out.append(dict(item))
        else:
            raise InvalidArgumentError(
                f"sort items are names, (name, ascending) pairs or dicts, got {item!r}")
    return out


def _create_collection(name: str) -> Call[None]:
    """Create a collection (needs admin on it, or an admin key)."""
    return json_call("POST", f"/api/collections/{segment(name, 'collection')}", parse_none)


def _drop_collection(name: str) -> Call[None]:
    """Drop a collection and every record in it."""
    return json_call("DELETE", f"/api/collections/{segment(name, 'collection')}", parse_none)


def _list_collections() -> Call[list[str]]:
    """Names of the collections this key may read."""
    return json_call("GET", "/api/collections", lambda r: list(r.json()["collections"]))


def _insert(collection: str, record: Mapping[str, Any], *,
            ttl: float | dt.timedelta | None = None) -> Call[dict[str, Any]]:
    """Insert a record; returns it as stored, including its new opaque ``id``. With
    ``ttl`` (seconds) the record is deleted that long after (a DataBus delete event)."""
    if not isinstance(record, Mapping):
        raise InvalidArgumentError(f"a record is a mapping of fields, got {type(record).__name__}")
    body = dict(record)
    if ttl is not None:
        if "ttl" in body:
            raise InvalidArgumentError("give the time to live once: ttl= or a 'ttl' field")
        body["ttl"] = _actions.ttl_wire(ttl)
    return json_call("POST", f"/api/insert/{segment(collection, 'collection')}", _record,
                     body)


def _get(
    collection: str,
    id: str,
    *,
    select_fields: Iterable[str] | None = None,
    exclude_fields: Iterable[str] | None = None,
    model: type[BaseModel] | None = None,
) -> Call[Any]:
    """One record by id, as a dict or parsed into ``model``; NotFoundError if absent."""
    params: dict[str, str] = {}
    if (sel := _fields(select_fields, "select_fields")) is not None:
        params["select_fields"] = ",".join(sel)
    if (exc := _fields(exclude_fields, "exclude_fields")) is not None:
        params["exclude_fields"] = ",".join(exc)
    path = f"/api/find/{segment(collection, 'collection')}/{segment(id, 'id')}"
    return json_call("GET", path, _as_model(model, _record), params=params or None)


def _find_body(filter: FilterArg, sort: SortArg, limit: int | None, skip: int | None,
               select_fields: Iterable[str] | None, exclude_fields: Iterable[str] | None
               ) -> dict[str, Any]:
    body = {
        "filter": filter_wire(filter),
        "sort": _sort(sort),
        "limit": limit,
        "skip": skip,
        "select_fields": _fields(select_fields, "select_fields"),
        "exclude_fields": _fields(exclude_fields, "exclude_fields"),
    }
    return {k: v for k, v in body.items() if v is not None}


def _find(
    collection: str,
    filter: FilterArg = None,
    *,
    sort: SortArg = None,
    limit: int | None = None,
    skip: int | None = None,
    select_fields: Iterable[str] | None = None,
    exclude_fields: Iterable[str] | None = None,
    model: type[BaseModel] | None = None,
) -> Call[Any]:
    """Records matching ``filter`` (one page: the service caps ``limit``)."""
    body = _find_body(filter, sort, limit, skip, select_fields, exclude_fields)
    return json_call("POST", f"/api/find/{segment(collection, 'collection')}",
                     _as_model(model, _records), body, read_only=True)


def _iter_find(
    collection: str,
    filter: FilterArg = None,
    *,
    sort: SortArg = None,
    page_size: int = 100,
    limit: int | None = None,
    select_fields: Iterable[str] | None = None,
    exclude_fields: Iterable[str] | None = None,
    model: type[BaseModel] | None = None,
) -> Pager[Any]:
    """Every matching record, fetched ``page_size`` at a time (up to ``limit`` in all)."""
    if page_size < 1:
        raise InvalidArgumentError("page_size must be at least 1")
    path = f"/api/find/{segment(collection, 'collection')}"
    parse = _as_model(model, _records)

    def page(skip: int, size: int) -> Call[list[Any]]:
        body = _find_body(filter, sort, size, skip, select_fields, exclude_fields)
        return json_call("POST", path, parse, body, read_only=True)

    return Pager(page, page_size=page_size, limit=limit)


def _update(collection: str, id: str, changes: Mapping[str, Any]) -> Call[dict[str, Any]]:
    """Apply ``changes`` to a record; returns the record as stored now."""
    if not isinstance(changes, Mapping):
        raise InvalidArgumentError("changes must be a mapping of fields to new values")
    path = f"/api/update/{segment(collection, 'collection')}/{segment(id, 'id')}"
    return json_call("PUT", path, _record, dict(changes))


def _delete(collection: str, id: str) -> Call[None]:
    """Delete one record; NotFoundError if it does not exist (or is not yours to see)."""
    path = f"/api/delete/{segment(collection, 'collection')}/{segment(id, 'id')}"
    return json_call("DELETE", path, parse_none)


def _batch_insert(collection: str, records: Iterable[Mapping[str, Any]]) -> Call[BatchResult]:
    """Insert many records; each succeeds or fails on its own."""
    inserts = [{"data": dict(r)} for r in records]
    return json_call("POST", f"/api/batch/insert/{segment(collection, 'collection')}", _batch,
                     {"inserts": inserts})


def _batch_update(
    collection: str,
    updates: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]],
) -> Call[BatchResult]:
    """Update many records: ``{id: changes}`` or ``[{"id": ..., "data": {...}}]``."""
    if isinstance(updates, Mapping):
        items = [{"id": k, "data": dict(v)} for k, v in updates.items()]
    else:
        items = [dict(u) for u in updates]
    return json_call("PUT", f"/api/batch/update/{segment(collection, 'collection')}", _batch,
                     {"updates": items})


def _batch_delete(
    collection: str,
    ids: Iterable[str] | None = None,
    *,
    filter: FilterArg = None,
) -> Call[BatchResult]:
    """Delete records by id, or every record matching ``filter`` (exactly one of the two)."""
    if (ids is None) == (filter is None):
        raise InvalidArgumentError("batch_delete takes either ids or filter=, not both or none")
    if ids is not None:
        if isinstance(ids, str):
            raise InvalidArgumentError("ids must be a list of ids, not a single string")
        body: dict[str, Any] = {"deletes": [{"id": i} for i in ids]}
    else:
        body = {"filter": filter_wire(filter)}
    return json_call("DELETE", f"/api/batch/delete/{segment(collection, 'collection')}",
                     _batch, body)


class DataStore(Service[E]):
    """Collections of JSON records, with the calling key's field rules applied by the service."""

    __slots__ = ()

    create_collection = endpoint(_create_collection)
    drop_collection = endpoint(_drop_collection)
    list_collections = endpoint(_list_collections)
    insert = endpoint(_insert)
    get = endpoint(_get)
    find = endpoint(_find)
    iter_find = paged(_iter_find)
    update = endpoint(_update)
    delete = endpoint(_delete)
    batch_insert = endpoint(_batch_insert)
    batch_update = endpoint(_batch_update)
    batch_delete = endpoint(_batch_delete)
    # atomic field actions and server-side helpers (``_services/actions.py``)
    increment = endpoint(_actions._increment)
    decrement = endpoint(_actions._decrement)
    multiply = endpoint(_actions._multiply)
    divide = endpoint(_actions._divide)
    modulo = endpoint(_actions._modulo)
    push = endpoint(_actions._push)
    pop = endpoint(_actions._pop)
    shift = endpoint(_actions._shift)
    unshift = endpoint(_actions._unshift)
    remove = endpoint(_actions._remove)
    append = endpoint(_actions._append)
    clear = endpoint(_actions._clear)
    apply = endpoint(_actions._apply)
    upsert = endpoint(_actions._upsert)
    count = endpoint(_actions._count)
    exists = endpoint(_actions._exists)
    distinct = endpoint(_actions._distinct)
    restore = endpoint(_actions._restore)
    restore_all = endpoint(_actions._restore_all)
