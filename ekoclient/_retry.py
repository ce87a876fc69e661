"""When to try a call again, and how long to wait first.

The waits and stops are tenacity's own strategies (exponential backoff with "equal" jitter, a
cap on attempts and on elapsed time). They are driven from the executors' sans-I/O loop instead
of wrapping each call in ``tenacity.Retrying``: the sync and async executors share one policy,
and a call that succeeds first time never builds any retry state.

Equal jitter (half of each wait fixed, half random) rather than full jitter: with full jitter
the waits may all come out near zero, so how long a call keeps trying through a restart is
luck. With the defaults (8 attempts, 0.1 s doubling to 2 s) the seven waits add up to at least
3.55 s and 7.1 s on average: a restart of a few seconds costs an idempotent call nothing.
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Mapping

import tenacity

RETRYABLE_STATUSES = frozenset({408, 429, 502, 503, 504})


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


class RetryBudget:
    """Shared by all calls of a client, so a dead host does not multiply traffic.

    Each retry spends one token; each success earns ``ratio`` back, and ``per_second`` more
    trickle in with time. When every call fails, retries are bounded by the trickle instead
    of growing with the number of callers.
    """

    def __init__(self, *, capacity: float = 100.0, ratio: float = 0.2,
                 per_second: float = 10.0) -> None:
        self._capacity = capacity
        self._ratio = ratio
        self._per_second = per_second
        self._balance = capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def deposit(self) -> None:
        """Credit a success. Racy on purpose: a lost update only shifts a soft bound."""
        balance = self._balance + self._ratio
        self._balance = balance if balance < self._capacity else self._capacity

    def withdraw(self) -> bool:
        """Take one retry token; False when the budget is spent."""
        with self._lock:
            now = time.monotonic()
            balance = self._balance + (now - self._stamp) * self._per_second
            self._stamp = now
            balance = min(balance, self._capacity)
            if balance < 1.0:
                self._balance = balance
                return False
            self._balance = balance - 1.0
            return True

    @property
    def balance(self) -> float:
        return self._balance

    @property
    def capacity(self) -> float:
        return self._capacity

    @property
    def per_second(self) -> float:
        return self._per_second

    @property
    def ratio(self) -> float:
        return self._ratio


class RetryPolicy:
    """Exponential backoff with full jitter, bounded by attempts, elapsed time and budget."""

    def __init__(
        self,
        *,
        max_attempts: int = 8,
        initial: float = 0.1,
        maximum: float = 2.0,
        max_elapsed: float = 30.0,
        retry_after_cap: float = 60.0,
        budget: RetryBudget | None = None,
    ) -> None:
        self.max_attempts = max_attempts
        self.retry_after_cap = retry_after_cap
        self.max_elapsed = max_elapsed
        self.budget = budget or RetryBudget()
        half, half_max = initial / 2, maximum / 2
        self._wait = (tenacity.wait_exponential(multiplier=half, max=half_max)
                      + tenacity.wait_random_exponential(multiplier=half, max=half_max))
        self._stop = tenacity.stop_after_attempt(max_attempts) | tenacity.stop_before_delay(
            max_elapsed
        )

    def start(self, started: float) -> RetryState:
        return RetryState(self, started)


class RetryState:
    """The retry bookkeeping of one call; tenacity's call state is made on first failure."""

    __slots__ = ("_policy", "_started", "_tstate", "stopped_by")

    def __init__(self, policy: RetryPolicy, started: float) -> None:
        self._policy = policy
        self._started = started
        self._tstate: tenacity.RetryCallState | None = None
        #: Why retrying stopped, in words (None while it has not).
        self.stopped_by: str | None = None

    @property
    def attempt(self) -> int:
        return 1 if self._tstate is None else self._tstate.attempt_number

    def remaining(self, now: float) -> float:
        """Seconds left of ``max_elapsed``: the bound for the attempt about to start."""
        return self._started + self._policy.max_elapsed - now

    def gave_up(self) -> str:
        """"gave up after N attempt(s) in Xs: <why>" for error messages."""
        elapsed = time.monotonic() - self._started
        return (f"gave up after {self.attempt} attempt(s) in {elapsed:.1f}s: "
                f"{self.stopped_by or 'the error is not retried'}")

    def next_delay(self, retry_after: float | None = None) -> float | None:
        """Seconds to sleep before the next attempt, or None to give up now."""
        policy = self._policy
        if retry_after is not None and retry_after > policy.retry_after_cap:
            self.stopped_by = (f"the service asked to wait {retry_after:g}s, more than "
                               f"retry_after_cap={policy.retry_after_cap:g}s")
            return None
        state = self._tstate
        if state is None:
            state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
            state.start_time = self._started
            self._tstate = state
        state.outcome_timestamp = time.monotonic()
        delay = policy._wait(state)
        if retry_after is not None and retry_after > delay:
            delay = retry_after
        state.upcoming_sleep = delay
        if state.attempt_number >= policy.max_attempts:
            self.stopped_by = f"max_attempts={policy.max_attempts} reached"
            return None
        if policy._stop(state):
            self.stopped_by = (f"the next wait would pass max_elapsed="
                               f"{policy.max_elapsed:g}s")
            return None
        if not policy.budget.withdraw():
            b = policy.budget
            self.stopped_by = (f"the client's retry budget is spent (it holds "
                               f"{b.capacity:g} retries, refilled by {b.per_second:g}/s and "
                               f"{b.ratio:g} per success; set retry={{'budget_capacity': ...}} "
                               f"to allow more)")
            return None
        state.attempt_number += 1
        return delay


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    return parse_retry_after(headers.get("retry-after"))
