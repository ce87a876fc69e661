"""The ``consume()`` worker loop: one sans-I/O core, a thread driver and a task driver.

:class:`ConsumerCore` makes every decision — when to poll and for how many, which claims to
renew (every ``claim_ttl / 3`` while a handler runs), what to ack, how to count and log —
without doing any I/O or waiting. :func:`run_sync` (handlers in a thread pool) and
:func:`run_async` (handlers as tasks) only make the calls, start handlers and wait, so the two
cannot drift apart. The driver is the only caller of the service: handlers never see a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from ._call import Call
from ._compat import ASYNC_TIMEOUTS
from .errors import EkoError, InvalidArgumentError, RateLimitError, ServerError, TransportError
from .models import AckResult, ConsumeStats, Message, RenewResult

logger = logging.getLogger("ekoclient.queue")

PollBuilder = Callable[[int], Call[list[Message]]]
IdsBuilder = Callable[[list[str]], Call[Any]]


def _transient(exc: BaseException) -> bool:
    """Errors worth waiting out (the executor already retried them): keep the loop alive."""
    return isinstance(exc, (TransportError, ServerError, RateLimitError))


class ConsumerCore:
    """Decisions of one consume() run; the driver feeds it answers and the clock."""

    def __init__(self, *, poll: PollBuilder, ack: IdsBuilder, renew: IdsBuilder,
                 queue: str, claim_ttl: float, limit: int, concurrency: int,
                 poll_interval: float, max_messages: int | None) -> None:
        for name, value in (("claim_ttl", claim_ttl), ("poll_interval", poll_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidArgumentError(f"{name} must be a positive number, got {value!r}")
        for name, count in (("limit", limit), ("concurrency", concurrency),
                            ("max_messages", 1 if max_messages is None else max_messages)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {count!r}")
        self._poll, self._ack, self._renew = poll, ack, renew
        self.queue = queue
        self.claim_ttl = float(claim_ttl)
        self.limit = limit
        self.concurrency = concurrency
        self.poll_interval = float(poll_interval)
        self.renew_every = self.claim_ttl / 3
        self._budget = max_messages
        self._jobs: dict[str, float] = {}  # claim id → when to renew it next
        self._lost: set[str] = set()
        self._to_ack: list[str] = []
        self._next_poll = 0.0
        self._asked = 0
        self._stopping = False
        self._acked = self._failed = self._lost_count = self._polls = 0

    # -------------------------------------------------------------- state

    def stop(self) -> None:
        """Poll no more; the run ends once the handlers running now are done."""
        self._stopping = True

    @property
    def done(self) -> bool:
        return self._stopping and not self._jobs and not self._to_ack

    @property
    def stats(self) -> ConsumeStats:
        return ConsumeStats(acked=self._acked, failed=self._failed, lost=self._lost_count,
                            polls=self._polls)

    def wait_time(self, now: float) -> float:
        """How long the driver may wait for a handler before something else is due."""
        due = [*self._jobs.values(), now + self.poll_interval]
        if not self._stopping and len(self._jobs) < self.concurrency:
            due.append(self._next_poll)
        return max(0.0, min(due) - now)

    # -------------------------------------------------------------- polling

    def poll_call(self, now: float) -> Call[list[Message]] | None:
        if self._stopping or now < self._next_poll:
            return None
        wanted = min(self.limit, self.concurrency - len(self._jobs))
        if self._budget is not None:
            if self._budget <= 0:
                self.stop()
                return None
            wanted = min(wanted, self._budget)
        if wanted <= 0:
            return None
        self._asked = wanted
        return self._poll(wanted)

    def polled(self, messages: list[Message], now: float) -> list[Message]:
        """Register claimed messages; returns those to hand to the handler."""
        self._polls += 1
        # a short answer means the queue is drained for now: wait before asking again
        self._next_poll = now + self.poll_interval if len(messages) < self._asked else now
        for message in messages:
            self._jobs[message.id] = now + self.renew_every
        if self._budget is not None:
            self._budget -= len(messages)
        return messages

    def poll_failed(self, exc: EkoError, now: float) -> None:
        if not _transient(exc):
            raise exc
        logger.warning("polling queue %r failed (%s); trying again in %gs", self.queue,
                       type(exc).__name__, self.poll_interval)
        self._next_poll = now + self.poll_interval

    # -------------------------------------------------------------- renewing

    def renew_call(self, now: float) -> Call[Any] | None:
        due = [i for i, at in self._jobs.items() if at <= now]
        if not due:
            return None
        for claim_id in due:
            self._jobs[claim_id] = now + self.renew_every
        return self._renew(due)

    def renewed(self, result: RenewResult) -> None:
        for claim_id in result.stale:
            if claim_id in self._jobs and claim_id not in self._lost:
                self._lost.add(claim_id)
                self._lost_count += 1
                self._jobs[claim_id] = math.inf  # nothing left to renew
                logger.warning("lost the claim on a message of queue %r while its handler "
                               "ran; it may be delivered again", self.queue)

    def renew_failed(self, exc: EkoError) -> None:
        logger.warning("renewing claims on queue %r failed (%s); will retry", self.queue,
                       type(exc).__name__)

    # -------------------------------------------------------------- finishing

    def finished(self, claim_id: str, error: BaseException | None) -> None:
        """A handler returned (error None) or raised."""
        self._jobs.pop(claim_id, None)
        if error is None:
            self._to_ack.append(claim_id)
            return
        self._failed += 1
        self._lost.discard(claim_id)
        logger.warning("handler failed on a message of queue %r; its claim is left to expire "
                       "so it is delivered again", self.queue, exc_info=error)

    def ack_call(self) -> tuple[list[str], Call[Any]] | None:
        if not self._to_ack:
            return None
        ids, self._to_ack = self._to_ack, []
        return ids, self._ack(ids)

    def acked(self, result: AckResult) -> None:
        self._acked += len(result.acked)
        for claim_id in result.stale:
            if claim_id in self._lost:
                self._lost.discard(claim_id)
                continue  # already counted when its renewal came back stale
            self._lost_count += 1
            logger.warning("ack on queue %r came too late: the claim had passed to another "
                           "consumer, so the message may be processed twice", self.queue)
        for claim_id in result.acked:
            self._lost.discard(claim_id)

    def ack_failed(self, ids: list[str], exc: EkoError) -> None:
        self._lost_count += len(ids)
        for claim_id in ids:
            self._lost.discard(claim_id)
        logger.warning("acking %d message(s) of queue %r failed (%s); they will be delivered "
                       "again", len(ids), self.queue, type(exc).__name__)


# ---------------------------------------------------------------------- drivers

SyncExecute = Callable[[Call[Any]], Any]
AsyncExecute = Callable[[Call[Any]], Awaitable[Any]]


def _sync_io(core: ConsumerCore, execute: SyncExecute, now: Callable[[], float]
             ) -> list[Message]:
    """Poll and renew as due; returns messages to start."""
    started: list[Message] = []
    call = core.poll_call(now())
    if call is not None:
        try:
            started = core.polled(execute(call), now())
        except EkoError as exc:
            core.poll_failed(exc, now())
    renew = core.renew_call(now())
    if renew is not None:
        try:
            core.renewed(execute(renew))
        except EkoError as exc:
            core.renew_failed(exc)
    return started


def run_sync(core: ConsumerCore, execute: SyncExecute, handler: Callable[[Message], object],
             stop_event: threading.Event | None) -> ConsumeStats:
    """Handlers run in a pool of ``concurrency`` threads; this thread does every call."""
    clock = time.monotonic
    running: dict[Future[object], str] = {}
    with ThreadPoolExecutor(core.concurrency, thread_name_prefix="ekoclient-consume") as pool:
        while True:
            if stop_event is not None and stop_event.is_set():
                core.stop()
            for message in _sync_io(core, execute, clock):
                running[pool.submit(handler, message)] = message.id
            pending = core.ack_call()
            if pending is not None:
                try:
                    core.acked(execute(pending[1]))
                except EkoError as exc:
                    core.ack_failed(pending[0], exc)
            if core.done:
                return core.stats
            timeout = core.wait_time(clock())
            if running:
                finished, _ = wait(running, timeout, FIRST_COMPLETED)
                for future in finished:
                    core.finished(running.pop(future), future.exception())
            elif stop_event is not None:
                stop_event.wait(timeout)
            else:
                time.sleep(timeout)


async def _call_handler(handler: Callable[[Message], Any], message: Message) -> None:
    if inspect.iscoroutinefunction(handler):
        await handler(message)
        return
    result = await asyncio.to_thread(handler, message)  # a plain function must not block us
    if inspect.isawaitable(result):
        await result


async def run_async(core: ConsumerCore, execute: AsyncExecute,
                    handler: Callable[[Message], Any],
                    stop_event: asyncio.Event | None) -> ConsumeStats:
    """Handlers run as tasks (plain functions in worker threads); this task does every call."""
    clock = asyncio.get_running_loop().time
    running: dict[asyncio.Task[None], str] = {}
    try:
        while True:
            if stop_event is not None and stop_event.is_set():
                core.stop()
            call = core.poll_call(clock())
            if call is not None:
                try:
                    for message in core.polled(await execute(call), clock()):
                        running[asyncio.ensure_future(_call_handler(handler, message))] = (
                            message.id)
                except EkoError as exc:
                    core.poll_failed(exc, clock())
            renew = core.renew_call(clock())
            if renew is not None:
                try:
                    core.renewed(await execute(renew))
                except EkoError as exc:
                    core.renew_failed(exc)
            pending = core.ack_call()
            if pending is not None:
                try:
                    core.acked(await execute(pending[1]))
                except EkoError as exc:
                    core.ack_failed(pending[0], exc)
            if core.done:
                return core.stats
            timeout = core.wait_time(clock())
            if running:
                finished, _ = await asyncio.wait(running, timeout=timeout,
                                                 return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    error = None if task.cancelled() else task.exception()
                    core.finished(running.pop(task), error)
            elif stop_event is not None:
                with contextlib.suppress(*ASYNC_TIMEOUTS):
                    await asyncio.wait_for(stop_event.wait(), timeout)
            else:
                await asyncio.sleep(timeout)
    finally:
        # cancelled or failed: stop the handlers; their claims expire and they come back
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
