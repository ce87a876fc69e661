"""SQLite storage shared by every service module.

Durability choice: WAL mode with ``synchronous=FULL``. In WAL mode FULL fsyncs the WAL on every
commit, so a write acknowledged to a client survives SIGKILL and power loss; NORMAL would only
survive a process crash. The cost is one fsync per commit, acceptable for a reference server.

Several server processes may share one data dir: all authoritative state lives in the
database, each thread has its own connection, and writers use ``BEGIN IMMEDIATE`` with a
busy timeout so they queue instead of failing.

A request that must commit its writes together with its stored answer (an Idempotency-Key
write) runs inside a :class:`Unit`: every ``transaction()`` in its context becomes a
savepoint of one held transaction, committed by whoever opened the unit. Domain code stays
unaware; side effects that must wait for the real COMMIT (waking listeners, unlinking
replaced files) go through :meth:`Storage.after_commit` / :meth:`Storage.on_rollback`.
"""

from __future__ import annotations

import contextvars
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

DB_FILE = "ekodb.sqlite3"
BUSY_TIMEOUT_MS = 30_000
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6

log = logging.getLogger("mock_server.storage")

_GLOBAL_SCHEMAS: list[str] = []
_GLOBAL_LOCK = threading.Lock()

Callback = Callable[[], object]


def register_schema(sql: str) -> None:
    """Register DDL (use IF NOT EXISTS) run when any Storage opens; call at import time."""
    with _GLOBAL_LOCK:
        if sql not in _GLOBAL_SCHEMAS:
            _GLOBAL_SCHEMAS.append(sql)


@dataclass
class _Effects:
    """Callbacks of one transaction (or savepoint): run after COMMIT, or after ROLLBACK."""

    committed: list[Callback] = field(default_factory=list)
    rolled_back: list[Callback] = field(default_factory=list)

    def merge(self, inner: _Effects) -> None:
        self.committed += inner.committed
        self.rolled_back += inner.rolled_back


class _Quick:
    """A callback that neither blocks nor does I/O (a wake-up): fine on an event loop."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callback) -> None:
        self.callback = callback

    def __call__(self) -> object:
        return self.callback()


def _run_all(callbacks: list[Callback], what: str) -> None:
    # the data is already committed (or gone): a failing callback must not change the answer
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("storage: a callback after %s failed", what)


class WouldWait(Exception):
    """Another connection holds the write lock: a :meth:`Storage.nowait` caller (on an event
    loop) must not wait for it, and does the work from a thread instead."""


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether SQLite refused for a lock another connection holds (not a real failure)."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    text = str(exc)
    return "database is locked" in text or "database table is locked" in text


class Unit:
    """One write transaction held open across a request; see the module docstring.

    Begun lazily by the first ``transaction()`` in its context (``BEGIN IMMEDIATE`` on a
    connection of its own), so a request that writes nothing never takes the write lock.
    Used by one request at a time: its threads take turns, never run together.
    """

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._conn: sqlite3.Connection | None = None
        self._depth = 0
        self._effects = _Effects()
        self._frame: _Effects | None = None
        self._due: list[Callback] = []
        self._starting = False
        #: Joinable: inside its ``Storage.unit()`` block and neither committed nor rolled back.
        self.active = True

    @property
    def begun(self) -> bool:
        """Whether a write ran (the write lock is held until commit or rollback)."""
        return self._conn is not None

    @property
    def locking(self) -> bool:
        """Whether it holds the write lock or is taking it: a thread that got the lock in
        ``BEGIN IMMEDIATE`` may not have said so yet (it waits for the GIL)."""
        return self._conn is not None or self._starting

    @property
    def conn(self) -> sqlite3.Connection | None:
        return self._conn

    @contextmanager
    def _join(self) -> Iterator[sqlite3.Connection]:
        if self._depth:  # nested inside a savepoint of ours: part of it
            assert self._conn is not None
            self._depth += 1
            try:
                yield self._conn
            finally:
                self._depth -= 1
            return
        if self._conn is None:
            conn = self._storage._lease()
            self._starting = True
            try:
                if _ON_LOOP.get():
                    try:
                        _begin_nowait(conn)
                    finally:
                        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                else:
                    conn.execute("BEGIN IMMEDIATE")
            except BaseException:
                self._storage._give_back(conn)
                raise
            else:
                self._conn = conn
            finally:
                self._starting = False
        conn = self._conn
        # each outermost `with transaction()` is atomic on its own, as without a unit
        conn.execute("SAVEPOINT unit")
        self._depth, self._frame = 1, _Effects()
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK TO unit")
            conn.execute("RELEASE unit")
            _run_all(self._frame.rolled_back, "a rollback")
            raise
        else:
            conn.execute("RELEASE unit")
            self._effects.merge(self._frame)
        finally:
            self._depth, self._frame = 0, None

    def _unbegin(self) -> None:
        """Roll back everything since BEGIN and give the lock back; the unit stays joinable.

        For a refused attempt on the event loop (:meth:`Storage.on_loop`) that began the
        unit: its retry from a thread must not find the lock held by a unit that waits for
        a worker thread (writers queued on the lock may hold them all).
        """
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        finally:
            self._storage._give_back(conn)
        effects, self._effects = self._effects, _Effects()
        _run_all(effects.rolled_back, "a rollback")

    def _effects_now(self) -> _Effects:
        if self._frame is None:
            raise RuntimeError("after_commit/on_rollback outside a transaction")
        return self._frame

    def commit(self, last: Callable[[sqlite3.Connection], bool] | None = None) -> bool:
        """Run ``last`` inside the transaction, then COMMIT (or ROLLBACK if it says False).

        Returns whether the writes were committed. Without a write, ``last`` is not run.
        The after-commit (or on-rollback) callbacks wait for :meth:`settle`, so a caller on
        an event loop can run them off it.
        """
        conn = self._conn
        if conn is None:
            self.active = False
            return True
        try:
            keep = True if last is None else last(conn)
            if keep:
                conn.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        if not keep:
            self.rollback()
            return False
        self._release()
        self._due = self._effects.committed
        return True

    def rollback(self) -> None:
        """Discard every write of the unit (idempotent); callbacks wait for :meth:`settle`."""
        conn = self._conn
        if conn is None:
            self.active = False
            return
        try:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        finally:
            self._release()
            self._due = self._effects.rolled_back

    @property
    def due(self) -> bool:
        """Whether :meth:`settle` has callbacks to run (else a caller skips the thread hop)."""
        return bool(self._due)

    @property
    def due_quick(self) -> bool:
        """Whether every callback due is quick (``after_commit(..., quick=True)``): then
        :meth:`settle` may run on an event loop, without a hop to a thread."""
        return all(isinstance(callback, _Quick) for callback in self._due)

    def settle(self) -> None:
        """Run the callbacks the commit or rollback made due (file unlinks, wake-ups)."""
        due, self._due = self._due, []
        _run_all(due, "a unit's commit or rollback")

    def _release(self) -> None:
        self.active = False  # later transactions in this context run on their own
        conn, self._conn = self._conn, None
        if conn is not None:
            self._storage._give_back(conn)


_UNIT: contextvars.ContextVar[Unit | None] = contextvars.ContextVar("ekodb_unit", default=None)
#: Set while a unit's writes run on the event loop (:meth:`Storage.on_loop`).
_ON_LOOP: contextvars.ContextVar[bool] = contextvars.ContextVar("ekodb_on_loop", default=False)


def _begin_nowait(conn: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE`` that raises :class:`WouldWait` instead of waiting for the lock.
    It leaves the connection's busy timeout at 0: the caller restores it."""
    conn.execute("PRAGMA busy_timeout=0")
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if is_busy(exc):
            raise WouldWait from None
        raise


