"""Fault injection rules for tests (enabled only with ServerConfig.fault_injection).

"before" answers a status without running the handler; "after" runs the handler (the write
commits) and then replaces its answer, simulating a response lost after commit.
"hold_commit" keeps a finished Idempotency-Key write uncommitted (holding the write lock) for
``seconds`` and "hold_answer" sends a committed answer ``seconds`` late: the two moments a test
can SIGKILL a node at to check that every write is applied exactly once.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class FaultRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str = "*"
    path_prefix: str = Field(min_length=1, max_length=1000)
    when: Literal["before", "after", "hold_commit", "hold_answer"] = "before"
    status: int = Field(default=503, ge=400, le=599)
    count: int = Field(default=1, ge=1, le=1_000_000)
    #: How long a hold lasts.
    seconds: float = Field(default=5.0, gt=0, le=600)


class FaultRules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[FaultRule] = Field(max_length=100)


@dataclass
class _Active:
    rule: FaultRule
    remaining: int


class FaultInjector:
    """Thread-safe list of rules, each firing `count` times."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[_Active] = []
        self._holding = 0

    def set(self, rules: list[FaultRule]) -> None:
        with self._lock:
            self._rules = [_Active(r, r.count) for r in rules]

    def clear(self) -> None:
        with self._lock:
            self._rules = []

    def take(self, method: str, path: str) -> FaultRule | None:
        """Consume and return the first matching rule, if any."""
        with self._lock:
            for active in self._rules:
                rule = active.rule
                if active.remaining <= 0 or not path.startswith(rule.path_prefix):
                    continue
                if rule.method not in ("*", method.upper()):
                    continue
                active.remaining -= 1
                return rule
        return None

    async def hold(self, seconds: float) -> None:
        """Sleep, counted in :attr:`holding` meanwhile (so a test knows when to strike)."""
        with self._lock:
            self._holding += 1
        try:
            await asyncio.sleep(seconds)
        finally:
            with self._lock:
                self._holding -= 1

    @property
    def holding(self) -> int:
        with self._lock:
            return self._holding

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{**a.rule.model_dump(), "remaining": a.remaining} for a in self._rules]
