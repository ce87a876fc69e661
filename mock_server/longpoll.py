"""Long polls: hold an empty poll until something may have arrived or its wait ends.

Senders call :meth:`Wakeups.wake` (from any thread) after committing; a held poll wakes and
asks the store again. Wake-ups are hints, never data: a poll also looks again every
``RECHECK`` seconds, which covers what nobody announces (a claim expiring, a write by another
server process on the same data directory). Framework-free; routes pass their fetch in.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

T = TypeVar("T")
Waiter = Callable[[], None]

#: The longest a client may ask a poll to be held (seconds).
MAX_WAIT: Final = 20.0
#: How often a held poll looks again without a wake-up (seconds).
RECHECK: Final = 0.5


class Wakeups:
    """Per-name wake-ups from writer threads to held polls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, dict[int, Waiter]] = {}
        self._next = 0
        #: Set at server shutdown: held polls answer now instead of delaying the stop.
        self.closed = False

    def close(self) -> None:
        """Answer every held poll now (graceful shutdown waits for open requests)."""
        self.closed = True
        with self._lock:
            names = list(self._waiters)
        for name in names:
            self.wake(name)

    def add(self, name: str, waiter: Waiter) -> Callable[[], None]:
        """Call ``waiter`` on each wake of ``name``; returns the remover."""
        with self._lock:
            ident = self._next
            self._next += 1
            self._waiters.setdefault(name, {})[ident] = waiter

        def remove() -> None:
            with self._lock:
                waiters = self._waiters.get(name)
                if waiters is not None:
                    waiters.pop(ident, None)
                    if not waiters:
                        del self._waiters[name]

        return remove

    def wake(self, name: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(name, {}).values())
        for waiter in waiters:
            with contextlib.suppress(RuntimeError):  # its loop closed; removed on exit
                waiter()


async def long_poll(fetch: Callable[[], Awaitable[T]], empty: Callable[[T], bool],
                    subscribe: Callable[[Waiter], Callable[[], None]], wait: float,
                    wakeups: Wakeups) -> T:
    """``fetch()`` until it is not ``empty``, ``wait`` seconds have passed or the server
    stops. ``subscribe`` registers for the wake-ups of what is polled; ``wakeups`` is the
    server's, for its shutdown."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()

    def waiter() -> None:
        loop.call_soon_threadsafe(event.set)

    remove = subscribe(waiter)
    remove_shutdown = wakeups.add("", waiter)
    try:
        deadline = loop.time() + min(wait, MAX_WAIT)
        while True:
            event.clear()  # before fetching: a wake during the fetch is not lost
            result = await fetch()
            left = deadline - loop.time()
            if not empty(result) or left <= 0 or wakeups.closed:
                return result
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), min(left, RECHECK))
    finally:
        remove()
        remove_shutdown()