def on_loop() -> bool:
    """Whether the current work runs on the event loop (:meth:`Storage.on_loop`): code
    that could take long (a scan of a whole collection) then refuses instead."""
    return _ON_LOOP.get()


def start_fresh() -> None:
    """Forget any unit this context inherited; call at the start of every request.

    Contexts leak between requests: uvicorn creates a connection's next request task in
    whatever context last re-armed its socket reader (flow control resumes reading from
    inside a request), so a new request can inherit the previous one's unit.
    """
    _UNIT.set(None)


class Storage:
    """Thread-local SQLite connections to ``<data_dir>/ekodb.sqlite3``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / DB_FILE
        data_dir.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._spare: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._schemas: list[str] = []
        self._closed = False
        with _GLOBAL_LOCK:
            schemas = list(_GLOBAL_SCHEMAS)
        for sql in schemas:
            self.ensure_schema(sql)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,  # we issue BEGIN ourselves
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            self._all.append(conn)
        return conn

    @contextmanager
    def nowait(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... COMMIT for an event loop: never waits, never fsyncs.

        Raises :class:`WouldWait` (having done nothing) when another connection holds the
        write lock; a loop must not block on it (the holder may be a request of this very
        loop). The COMMIT is ``synchronous=NORMAL``, as ``transaction(durable=False)``. Not
        joinable by, nor part of, a :class:`Unit`.

        It runs on a connection of the units' pool, the one a unit takes next: a connection
        re-reads every page it caches once another connection has committed, so a claim and
        the write after it on one connection save ~30 page reads (syscalls) per request.
        """
        conn = self._lease()
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            _begin_nowait(conn)  # busy timeout and FULL come back in _settle_lease
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError) and is_busy(exc):
                    raise WouldWait from None
                raise
        finally:
            self._settle_lease(conn)

    def _settle_lease(self, conn: sqlite3.Connection) -> None:
        """Back to the pool's settings (busy timeout, FULL), or closed if it cannot be."""
        try:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error:
            with suppress(sqlite3.Error):
                conn.close()
            return
        self._give_back(conn)

    def _lease(self) -> sqlite3.Connection:
        """A connection for a unit (not tied to a thread: a unit moves between threads)."""
        if self._closed:
            raise RuntimeError("storage is closed")
        with self._lock:
            if self._spare:
                return self._spare.pop()
        return self._connect()

    def _give_back(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if not self._closed:
                self._spare.append(conn)

    def _unit(self) -> Unit | None:
        unit = _UNIT.get()
        return unit if unit is not None and unit.active and unit._storage is self else None

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection for reads: the current unit's once it wrote (to see its own
        uncommitted writes), else this thread's (opened lazily)."""
        if self._closed:
            raise RuntimeError("storage is closed")
        unit = self._unit()
        if unit is not None and unit.conn is not None:
            return unit.conn
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            self._local.depth = 0
            self._local.effects = None
        return conn

    def ensure_schema(self, sql: str) -> None:
        """Run DDL now and remember it (for modules created after the storage opened)."""
        self.conn.executescript(sql)
        with self._lock:
            self._schemas.append(sql)

    @contextmanager
    def unit(self) -> Iterator[Unit]:
        """Hold every transaction in this context (and the threads it starts) in one unit.

        Leaving the block stops new transactions from joining; the caller must then
        ``commit()`` or ``rollback()`` it.
        """
        unit = Unit(self)
        token = _UNIT.set(unit)
        try:
            yield unit
        finally:
            _UNIT.reset(token)
            unit.active = False  # a context copied meanwhile must not join it later

    @contextmanager
    def on_loop(self) -> Iterator[None]:
        """Run the current unit's writes right here, on the event loop, or refuse.

        A small keyed write costs less on the loop than its hop to a worker thread and
        back; its unit's COMMIT runs on the loop anyway. Nothing may wait there: taking the
        write lock raises :class:`WouldWait` when another connection holds it, and code that
        checks :func:`on_loop` refuses long work. A refusal (any exception) rolls the unit's
        transaction back and releases the lock, so the caller simply runs the same call
        again from a thread, which begins afresh. It refuses at once without a unit (no
        Idempotency-Key: such a write's own COMMIT and fsync would run on the loop) and with
        a unit that already wrote (a refusal could not give back a lock it did not take).
        """
        unit = self._unit()
        if unit is None or unit.begun:
            raise WouldWait
        token = _ON_LOOP.set(True)
        try:
            yield
        except BaseException:
            unit._unbegin()
            raise
        finally:
            _ON_LOOP.reset(token)

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... COMMIT; nested use joins the outer transaction.

        Inside a unit it is a savepoint of the unit's transaction instead.
        ``durable=False`` (an outermost transaction only): COMMIT without the fsync
        (``synchronous=NORMAL``), for writes that may be lost in a power cut without
        harm; they still survive a killed process, and the next durable COMMIT on the
        database syncs them with its own (the WAL is appended in order).
        """
        unit = self._unit()
        if unit is not None:
            with unit._join() as conn:
                yield conn
            return
        conn = self.conn
        depth: int = self._local.depth
        if depth:
            self._local.depth = depth + 1
            try:
                yield conn
            finally:
                self._local.depth = depth
            return
        if not durable:
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        effects = _Effects()
        self._local.depth, self._local.effects = 1, effects
        try:
            yield conn
            # a failed COMMIT (SQLITE_FULL on a full disk) leaves the transaction open,
            # holding the write lock: roll it back below like any failure
            conn.execute("COMMIT")
        except BaseException:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            _run_all(effects.rolled_back, "a rollback")
            raise
        finally:
            self._local.depth, self._local.effects = 0, None
            if not durable:
                self._restore_full(conn)
        _run_all(effects.committed, "a commit")

    def _restore_full(self, conn: sqlite3.Connection) -> None:
        """Back to ``synchronous=FULL``; a connection that cannot be is never used again
        (every later COMMIT on it would skip the fsync)."""
        try:
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error:
            self._local.conn = None
            with suppress(sqlite3.Error):
                conn.close()

    def _effects_now(self) -> _Effects:
        unit = self._unit()
        if unit is not None:
            return unit._effects_now()
        effects: _Effects | None = getattr(self._local, "effects", None)
        if effects is None:
            raise RuntimeError("after_commit/on_rollback outside a transaction")
        return effects

    def after_commit(self, callback: Callback, *, quick: bool = False) -> None:
        """Run ``callback`` once the current transaction is durably committed (dropped if
        it rolls back). For effects others may observe: wake-ups, unlinking replaced files.
        ``quick``: it never blocks nor does I/O (a wake-up), so it may run on the loop."""
        self._effects_now().committed.append(_Quick(callback) if quick else callback)

    def on_rollback(self, callback: Callback) -> None:
        """Run ``callback`` if the current transaction rolls back (undo outside SQLite)."""
        self._effects_now().rolled_back.append(callback)

    def close(self) -> None:
        """Close every connection (any thread's); further use raises."""
        self._closed = True
        with self._lock:
            conns, self._all, self._spare = self._all, [], []
        for conn in conns:
            with suppress(sqlite3.Error):
                conn.close()
