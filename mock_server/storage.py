"""SQLite storage shared by every service module.

Durability choice: WAL mode with ``synchronous=FULL``. In WAL mode FULL fsyncs the WAL on every
commit, so a write acknowledged to a client survives SIGKILL and power loss; NORMAL would only
survive a process crash. The cost is one fsync per commit, acceptable for a reference server.

Several server processes may share one data dir: all authoritative state lives in the
database, each thread has its own connection, and writers use ``BEGIN IMMEDIATE`` with a
busy timeout so they queue instead of failing.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

DB_FILE = "ekodb.sqlite3"
BUSY_TIMEOUT_MS = 30_000

_GLOBAL_SCHEMAS: list[str] = []
_GLOBAL_LOCK = threading.Lock()


def register_schema(sql: str) -> None:
    """Register DDL (use IF NOT EXISTS) run when any Storage opens; call at import time."""
    with _GLOBAL_LOCK:
        if sql not in _GLOBAL_SCHEMAS:
            _GLOBAL_SCHEMAS.append(sql)


class Storage:
    """Thread-local SQLite connections to ``<data_dir>/ekodb.sqlite3``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / DB_FILE
        data_dir.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
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

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened lazily)."""
        if self._closed:
            raise RuntimeError("storage is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            self._local.depth = 0
        return conn

    def ensure_schema(self, sql: str) -> None:
        """Run DDL now and remember it (for modules created after the storage opened)."""
        self.conn.executescript(sql)
        with self._lock:
            self._schemas.append(sql)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... COMMIT; nested use joins the outer transaction."""
        conn = self.conn
        depth: int = self._local.depth
        if depth:
            self._local.depth = depth + 1
            try:
                yield conn
            finally:
                self._local.depth = depth
            return
        conn.execute("BEGIN IMMEDIATE")
        self._local.depth = 1
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")
        finally:
            self._local.depth = 0

    def close(self) -> None:
        """Close every connection (any thread's); further use raises."""
        self._closed = True
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with suppress(sqlite3.Error):
                conn.close()
