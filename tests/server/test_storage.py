"""Storage transactions and units (one transaction held across a request), without HTTP."""

from __future__ import annotations

import contextvars
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mock_server.storage import Storage, WouldWait, register_schema

register_schema("CREATE TABLE IF NOT EXISTS t_items (name TEXT PRIMARY KEY);")


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    s = Storage(tmp_path)
    try:
        yield s
    finally:
        s.close()


def add(storage: Storage, name: str) -> None:
    with storage.transaction() as conn:
        conn.execute("INSERT INTO t_items(name) VALUES (?)", (name,))


def committed(path: Path) -> list[str]:
    """What another process would see: a fresh connection of its own."""
    conn = sqlite3.connect(path / "ekodb.sqlite3")
    try:
        return sorted(r[0] for r in conn.execute("SELECT name FROM t_items"))
    finally:
        conn.close()


def in_thread(fn: Callable[[], object]) -> None:
    """Run in another thread with this context, as the threadpool runs a request's work."""
    ctx = contextvars.copy_context()
    t = threading.Thread(target=ctx.run, args=(fn,))
    t.start()
    t.join()


def test_a_units_writes_stay_invisible_until_it_commits_with_its_last_step(
        storage: Storage, tmp_path: Path) -> None:
    with storage.unit() as unit:
        in_thread(lambda: add(storage, "a"))
        add(storage, "b")
        # the request sees its own writes; nobody else does
        assert [r[0] for r in storage.conn.execute("SELECT name FROM t_items ORDER BY name")] \
            == ["a", "b"]
        assert committed(tmp_path) == []
    assert unit.begun

    def last(conn: sqlite3.Connection) -> bool:
        conn.execute("INSERT INTO t_items(name) VALUES ('answer')")
        return True

    assert unit.commit(last)
    assert committed(tmp_path) == ["a", "answer", "b"]


def test_a_unit_whose_last_step_declines_keeps_nothing(storage: Storage, tmp_path: Path) -> None:
    with storage.unit() as unit:
        add(storage, "a")
    assert unit.commit(lambda conn: False) is False
    assert committed(tmp_path) == []


def test_rolling_back_a_unit_undoes_every_write_and_runs_its_undo_callbacks(
        storage: Storage, tmp_path: Path) -> None:
    events: list[str] = []
    with storage.unit() as unit, storage.transaction():
        add(storage, "a")
        storage.after_commit(lambda: events.append("committed"))
        storage.on_rollback(lambda: events.append("undone"))
    assert events == []  # nothing happens at the end of the `with`: the unit still holds it
    unit.rollback()
    assert committed(tmp_path) == []
    assert events == []  # callbacks wait for settle(), so a caller can run them off its loop
    unit.settle()
    assert events == ["undone"]


def test_a_failing_transaction_in_a_unit_undoes_only_its_own_writes(
        storage: Storage, tmp_path: Path) -> None:
    events: list[str] = []
    with storage.unit() as unit:
        add(storage, "kept")
        with pytest.raises(sqlite3.IntegrityError), storage.transaction() as conn:
            storage.on_rollback(lambda: events.append("undone"))
            conn.execute("INSERT INTO t_items(name) VALUES ('partial')")
            conn.execute("INSERT INTO t_items(name) VALUES ('kept')")  # duplicate: fails
        assert events == ["undone"]
    assert unit.commit()
    assert committed(tmp_path) == ["kept"]


def test_after_commit_callbacks_wait_for_the_real_commit(storage: Storage, tmp_path: Path
                                                         ) -> None:
    seen: list[list[str]] = []
    with storage.unit() as unit, storage.transaction():
        add(storage, "a")
        storage.after_commit(lambda: seen.append(committed(tmp_path)))
    assert seen == []
    unit.commit()
    unit.settle()
    assert seen == [["a"]]


def test_plain_transactions_run_their_callbacks_at_commit_or_rollback(storage: Storage) -> None:
    events: list[str] = []
    with storage.transaction():
        storage.after_commit(lambda: events.append("committed"))
        storage.on_rollback(lambda: events.append("never"))
    with pytest.raises(RuntimeError, match="boom"), storage.transaction():
        storage.after_commit(lambda: events.append("never"))
        storage.on_rollback(lambda: events.append("undone"))
        raise RuntimeError("boom")
    assert events == ["committed", "undone"]
    with pytest.raises(RuntimeError, match="outside a transaction"):
        storage.after_commit(lambda: None)


def count(storage: Storage) -> int:
    row = storage.conn.execute("SELECT COUNT(*) FROM t_items").fetchone()
    return int(row[0])


def test_a_context_copied_from_a_unit_does_not_join_it_once_its_block_ends(
        storage: Storage, tmp_path: Path) -> None:
    """A context can outlive its request (uvicorn may start the next request in it)."""
    with storage.unit() as unit:
        add(storage, "first")
        leaked = contextvars.copy_context()
        assert leaked.run(count, storage) == 1  # inside the block: part of the unit
    # the block is over but the unit still holds its write: the copy no longer sees it
    assert leaked.run(count, storage) == 0
    unit.commit()
    leaked.run(add, storage, "later")  # runs and commits on its own
    assert committed(tmp_path) == ["first", "later"]


def test_a_unit_that_wrote_nothing_takes_no_lock(storage: Storage, tmp_path: Path) -> None:
    with storage.unit() as unit:
        assert storage.conn.execute("SELECT COUNT(*) FROM t_items").fetchone() == (0,)
    assert not unit.begun
    add(storage, "free")  # not blocked by the unit
    assert unit.commit(lambda conn: False)  # nothing to commit: the last step is not run
    assert committed(tmp_path) == ["free"]


