"""Record changes, published by the DataStore and consumed by the DataBus (framework-free).

Listeners are called twice per write. ``in_transaction`` runs inside the DataStore's write
transaction with its connection, so an event row commits or rolls back with the record that
caused it: a crash can never keep one without the other. ``committed`` runs after the
commit, for wake-ups (WebSocket pushes) that must not fire for a write that rolled back.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Operation = Literal["insert", "update", "delete"]


@dataclass(frozen=True, slots=True)
class Change:
    """One record changed. ``record`` is its full content now (None after a delete)."""

    collection: str
    record_id: str
    operation: Operation
    record: Mapping[str, Any] | None
    key_id: str
    time: float


InTransaction = Callable[[Sequence[Change], sqlite3.Connection], None]
Committed = Callable[[Sequence[Change]], None]


class ChangeFeed:
    """Fan-out of DataStore changes to whoever registered (the DataBus)."""

    def __init__(self) -> None:
        self._in_tx: list[InTransaction] = []
        self._committed: list[Committed] = []
        self._lock = threading.Lock()

    def listen(self, *, in_transaction: InTransaction | None = None,
               committed: Committed | None = None) -> None:
        with self._lock:
            if in_transaction is not None:
                self._in_tx.append(in_transaction)
            if committed is not None:
                self._committed.append(committed)

    def publish_in_transaction(self, changes: Sequence[Change],
                               conn: sqlite3.Connection) -> None:
        """Call from inside the write transaction, before COMMIT."""
        if changes:
            for listener in list(self._in_tx):
                listener(changes, conn)

    def publish_committed(self, changes: Sequence[Change]) -> None:
        """Call after COMMIT succeeded."""
        if changes:
            for listener in list(self._committed):
                listener(changes)
