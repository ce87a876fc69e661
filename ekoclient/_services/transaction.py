"""Client transactions over the DataStore (SPEC §3.1 Transactions).

A :class:`Transaction` is a service bound to one transaction id. Its record methods are the
DataStore's own endpoint definitions with ``?transaction_id=`` added to each call, so they
take exactly the DataStore's arguments and stay in step with it; its own calls (commit,
savepoints...) are endpoints too, run by the same sync or async executor. ``with`` (or
``async with``) begins it, commits when the block ends normally and rolls back when it
raises. The server keeps the writes staged until commit; a commit that lost a race with
another writer raises :class:`~ekoclient.errors.ConflictError` and changes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import suppress
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from typing_extensions import Unpack

from .._call import Call, json_call, parse_json, segment
from .._executor import AsyncExecutor, SyncExecutor
from .._http import Response
from .._service import E, Service, WriteOptions, endpoint
from .._tokens import Credential
from ..errors import EkoError, InvalidArgumentError
from .datastore import DataStore, _find, _get

P = ParamSpec("P")
T = TypeVar("T")

__all__ = ["Transaction"]


class _joined(endpoint[P, T]):
    """A DataStore endpoint whose calls join the transaction (``?transaction_id=``)."""

    def __init__(self, same_as: endpoint[P, T]) -> None:
        super().__init__(same_as._build)

    def bind(self, obj: Any) -> Callable[..., Call[T]]:
        build = self._build

        def joined(*args: Any, **kwargs: Any) -> Call[T]:
            call = build(*args, **kwargs)
            return dataclasses.replace(
                call, params={**(call.params or {}), "transaction_id": obj.id})

        return joined


class _own(endpoint[P, T]):
    """A call on the transaction itself: its id is the first argument of ``build``.

    ``ends`` names the state a success leaves the transaction in (commit, rollback), so
    leaving the ``with`` block does not end it a second time.
    """

    def __init__(self, build: Callable[Concatenate[str, P], Call[T]], *,
                 ends: str | None = None) -> None:
        super().__init__(cast("Callable[P, Call[T]]", build))
        self._with_id = build
        self._ends = ends

    def bind(self, obj: Any) -> Callable[..., Call[T]]:
        with_id, ends = self._with_id, self._ends

        def bound(*args: Any, **kwargs: Any) -> Call[T]:
            call = with_id(obj.id, *args, **kwargs)
            if ends is None:
                return call
            parse = call.parse

            def parse_and_end(response: Response) -> T:
                result = parse(response)
                obj._state = ends
                return result

            return dataclasses.replace(call, parse=parse_and_end)

        return bound


def _path(txid: str, *rest: str) -> str:
    return "/".join(["/api/transactions", segment(txid, "transaction id"), *rest])


def _commit(txid: str, **write: Unpack[WriteOptions]) -> Call[dict[str, Any]]:
    """Apply every write of the transaction at once; ConflictError if another write won."""
    return json_call("POST", _path(txid, "commit"), parse_json)


def _rollback(txid: str, **write: Unpack[WriteOptions]) -> Call[dict[str, Any]]:
    """Discard every write of the transaction."""
    return json_call("POST", _path(txid, "rollback"), parse_json)


def _status(txid: str) -> Call[dict[str, Any]]:
    """The transaction as the server sees it: status, isolation level, staged writes."""
    return json_call("GET", _path(txid), parse_json)


def _savepoint(txid: str, name: str, **write: Unpack[WriteOptions]) -> Call[dict[str, Any]]:
    """Mark this point; :meth:`rollback_to` undoes what comes after it."""
    return json_call("POST", _path(txid, "savepoints"), parse_json, {"name": name})


def _rollback_to(txid: str, name: str, **write: Unpack[WriteOptions]) -> Call[dict[str, Any]]:
    """Undo the writes made since savepoint ``name`` (the savepoint stays)."""
    return json_call("POST", _path(txid, "savepoints", segment(name, "savepoint"), "rollback"),
                     parse_json)


def _release(txid: str, name: str, **write: Unpack[WriteOptions]) -> Call[dict[str, Any]]:
    """Forget savepoint ``name`` (and later ones); the writes stay."""
    return json_call("DELETE", _path(txid, "savepoints", segment(name, "savepoint")),
                     parse_json)


class Transaction(Service[E]):
    """A DataStore transaction: use it in ``with`` (``async with`` on AsyncClient)."""

    __slots__ = ("_id", "_isolation", "_state")

    insert = _joined(DataStore.insert)
    # DataStore.get/find carry model= overloads for type checkers; join their endpoints
    get = _joined(endpoint(_get))
    find = _joined(endpoint(_find))
    update = _joined(DataStore.update)
    delete = _joined(DataStore.delete)
    batch_insert = _joined(DataStore.batch_insert)
    batch_update = _joined(DataStore.batch_update)
    batch_delete = _joined(DataStore.batch_delete)

    commit = _own(_commit, ends="committed")
    rollback = _own(_rollback, ends="rolled_back")
    status = _own(_status)
    savepoint = _own(_savepoint)
    rollback_to = _own(_rollback_to)
    release = _own(_release)

    def __init__(self, executor: E, credential: Credential | None,
                 isolation_level: str | None = None) -> None:
        Service.__init__(self, executor, credential)
        if isolation_level is not None and not isinstance(isolation_level, str):
            raise InvalidArgumentError("isolation_level is a name such as 'Serializable'")
        self._isolation = isolation_level
        self._id: str | None = None
        self._state = "new"

    @property
    def id(self) -> str:
        """The server's transaction id (once begun)."""
        if self._id is None:
            raise InvalidArgumentError(
                "the transaction has not begun: use it as `with client.datastore."
                "transaction() as tx:` (`async with` on AsyncClient)")
        return self._id

    def __repr__(self) -> str:
        return f"<Transaction {self._id or 'not begun'} {self._state}>"

    def _begin(self) -> Call[str]:
        if self._id is not None:
            raise InvalidArgumentError("this transaction has already begun; start a new one "
                                       "with datastore.transaction()")

        def started(response: Response) -> str:
            data = response.json()
            self._id, self._state = str(data["transaction_id"]), "active"
            return self._id

        body = {} if self._isolation is None else {"isolation_level": self._isolation}
        return json_call("POST", "/api/transactions", started, body)

    def __enter__(self: Transaction[SyncExecutor]) -> Transaction[SyncExecutor]:
        if not isinstance(self._executor, SyncExecutor):
            raise TypeError("use `async with` for a transaction of an AsyncClient")
        self._executor.execute(self._begin(), self._credential)
        return self

    def __exit__(self: Transaction[SyncExecutor], exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._state != "active":
            return
        if exc_type is None:
            self.commit()
            return
        with suppress(EkoError):  # the block's own error is the one to see
            self.rollback()

    async def __aenter__(self: Transaction[AsyncExecutor]) -> Transaction[AsyncExecutor]:
        if not isinstance(self._executor, AsyncExecutor):
            raise TypeError("use `with` for a transaction of a (sync) Client")
        await self._executor.execute(self._begin(), self._credential)
        return self

    async def __aexit__(self: Transaction[AsyncExecutor], exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._state != "active":
            return
        if exc_type is None:
            await self.commit()
            return
        with suppress(EkoError):
            await self.rollback()