def test_a_commit_without_fsync_commits_and_leaves_the_connection_fully_durable(
        storage: Storage, tmp_path: Path) -> None:
    """The idempotency claim skips its fsync; every later COMMIT must not."""
    with storage.transaction(durable=False) as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        conn.execute("INSERT INTO t_items(name) VALUES ('claim')")
    assert committed(tmp_path) == ["claim"]
    assert storage.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
    with pytest.raises(RuntimeError), storage.transaction(durable=False) as conn:
        conn.execute("INSERT INTO t_items(name) VALUES ('undone')")
        raise RuntimeError
    assert committed(tmp_path) == ["claim"]
    assert storage.conn.execute("PRAGMA synchronous").fetchone()[0] == 2


@pytest.mark.parametrize("kinds", [(True,), (True, False)])
def test_a_unit_says_whether_its_due_callbacks_may_run_on_an_event_loop(
        storage: Storage, kinds: tuple[bool, ...]) -> None:
    """Wake-ups (quick) may run on the loop; anything else (file unlinks) needs a thread."""
    seen: list[bool] = []
    with storage.unit() as unit, storage.transaction():
        add(storage, f"q{len(kinds)}")
        for quick in kinds:
            storage.after_commit(lambda q=quick: seen.append(q), quick=quick)
    unit.commit()
    assert unit.due and unit.due_quick == all(kinds)
    unit.settle()
    assert seen == list(kinds) and not unit.due


def test_a_nowait_transaction_refuses_at_once_while_another_connection_writes(
        storage: Storage, tmp_path: Path) -> None:
    """For the event loop: it must never block on the write lock (its holder may need the
    loop to finish), so it says WouldWait, having done nothing, and works once it is free."""
    other = sqlite3.connect(tmp_path / "ekodb.sqlite3", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(WouldWait), storage.nowait() as conn:
            conn.execute("INSERT INTO t_items(name) VALUES ('blocked')")
        assert time.monotonic() - started < 1.0  # not SQLite's 30 s busy timeout
        other.execute("ROLLBACK")
    finally:
        other.close()
    with storage.nowait() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL: a claim
        conn.execute("INSERT INTO t_items(name) VALUES ('claimed')")
    with pytest.raises(RuntimeError), storage.nowait() as conn:
        conn.execute("INSERT INTO t_items(name) VALUES ('undone')")
        raise RuntimeError
    assert committed(tmp_path) == ["claimed"]
    # its connection goes back to the units' pool as it came: the unit that takes it
    # next commits with its fsync, and waits for the lock like any writer
    with storage.unit() as unit:
        add(storage, "durable")
        assert unit.conn is not None
        assert unit.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert unit.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    assert unit.commit()
    assert committed(tmp_path) == ["claimed", "durable"]


def test_a_unit_on_the_loop_refuses_to_wait_for_the_write_lock(storage: Storage,
                                                                tmp_path: Path) -> None:
    """A keyed write tried on the event loop must never block it: with the lock held
    elsewhere it says WouldWait, having taken nothing, and the same unit then writes (from
    a thread, in the server) once the lock is free, with its usual busy timeout."""
    other = sqlite3.connect(tmp_path / "ekodb.sqlite3", isolation_level=None)
    with storage.unit() as unit:
        try:
            other.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            with pytest.raises(WouldWait), storage.on_loop():
                add(storage, "blocked")
            assert time.monotonic() - started < 1.0  # not SQLite's 30 s busy timeout
            assert not unit.begun
            other.execute("ROLLBACK")
        finally:
            other.close()
        add(storage, "written")
        assert unit.conn is not None
        assert unit.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    assert unit.commit()
    assert committed(tmp_path) == ["written"]


def test_a_refusal_on_the_loop_gives_the_lock_back_and_undoes_the_attempt(
        storage: Storage, tmp_path: Path) -> None:
    """Long work refused on the loop after the attempt took the write lock (a whole-
    collection scan raises inside the transaction) leaves nothing of it and releases the
    lock at once: the retry waits for a worker thread, and writers queued on the lock may
    hold every one of them. The retry then begins afresh and commits once."""
    class Refused(Exception):
        pass

    undone: list[str] = []
    other = sqlite3.connect(tmp_path / "ekodb.sqlite3", isolation_level=None, timeout=0)
    try:
        with storage.unit() as unit:
            with pytest.raises(Refused), storage.on_loop():
                with storage.transaction() as conn:  # a first step that succeeds...
                    conn.execute("INSERT INTO t_items(name) VALUES ('first step')")
                    storage.on_rollback(lambda: undone.append("first step"))
                with storage.transaction() as conn:  # ...then a refusal
                    conn.execute("INSERT INTO t_items(name) VALUES ('attempt')")
                    raise Refused
            assert not unit.begun and undone == ["first step"]
            other.execute("BEGIN IMMEDIATE")  # the lock is free: no wait (timeout=0)
            other.execute("ROLLBACK")
            add(storage, "attempt")
        assert unit.commit()
    finally:
        other.close()
    assert committed(tmp_path) == ["attempt"]


def test_on_loop_refuses_a_unit_that_already_wrote(storage: Storage) -> None:
    """A refusal could not give back a lock the attempt did not take: refused up front."""
    with storage.unit() as unit:
        add(storage, "earlier")
        with pytest.raises(WouldWait), storage.on_loop():
            pass
        assert unit.begun
    assert unit.commit()


def test_on_loop_refuses_a_write_outside_a_unit(storage: Storage) -> None:
    """Without a unit the write's own COMMIT and fsync would run on the loop: refused."""
    with pytest.raises(WouldWait), storage.on_loop():
        pass
