"""Collections and records (SPEC §3 DataStore, wire format §4.3).

Paging: ``find`` returns one list (at most :data:`MAX_PAGE` records; a bigger ``limit`` is
refused here, before sending). ``find_page`` adds ``has_more`` and a keyset ``next_cursor``
(the server sends them as ``X-Has-More``/``X-Next-Cursor`` beside ekoDB's plain array), and
``iter_find`` follows the cursors, so records deleted or inserted meanwhile never make it
skip one that still matches (offset paging does).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from pydantic import BaseModel, TypeAdapter
from typing_extensions import Unpack

from .._call import Call, json_call, parse_none, segment
from .._changes import AsyncChangeStream, ChangeStream
from .._executor import AsyncExecutor, SyncExecutor
from .._filters import Filter, filter_wire
from .._http import Response
from .._paging import Pager, paged
from .._service import E, Service, WriteOptions, endpoint
from ..errors import InvalidArgumentError, MalformedResponseError
from ..models import BatchResult, Page, SearchHit
from . import actions as _actions
from ._records import Record, _record_body

if TYPE_CHECKING:
    from .transaction import Transaction

M = TypeVar("M", bound=BaseModel)

#: The most records the service returns for one find (its ``limit`` cap).
MAX_PAGE = 1000

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


def _create_collection(name: str, schema: Mapping[str, Any] | None = None,
                       **write: Unpack[WriteOptions]) -> Call[None]:
    """Create a collection (needs admin on it, or an admin key), with an ekoDB schema
    (``{"fields": {name: {"field_type", "required", "unique", ...}}}``) when given."""
    if schema is not None and not isinstance(schema, Mapping):
        raise InvalidArgumentError("schema is a mapping like {'fields': {...}}")
    return json_call("POST", f"/api/collections/{segment(name, 'collection')}", parse_none,
                     dict(schema) if schema is not None else None)


def _get_schema(name: str) -> Call[dict[str, Any]]:
    """The collection's schema in ekoDB's shape (``{"fields": {...}, "version", ...}``)."""
    return json_call("GET", f"/api/schemas/{segment(name, 'collection')}", _record)


def _update_schema(name: str, constraints: Mapping[str, Mapping[str, Any]],
                   **write: Unpack[WriteOptions]) -> Call[dict[str, Any]]:
    """Change some fields' constraints (``{"age": {"min": 0}}``; ``None`` removes one);
    stored records must already satisfy them. Returns the new schema."""
    if not isinstance(constraints, Mapping):
        raise InvalidArgumentError("constraints map field names to {attribute: value}")
    return json_call("PUT", f"/api/schemas/{segment(name, 'collection')}", _record,
                     {"constraints": {k: dict(v) for k, v in constraints.items()}})


def _drop_collection(name: str, **write: Unpack[WriteOptions]) -> Call[None]:
    """Drop a collection and every record in it."""
    return json_call("DELETE", f"/api/collections/{segment(name, 'collection')}", parse_none)


def _list_collections() -> Call[list[str]]:
    """Names of the collections this key may read."""
    return json_call("GET", "/api/collections", lambda r: list(r.json()["collections"]))


def _insert(collection: str, record: Record, *, ttl: float | dt.timedelta | None = None,
            **write: Unpack[WriteOptions]) -> Call[dict[str, Any]]:
    """Insert a record (a mapping or a pydantic model; datetimes, UUIDs and Decimals are sent
    as ISO/str strings, as pydantic writes them); returns it as stored, with its new ``id``.
    With ``ttl`` (seconds) the record is deleted that long after (a DataBus delete event)."""
    body = _record_body(record, "a record")
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


def _check_limit(limit: int | None, what: str = "limit") -> None:
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidArgumentError(f"{what} must be a positive integer, got {limit!r}")
    if limit > MAX_PAGE:
        raise InvalidArgumentError(
            f"{what}={limit} is more than the service returns in one page ({MAX_PAGE}); "
            f"use iter_find(...) for every record, or find_page(...) and its next_cursor")


def _find_body(filter: FilterArg, sort: SortArg, limit: int | None, skip: int | None,
               select_fields: Iterable[str] | None, exclude_fields: Iterable[str] | None,
               cursor: str | None = None) -> dict[str, Any]:
    _check_limit(limit)
    if cursor is not None and not isinstance(cursor, str):
        raise InvalidArgumentError("cursor takes the next_cursor string of a previous page")
    body = {
        "filter": filter_wire(filter),
        "sort": _sort(sort),
        "limit": limit,
        "skip": skip,
        "cursor": cursor,
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
    """Records matching ``filter``: one page, ``limit`` records at most (default 100, at
    most 1,000). It does not say whether more match: use ``find_page`` or ``iter_find``."""
    body = _find_body(filter, sort, limit, skip, select_fields, exclude_fields)
    return json_call("POST", f"/api/find/{segment(collection, 'collection')}",
                     _as_model(model, _records), body, read_only=True)


def _page_of(parse: Any, limit: int) -> Any:
    def read(response: Response) -> Page[Any]:
        items = parse(response)
        more = response.headers.get("x-has-more")
        if more is None:  # a server without cursors: say what is known, offer no cursor
            return Page(items, len(items) >= limit, None)
        cursor = response.headers.get("x-next-cursor")
        if more == "true" and not cursor:
            raise MalformedResponseError("the service said more records match but sent no "
                                         "X-Next-Cursor")
        return Page(items, more == "true", cursor if more == "true" else None)
    return read


def _find_page(
    collection: str,
    filter: FilterArg = None,
    *,
    sort: SortArg = None,
    limit: int | None = None,
    cursor: str | None = None,
    select_fields: Iterable[str] | None = None,
    exclude_fields: Iterable[str] | None = None,
    model: type[BaseModel] | None = None,
) -> Call[Page[Any]]:
    """One page of matching records (``limit``: default 100, at most 1,000) as a
    :class:`~ekoclient.models.Page`; pass its ``next_cursor`` as ``cursor`` (same filter and
    sort) for the next. Keyset paging: stable while records are inserted and deleted."""
    body = _find_body(filter, sort, limit, None, select_fields, exclude_fields, cursor)
    return json_call("POST", f"/api/find/{segment(collection, 'collection')}",
                     _page_of(_as_model(model, _records), limit or 100), body, read_only=True)


class _CursorPager(Pager[Any]):
    """Follows ``next_cursor`` from page to page (never an offset)."""

    def __init__(self, make: Any, page_size: int, limit: int | None) -> None:
        self._make = make
        self._page_size = page_size
        self._remaining = limit
        self._cursor: str | None = None
        self._done = False

    def next_call(self) -> Call[list[Any]] | None:
        if self._done or self._remaining == 0:
            return None
        size = self._page_size if self._remaining is None else min(self._page_size,
                                                                    self._remaining)
        call: Call[Page[Any]] = self._make(size, self._cursor)
        parse = call.parse

        def items(response: Response) -> list[Any]:
            page = parse(response)
            if page.has_more and page.next_cursor is None:
                raise MalformedResponseError(
                    "the service does not send paging cursors (X-Next-Cursor), so iter_find "
                    "cannot continue safely; use find(..., skip=...) yourself")
            self._cursor = page.next_cursor
            self._done = not page.has_more
            return page.items

        return Call(call.method, call.path, items, params=call.params, content=call.content,
                    headers=call.headers, read_only=True)

    def feed(self, page: list[Any]) -> list[Any]:
        if self._remaining is not None:
            self._remaining -= len(page)
        return page


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
    """Every matching record (up to ``limit`` in all), fetched ``page_size`` (at most 1,000)
    at a time by keyset cursor: a record that matches throughout is returned exactly once,
    even while others are inserted or deleted."""
    _check_limit(page_size, "page_size")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 0):
        raise InvalidArgumentError(f"limit must be a non-negative integer, got {limit!r}")
    segment(collection, "collection")

    def make(size: int, cursor: str | None) -> Call[Page[Any]]:
        return _find_page(collection, filter, sort=sort, limit=size, cursor=cursor,
                          select_fields=select_fields, exclude_fields=exclude_fields,
                          model=model)

    return _CursorPager(make, page_size, limit)


def _update(collection: str, id: str, changes: Record,
            **write: Unpack[WriteOptions]) -> Call[dict[str, Any]]:
    """Apply ``changes`` (a mapping, or a pydantic model: the fields set on it) to a record;
    returns the record as stored now."""
    body = _record_body(changes, "changes", partial=True)
    path = f"/api/update/{segment(collection, 'collection')}/{segment(id, 'id')}"
    return json_call("PUT", path, _record, body)


def _delete(collection: str, id: str, **write: Unpack[WriteOptions]) -> Call[None]:
    """Delete one record; NotFoundError if it does not exist (or is not yours to see)."""
    path = f"/api/delete/{segment(collection, 'collection')}/{segment(id, 'id')}"
    return json_call("DELETE", path, parse_none)


def _batch_insert(collection: str, records: Iterable[Record],
                  **write: Unpack[WriteOptions]) -> Call[BatchResult]:
    """Insert many records (mappings or pydantic models); each succeeds or fails on its own."""
    inserts = [{"data": _record_body(r, "a record")} for r in records]
    return json_call("POST", f"/api/batch/insert/{segment(collection, 'collection')}", _batch,
                     {"inserts": inserts})


def _batch_update(
    collection: str,
    updates: Mapping[str, Record] | Iterable[Mapping[str, Any]],
    **write: Unpack[WriteOptions],
) -> Call[BatchResult]:
    """Update many records: ``{id: changes}`` (changes may be models) or
    ``[{"id": ..., "data": {...}}]``."""
    if isinstance(updates, Mapping):
        items = [{"id": k, "data": _record_body(v, "changes", partial=True)}
                 for k, v in updates.items()]
    else:
        items = [dict(u) for u in updates]
    return json_call("PUT", f"/api/batch/update/{segment(collection, 'collection')}", _batch,
                     {"updates": items})


def _batch_delete(
    collection: str,
    ids: Iterable[str] | None = None,
    *,
    filter: FilterArg = None,
    **write: Unpack[WriteOptions],
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


_METRICS = {"cosine": "cosine", "euclidean": "euclidean", "dot": "dotproduct",
            "dotproduct": "dotproduct"}


def _hits(response: Response) -> list[SearchHit]:
    data = response.json()
    return [SearchHit.model_validate(hit) for hit in data["results"]]


def _search(
    collection: str,
    query: str | None = None,
    *,
    fields: Iterable[str] | None = None,
    fuzzy: bool = False,
    limit: int = 10,
    vector: Sequence[float] | None = None,
    vector_field: str | None = None,
    metric: str = "cosine",
    text_weight: float | None = None,
    vector_weight: float | None = None,
    filter: FilterArg = None,
    weights: Mapping[str, float] | None = None,
    min_score: float | None = None,
    language: str | None = None,
    vector_k: int | None = None,
    select_fields: Iterable[str] | None = None,
    exclude_fields: Iterable[str] | None = None,
) -> Call[list[SearchHit]]:
    """Full-text (``query``), vector (``vector``) or hybrid search, best hits first.

    ``fields`` limits the text search, ``weights`` boosts fields, ``fuzzy`` tolerates typos;
    ``metric`` is cosine, euclidean or dot; ``text_weight`` / ``vector_weight`` mix a hybrid
    score. Fields the key may not read are never matched, scored or returned.
    """
    if query is None and vector is None:
        raise InvalidArgumentError("search needs a query, a vector, or both")
    if metric not in _METRICS:
        raise InvalidArgumentError(f"metric must be cosine, euclidean or dot, got {metric!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidArgumentError(f"limit must be a positive integer, got {limit!r}")
    body: dict[str, Any] = {
        "query": query or "",
        "fields": _fields(fields, "fields"),
        "fuzzy": fuzzy or None,
        "limit": limit,
        "vector": None if vector is None else [float(x) for x in vector],
        "vector_field": vector_field,
        "vector_metric": _METRICS[metric] if vector is not None else None,
        "vector_k": vector_k,
        "text_weight": text_weight,
        "vector_weight": vector_weight,
        "filters": filter_wire(filter),
        "weights": dict(weights) if weights is not None else None,
        "min_score": min_score,
        "language": language,
        "select_fields": _fields(select_fields, "select_fields"),
        "exclude_fields": _fields(exclude_fields, "exclude_fields"),
    }
    return json_call("POST", f"/api/search/{segment(collection, 'collection')}", _hits,
                     {k: v for k, v in body.items() if v is not None}, read_only=True)


def _changes(collection: str, filter_field: str | None, filter_value: Any,
             wrap: type[ChangeStream] | type[AsyncChangeStream]) -> Call[Any]:
    if (filter_field is None) != (filter_value is None):
        raise InvalidArgumentError("give filter_field and filter_value together")
    params: dict[str, str] = {}
    if filter_field is not None:
        params = {"filter_field": filter_field,
                  "filter_value": filter_value if isinstance(filter_value, str)
                  else json.dumps(filter_value, separators=(",", ":"))}
    return Call("GET", f"/api/subscribe/{segment(collection, 'collection')}", wrap,
                params=params or None, headers={"Accept": "text/event-stream"}, stream=True)


class SyncFindPage(Protocol):
    @overload
    def __call__(self, collection: str, filter: FilterArg = None, *, sort: SortArg = None,
                 limit: int | None = None, cursor: str | None = None,
                 select_fields: Iterable[str] | None = None,
                 exclude_fields: Iterable[str] | None = None, model: type[M]) -> Page[M]: ...
    @overload
    def __call__(self, collection: str, filter: FilterArg = None, *, sort: SortArg = None,
                 limit: int | None = None, cursor: str | None = None,
                 select_fields: Iterable[str] | None = None,
                 exclude_fields: Iterable[str] | None = None, model: None = None
                 ) -> Page[dict[str, Any]]: ...


class AsyncFindPage(Protocol):
    @overload
    def __call__(self, collection: str, filter: FilterArg = None, *, sort: SortArg = None,
                 limit: int | None = None, cursor: str | None = None,
                 select_fields: Iterable[str] | None = None,
                 exclude_fields: Iterable[str] | None = None, model: type[M]
                 ) -> Awaitable[Page[M]]: ...
    @overload
    def __call__(self, collection: str, filter: FilterArg = None, *, sort: SortArg = None,
                 limit: int | None = None, cursor: str | None = None,
                 select_fields: Iterable[str] | None = None,
                 exclude_fields: Iterable[str] | None = None, model: None = None
                 ) -> Awaitable[Page[dict[str, Any]]]: ...


class SyncIterFind(Protocol):
    @overload
    def __call__(self, collection: str, filter: FilterArg = None, *, sort: SortArg = None,
                 page_size: int = 100, limit: int | None = None,
                 select_fields: Iterable[str] | None = None,
                 exclude_fields: Iterable[str] | None = None, model: type[M]
                 ) -> Iterator[M]: ...
    @overload
    def __call__(self, collection: str, filter: FilterArg = None, *, sort: SortArg = None,
                 page_size: int = 100, limit: int | None = None,
                 select_fields: Iterable[str] | None = None,
                 exclude_fields: Iterable[str] | None = None, model: None = None
                 ) -> Iterator[dict[str, Any]]: ...


class AsyncIterFind(Protocol):
    @overload
    def __call__(self, collection: str, filter: FilterArg = None, *, sort: SortArg = None,
                 page_size: int = 100, limit: int | None = None,
                 select_fields: Iterable[str] | None = None,
                 exclude_fields: Iterable[str] | None = None, model: type[M]
                 ) -> AsyncIterator[M]: ...
    @overload
    def __call__(self, collection: str, filter: FilterArg = None, *, sort: SortArg = None,
                 page_size: int = 100, limit: int | None = None,
                 select_fields: Iterable[str] | None = None,
                 exclude_fields: Iterable[str] | None = None, model: None = None
                 ) -> AsyncIterator[dict[str, Any]]: ...


class _find_page_method:
    """``find_page``, typed by ``model=`` for sync and async clients alike."""

    def __init__(self) -> None:
        self._endpoint = endpoint(_find_page)
        self.__doc__ = _find_page.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self._endpoint.__set_name__(owner, name)

    @overload
    def __get__(self, obj: None, owner: Any) -> _find_page_method: ...
    @overload
    def __get__(self, obj: Service[SyncExecutor], owner: Any) -> SyncFindPage: ...
    @overload
    def __get__(self, obj: Service[AsyncExecutor], owner: Any) -> AsyncFindPage: ...

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        return self if obj is None else self._endpoint.__get__(obj, owner)


class _iter_find_method:
    """``iter_find``, typed by ``model=`` for sync and async clients alike."""

    def __init__(self) -> None:
        self._paged = paged(_iter_find)
        self.__doc__ = _iter_find.__doc__

    @overload
    def __get__(self, obj: None, owner: Any) -> _iter_find_method: ...
    @overload
    def __get__(self, obj: Service[SyncExecutor], owner: Any) -> SyncIterFind: ...
    @overload
    def __get__(self, obj: Service[AsyncExecutor], owner: Any) -> AsyncIterFind: ...

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        return self if obj is None else self._paged.__get__(obj, owner)


class DataStore(Service[E]):
    """Collections of JSON records, with the calling key's field rules applied by the service."""

    __slots__ = ()

    create_collection = endpoint(_create_collection)
    drop_collection = endpoint(_drop_collection)
    list_collections = endpoint(_list_collections)
    insert = endpoint(_insert)
    find_page = _find_page_method()
    iter_find = _iter_find_method()
    update = endpoint(_update)
    delete = endpoint(_delete)
    batch_insert = endpoint(_batch_insert)
    batch_update = endpoint(_batch_update)
    batch_delete = endpoint(_batch_delete)
    search = endpoint(_search)

    @overload
    def changes(self: DataStore[SyncExecutor], collection: str, *,
                filter_field: str | None = None, filter_value: Any = None) -> ChangeStream: ...
    @overload
    def changes(self: DataStore[AsyncExecutor], collection: str, *,
                filter_field: str | None = None, filter_value: Any = None
                ) -> Awaitable[AsyncChangeStream]: ...

    def changes(self, collection: str, *, filter_field: str | None = None,
                filter_value: Any = None) -> Any:
        """Live changes of a collection (ekoDB's SSE feed), as the key may see them.

        Iterate the stream (``for note in ...`` / ``async for`` after ``await``) to get
        :class:`~ekoclient.models.MutationNotification` objects; close it (``with``) when
        done. Best-effort and live only: use the DataBus for changes you must not miss.
        """
        wrap = AsyncChangeStream if self._executor.is_async else ChangeStream
        return self._executor.execute(_changes(collection, filter_field, filter_value, wrap),
                                      self._credential)

    get_schema = endpoint(_get_schema)
    update_schema = endpoint(_update_schema)

    def transaction(self, isolation_level: str | None = None) -> Transaction[E]:
        """A transaction: ``with ds.transaction() as tx:`` (``async with`` when async)
        begins it, commits when the block ends and rolls back if it raises."""
        from .transaction import Transaction

        return Transaction(self._executor, self._credential, isolation_level)

    # get/find return what model= asks for. An endpoint's ParamSpec cannot say that, so type
    # checkers read these overloads while the runtime uses the endpoints (one definition).
    if TYPE_CHECKING:
        @overload
        def get(self: DataStore[SyncExecutor], collection: str, id: str, *,
                select_fields: Iterable[str] | None = None,
                exclude_fields: Iterable[str] | None = None, model: None = None
                ) -> dict[str, Any]: ...
        @overload
        def get(self: DataStore[SyncExecutor], collection: str, id: str, *,
                select_fields: Iterable[str] | None = None,
                exclude_fields: Iterable[str] | None = None, model: type[M]) -> M: ...
        @overload
        def get(self: DataStore[AsyncExecutor], collection: str, id: str, *,
                select_fields: Iterable[str] | None = None,
                exclude_fields: Iterable[str] | None = None, model: None = None
                ) -> Awaitable[dict[str, Any]]: ...
        @overload
        def get(self: DataStore[AsyncExecutor], collection: str, id: str, *,
                select_fields: Iterable[str] | None = None,
                exclude_fields: Iterable[str] | None = None, model: type[M]
                ) -> Awaitable[M]: ...
        def get(self, collection: str, id: str, *,
                select_fields: Iterable[str] | None = None,
                exclude_fields: Iterable[str] | None = None,
                model: type[BaseModel] | None = None) -> Any:
            """One record by id, as a dict or parsed into ``model``; NotFoundError if absent."""

        @overload
        def find(self: DataStore[SyncExecutor], collection: str, filter: FilterArg = None, *,
                 sort: SortArg = None, limit: int | None = None, skip: int | None = None,
                 select_fields: Iterable[str] | None = None,
                 exclude_fields: Iterable[str] | None = None, model: None = None
                 ) -> list[dict[str, Any]]: ...
        @overload
        def find(self: DataStore[SyncExecutor], collection: str, filter: FilterArg = None, *,
                 sort: SortArg = None, limit: int | None = None, skip: int | None = None,
                 select_fields: Iterable[str] | None = None,
                 exclude_fields: Iterable[str] | None = None, model: type[M]
                 ) -> list[M]: ...
        @overload
        def find(self: DataStore[AsyncExecutor], collection: str, filter: FilterArg = None, *,
                 sort: SortArg = None, limit: int | None = None, skip: int | None = None,
                 select_fields: Iterable[str] | None = None,
                 exclude_fields: Iterable[str] | None = None, model: None = None
                 ) -> Awaitable[list[dict[str, Any]]]: ...
        @overload
        def find(self: DataStore[AsyncExecutor], collection: str, filter: FilterArg = None, *,
                 sort: SortArg = None, limit: int | None = None, skip: int | None = None,
                 select_fields: Iterable[str] | None = None,
                 exclude_fields: Iterable[str] | None = None, model: type[M]
                 ) -> Awaitable[list[M]]: ...
        def find(self, collection: str, filter: FilterArg = None, *, sort: SortArg = None,
                 limit: int | None = None, skip: int | None = None,
                 select_fields: Iterable[str] | None = None,
                 exclude_fields: Iterable[str] | None = None,
                 model: type[BaseModel] | None = None) -> Any:
            """Records matching ``filter`` (one page: the service caps ``limit``)."""
    else:
        get = endpoint(_get)
        find = endpoint(_find)

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
