"""The ``consume()`` worker loop: one sans-I/O core, a thread driver and a task driver.

:class:`ConsumerCore` makes every decision — when to poll and for how many, which claims to
renew (every ``claim_ttl / 3`` while a handler runs), what to ack, how to count and log —
without doing any I/O or waiting. :func:`run_sync` (handlers in a thread pool) and
:func:`run_async` (handlers as tasks) only make the calls, start handlers and wait, so the two
cannot drift apart. The driver is the only caller of the service: handlers never see a call.

Idle: once the queue is drained the next poll is a *long* poll (``wait`` seconds, held by the
server until a message arrives), so an idle worker costs one request per ``wait`` seconds, not
one per ``poll_interval``. A server that answers at once anyway (no long polls) and failing
polls are backed off, doubling up to :data:`MAX_IDLE`. The poll runs beside the handlers
(its own thread or task), so ``stop_event`` is honoured at once; a poll still held at that
moment is abandoned, and whatever it claims comes back when its claim expires.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from ._call import Call
from .errors import EkoError, InvalidArgumentError, RateLimitError, ServerError, TransportError
from .models import AckResult, ConsumeStats, Message, RenewResult

logger = logging.getLogger("ekoclient.queue")

PollBuilder = Callable[[int, float], Call[list[Any]]]
IdsBuilder = Callable[[list[str]], Call[Any]]

#: The longest an idle or failing worker waits between polls (seconds).
MAX_IDLE = 30.0
#: The longest a poll may be held by the server (its own limit).
MAX_WAIT = 20.0


def _transient(exc: BaseException) -> bool:
    """Errors worth waiting out (the executor already retried them): keep the loop alive."""
    return isinstance(exc, (TransportError, ServerError, RateLimitError))


class ConsumerCore:
    """Decisions of one consume() run; the driver feeds it answers and the clock."""

    def __init__(self, *, poll: PollBuilder, ack: IdsBuilder, renew: IdsBuilder,
                 queue: str, claim_ttl: float, limit: int, concurrency: int,
                 poll_interval: float, max_messages: int | None, wait: float = 5.0,
                 ident: Callable[[Any], str] = lambda m: str(m.id),
                 what: str = "queue") -> None:
        for name, value in (("claim_ttl", claim_ttl), ("poll_interval", poll_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidArgumentError(f"{name} must be a positive number, got {value!r}")
        if (isinstance(wait, bool) or not isinstance(wait, (int, float))
                or not 0 <= wait <= MAX_WAIT):
            raise InvalidArgumentError(f"wait must be between 0 and {MAX_WAIT:g} seconds, "
                                       f"got {wait!r}")
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
        self.wait = float(wait)
        self._ident = ident
        self._what = what
        self._idle = False  # the last poll found the queue drained: long-poll next
        self._backoff = self.poll_interval  # the next idle/error wait, doubling to MAX_IDLE
        self._polling: float | None = None  # when the poll in flight was sent
        self._long = False  # whether the poll in flight is a long poll
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
    def stopping(self) -> bool:
        return self._stopping

    def ident(self, message: Any) -> str:
        """The claim id of a polled item (``Message.id``, ``Event.key``)."""
        return self._ident(message)

    @property
    def done(self) -> bool:
        return self._stopping and not self._jobs and not self._to_ack

    @property
    def stats(self) -> ConsumeStats:
        return ConsumeStats(acked=self._acked, failed=self._failed, lost=self._lost_count,
                            polls=self._polls)

    @property
    def polling(self) -> bool:
        """Whether a poll is in flight (the drivers run it beside the handlers)."""
        return self._polling is not None

    def wait_time(self, now: float) -> float:
        """How long the driver may wait for a handler before something else is due."""
        due = [*self._jobs.values(), now + self.poll_interval]
        if not self._stopping and not self.polling and len(self._jobs) < self.concurrency:
            due.append(self._next_poll)
        return max(0.0, min(due) - now)

    # -------------------------------------------------------------- polling

    def poll_call(self, now: float) -> Call[list[Any]] | None:
        if self._stopping or self.polling or now < self._next_poll:
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
        self._long = self._idle and self.wait > 0
        self._polling = now
        return self._poll(wanted, self.wait if self._long else 0.0)

    def _idle_wait(self, now: float) -> None:
        self._next_poll = now + self._backoff
        self._backoff = min(self._backoff * 2, max(MAX_IDLE, self.poll_interval))

    def polled(self, messages: list[Any], now: float) -> list[Any]:
        """Register claimed messages; returns those to hand to the handler."""
        sent, self._polling = self._polling, None
        self._polls += 1
        if len(messages) >= self._asked:  # more may be waiting: ask again at once
            self._idle, self._next_poll = False, now
            self._backoff = self.poll_interval
        elif not self._idle or self.wait <= 0:
            self._idle = True  # drained: the next poll waits (long poll, or poll_interval)
            if self.wait > 0:
                self._next_poll = now
            else:
                self._idle_wait(now)
        elif messages or (sent is not None and now - sent >= self.wait / 2):
            self._next_poll = now  # the server held the poll: hold the next one at once
            self._backoff = self.poll_interval
        else:  # an empty long poll answered at once: this server does not hold polls
            self._idle_wait(now)
        for message in messages:
            self._jobs[self._ident(message)] = now + self.renew_every
        if self._budget is not None:
            self._budget -= len(messages)
        return messages

    def poll_failed(self, exc: EkoError, now: float) -> None:
        self._polling = None
        if not _transient(exc):
            raise exc
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, (int, float)) and retry_after > self._backoff:
            self._next_poll = now + float(retry_after)
        else:
            self._idle_wait(now)
        logger.warning("polling %s %r failed (%s); trying again in %.1fs", self._what,
                       self.queue, exc, self._next_poll - now)

    def poll_abandoned(self) -> None:
        """The driver stopped while a poll was held; what it claims comes back later."""
        self._polling = None

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


def _renew_due(core: ConsumerCore, execute: SyncExecute, now: float) -> None:
    renew = core.renew_call(now)
    if renew is not None:
        try:
            core.renewed(execute(renew))
        except EkoError as exc:
            core.renew_failed(exc)


def run_sync(core: ConsumerCore, execute: SyncExecute, handler: Callable[[Any], object],
             stop_event: threading.Event | None) -> ConsumeStats:
    """Handlers run in a pool of ``concurrency`` threads, the poll in one more thread (so a
    held poll never delays a stop); this thread makes every other call."""
    clock = time.monotonic
    running: dict[Future[object], str] = {}
    poll: Future[Any] | None = None
    poller = ThreadPoolExecutor(1, thread_name_prefix="ekoclient-poll")
    try:
        with ThreadPoolExecutor(core.concurrency,
                                thread_name_prefix="ekoclient-consume") as pool:
            while True:
                if stop_event is not None and stop_event.is_set():
                    core.stop()
                if poll is not None and poll.done():
                    try:
                        for message in core.polled(poll.result(), clock()):
                            running[pool.submit(handler, message)] = core.ident(message)
                    except EkoError as exc:
                        core.poll_failed(exc, clock())
                    poll = None
                if poll is None:
                    call = core.poll_call(clock())
                    if call is not None:
                        poll = poller.submit(execute, call)
                _renew_due(core, execute, clock())
                pending = core.ack_call()
                if pending is not None:
                    try:
                        core.acked(execute(pending[1]))
                    except EkoError as exc:
                        core.ack_failed(pending[0], exc)
                if core.done:
                    if poll is not None:
                        core.poll_abandoned()
                    return core.stats
                timeout = core.wait_time(clock())
                waiting: set[Future[Any]] = set(running)
                if poll is not None:
                    waiting.add(poll)
                if poll is not None and stop_event is not None and not core.stopping:
                    timeout = min(timeout, 0.05)  # a held poll must not delay a stop
                if waiting:
                    finished, _ = wait(waiting, timeout, FIRST_COMPLETED)
                    for future in finished:
                        if future is not poll:
                            core.finished(running.pop(future), future.exception())
                elif stop_event is not None:
                    stop_event.wait(timeout)
                else:
                    time.sleep(timeout)
    finally:
        poller.shutdown(wait=False)


async def _call_handler(handler: Callable[[Message], Any], message: Message) -> None:
    if inspect.iscoroutinefunction(handler):
        await handler(message)
        return
    result = await asyncio.to_thread(handler, message)  # a plain function must not block us
    if inspect.isawaitable(result):
        await result


async def run_async(core: ConsumerCore, execute: AsyncExecute,
                    handler: Callable[[Any], Any],
                    stop_event: asyncio.Event | None) -> ConsumeStats:
    """Handlers run as tasks (plain functions in worker threads), the poll as one more task
    (cancelled if a stop comes while it is held); this task makes every other call."""
    clock = asyncio.get_running_loop().time
    running: dict[asyncio.Task[None], str] = {}
    poll: asyncio.Task[Any] | None = None
    stopper: asyncio.Task[Any] | None = None
    if stop_event is not None:
        stopper = asyncio.ensure_future(stop_event.wait())
    try:
        while True:
            if stop_event is not None and stop_event.is_set():
                core.stop()
            if poll is not None and poll.done():
                try:
                    for message in core.polled(poll.result(), clock()):
                        running[asyncio.ensure_future(_call_handler(handler, message))] = (
                            core.ident(message))
                except EkoError as exc:
                    core.poll_failed(exc, clock())
                poll = None
            if poll is None:
                call = core.poll_call(clock())
                if call is not None:
                    poll = asyncio.ensure_future(execute(call))
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
                if poll is not None:
                    poll.cancel()
                    core.poll_abandoned()
                    poll = None
                return core.stats
            timeout = core.wait_time(clock())
            waiting: set[asyncio.Future[Any]] = set(running)
            if poll is not None:
                waiting.add(poll)
            if stopper is not None and not stopper.done():
                waiting.add(stopper)
            if waiting:
                finished, _ = await asyncio.wait(waiting, timeout=timeout,
                                                 return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    if task in running:
                        error = None if task.cancelled() else task.exception()
                        core.finished(running.pop(task), error)
            else:
                await asyncio.sleep(timeout)
    finally:
        # cancelled or failed: stop the handlers; their claims expire and they come back
        for task in running:
            task.cancel()
        for extra in (poll, stopper):
            if extra is not None:
                extra.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
