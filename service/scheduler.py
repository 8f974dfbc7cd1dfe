"""The scheduler: a bounded queue of segments and one engine loop doing continuous batching.

Request path: `translate()` / `stream()` put one ticket per segment in the queue (or fail at once
with QueueFullError / DrainingError) and await its updates. The engine loop runs in its own
thread, step after step, without a round trip through the event loop:

    plan = self._plan()              # drop cancelled, expire overdue, admit what fits
    result = self._runner.step(plan) # encode admitted ones together, one decoder step
    self._complete(result)           # record tokens, retire finished rows

so between two decoder steps finished rows leave and newly admitted segments join. Each step's
updates reach the waiting requests in one `call_soon_threadsafe` callback; the event loop only
does gRPC I/O and delivery. Queue and batch state are shared by both threads under one lock,
held for bookkeeping only, never across a step. A segment whose deadline passes in the queue fails
with QueueTimeoutError and never runs; a cancelled one leaves the queue, or the batch at the next
step. No onnxruntime import here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from service.errors import DrainingError, EngineError, QueueFullError, QueueTimeoutError
from service.metrics import Metrics
from service.types import (
    DecodingOptions,
    Hypothesis,
    Segment,
    SegmentJob,
    SegmentUpdate,
    StepPlan,
    StepResult,
)

log = logging.getLogger(__name__)

Delivery = tuple["_Ticket", SegmentUpdate | BaseException]  # made by the engine, put by the loop


class StepRunner(Protocol):
    """What the engine loop drives: `runner.Seq2SeqRunner`, or a fake in tests."""

    def step(self, plan: StepPlan) -> StepResult:
        """Apply the plan and run one decoder step; called from the engine thread."""
        ...

    def reset(self) -> None:
        """Forget every row; called after `step` raised."""
        ...


@dataclass(frozen=True)
class SchedulerLimits:
    """Admission limits (see settings.ServiceSettings for their meaning)."""

    max_active_rows: int
    max_tokens_in_flight: int
    max_queued: int
    queue_timeout_s: float
    admit_every_steps: int = 1  # segments join a running batch at most every N decoder steps


@dataclass(eq=False)
class _Ticket:
    """One segment from submission to its last update."""

    job: SegmentJob
    deadline: float  # monotonic; admission after it fails the segment with QueueTimeoutError
    streaming: bool  # deliver partial updates, not only the final one
    submitted: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    committed: int = 0
    finished: bool = False
    updates: asyncio.Queue[SegmentUpdate | BaseException] = field(default_factory=asyncio.Queue)


class BatchScheduler:
    """Queue, admission and the engine loop (in the "engine" thread).

    Args:
        runner: runs the steps, in the engine thread.
        limits: queue and batch limits.
        metrics: where queue, batch and token figures go.
    """

    def __init__(self, runner: StepRunner, limits: SchedulerLimits, metrics: Metrics) -> None:
        self._runner = runner
        self._limits = limits
        self._metrics = metrics
        self._lock = threading.Lock()  # guards everything below; never held across a step
        self._work = threading.Condition(self._lock)  # notified on submit, cancel and close
        self._queue: collections.deque[_Ticket] = collections.deque()
        self._active: dict[int, _Ticket] = {}  # seq_id -> ticket, admitted and not finished
        self._dropped: set[int] = set()  # active seq_ids cancelled since the last step
        self._rows = 0  # rows reserved by active segments
        self._tokens = 0  # token budget reserved by active segments
        self._steps_since_admission = 0
        self._outbox: list[Delivery] = []  # updates made by the engine, not yet handed over
        self._ids = itertools.count()
        self._accepting = False
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ended: asyncio.Event | None = None

    # -- lifecycle: start() at startup, open() once warm, drain() on SIGTERM, close() last --

    def start(self) -> None:
        """Start the engine thread; called once, inside the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._ended = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()

    def open(self) -> None:
        """Accept requests (after warm-up)."""
        with self._lock:
            self._accepting = True

    def drain(self) -> None:
        """Refuse new requests with DrainingError; queued and active ones still finish."""
        with self._lock:
            self._accepting = False

    @property
    def idle(self) -> bool:
        with self._lock:
            return not self._queue and not self._active

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def closing(self) -> bool:
        return self._closing

    async def stopped(self) -> None:
        """Returns when the engine loop has ended, normally or not."""
        if self._ended is not None:
            await self._ended.wait()

    async def close(self) -> None:
        """Stop the loop once idle (pending segments have been cancelled by then)."""
        with self._work:
            self._accepting = False
            self._closing = True
            self._work.notify()
        await self.stopped()

    # -- the request side, on the event loop --

    async def translate(
        self, segments: Sequence[Segment], time_left: float | None
    ) -> list[tuple[Hypothesis, ...]]:
        """Decode every segment; the hypotheses of each, in order.

        Args:
            segments: source ids and decoding options of each segment.
            time_left: seconds left before the client's deadline, or None.

        Raises:
            QueueFullError, DrainingError: at once. QueueTimeoutError: the deadline passed while
            queued. EngineError: the model failed.
        """
        tickets = self._submit(segments, time_left, streaming=False)
        try:
            return [await self._final(ticket) for ticket in tickets]
        finally:
            for ticket in tickets:
                self._cancel(ticket)

    async def stream(
        self, source: tuple[int, ...], options: DecodingOptions, time_left: float | None
    ) -> AsyncIterator[SegmentUpdate]:
        """Decode one source; yields an update whenever the committed prefix grows, then the
        final one (with hypotheses). Raises as `translate`."""
        (ticket,) = self._submit([(source, options)], time_left, streaming=True)
        try:
            while True:
                update = await self._next(ticket)
                yield update
                if update.hypotheses is not None:
                    return
        finally:
            self._cancel(ticket)

    def _submit(
        self, segments: Sequence[Segment], time_left: float | None, streaming: bool
    ) -> list[_Ticket]:
        wait = (
            self._limits.queue_timeout_s
            if time_left is None
            else min(time_left, self._limits.queue_timeout_s)
        )
        deadline = time.monotonic() + wait
        with self._work:
            if not self._accepting or not self.alive:
                raise DrainingError("the service is not accepting requests (starting or draining)")
            if len(self._queue) + len(segments) > self._limits.max_queued:
                raise QueueFullError(
                    f"queue full: {len(self._queue)} segments waiting, "
                    f"limit {self._limits.max_queued}"
                )
            tickets = [
                _Ticket(SegmentJob(next(self._ids), tuple(src), options), deadline, streaming)
                for src, options in segments
            ]
            self._queue.extend(tickets)
            self._metrics.queue_depth.set(len(self._queue))
            self._work.notify()
        return tickets

    async def _next(self, ticket: _Ticket) -> SegmentUpdate:
        item = await ticket.updates.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def _final(self, ticket: _Ticket) -> tuple[Hypothesis, ...]:
        while True:
            update = await self._next(ticket)
            if update.hypotheses is not None:
                return update.hypotheses

    def _cancel(self, ticket: _Ticket) -> None:
        """The waiter is gone: forget a queued ticket, drop an active one at the next step."""
        with self._work:
            if ticket.finished:
                return
            ticket.finished = True
            seq_id = ticket.job.seq_id
            if seq_id in self._active:
                self._dropped.add(seq_id)
                self._work.notify()
            else:
                with contextlib.suppress(ValueError):
                    self._queue.remove(ticket)
                self._metrics.queue_depth.set(len(self._queue))

    def _deliver(self, deliveries: list[Delivery]) -> None:
        """On the event loop: hand one step's updates to their waiters."""
        for ticket, item in deliveries:
            ticket.updates.put_nowait(item)

    # -- the engine side, in the engine thread --

    def _run(self) -> None:
        try:
            self._engine()
        except BaseException:
            log.exception("the engine loop crashed; failing every pending segment")
            with self._lock:
                self._fail_active(EngineError("the engine stopped while decoding this request"))
                for ticket in self._queue:
                    ticket.finished = True
                    self._outbox.append((ticket, EngineError("the engine stopped; not run")))
                self._queue.clear()
                self._flush()
        finally:
            assert self._loop is not None and self._ended is not None
            with contextlib.suppress(RuntimeError):  # the event loop is already closed
                self._loop.call_soon_threadsafe(self._ended.set)

    def _engine(self) -> None:
        while True:
            with self._work:
                plan = self._plan()
                while not (plan.admit or plan.drop or self._active):
                    if self._closing and not self._queue:
                        return
                    self._work.wait()
                    plan = self._plan()
            try:
                result = self._runner.step(plan)
            except Exception:
                log.exception("engine step failed; failing the segments in flight")
                self._runner.reset()
                with self._lock:
                    self._fail_active(EngineError("the model failed while decoding this request"))
                    self._flush()
                continue
            with self._lock:
                self._complete(result)
                self._flush()

    def _flush(self) -> None:
        """Hand the outbox to the event loop in one callback (lock held)."""
        if not self._outbox:
            return
        deliveries, self._outbox = self._outbox, []
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody waits
            self._loop.call_soon_threadsafe(self._deliver, deliveries)

    def _plan(self) -> StepPlan:
        """Release cancelled rows, expire overdue queued segments, admit what fits (FIFO)."""
        drop = frozenset(self._dropped)
        self._dropped.clear()
        for seq_id in drop:
            self._release(self._active.pop(seq_id))
        now = time.monotonic()
        self._expire_overdue(now)
        admit: list[SegmentJob] = []
        if not self._active or self._steps_since_admission >= self._limits.admit_every_steps:
            while self._queue and self._fits(self._queue[0].job):
                ticket = self._queue.popleft()
                self._admit(ticket, now)
                admit.append(ticket.job)
        if admit:
            self._steps_since_admission = 0
        self._flush()
        self._metrics.queue_depth.set(len(self._queue))
        self._metrics.active_rows.set(self._rows)
        return StepPlan(tuple(admit), drop)

    def _fits(self, job: SegmentJob) -> bool:
        if not self._active:
            return True  # validation keeps single jobs within the limits; never deadlock
        return (
            self._rows + job.rows <= self._limits.max_active_rows
            and self._tokens + job.token_budget <= self._limits.max_tokens_in_flight
        )

    def _admit(self, ticket: _Ticket, now: float) -> None:
        self._active[ticket.job.seq_id] = ticket
        self._rows += ticket.job.rows
        self._tokens += ticket.job.token_budget
        self._metrics.queue_wait.observe(now - ticket.submitted)
        self._metrics.input_tokens.inc(len(ticket.job.src_ids))

    def _expire_overdue(self, now: float) -> None:
        """Fail every queued segment whose deadline has passed; they never run."""
        if not any(now >= ticket.deadline for ticket in self._queue):
            return
        waiting: collections.deque[_Ticket] = collections.deque()
        for ticket in self._queue:
            if now < ticket.deadline:
                waiting.append(ticket)
                continue
            ticket.finished = True
            waited = now - ticket.submitted
            error = QueueTimeoutError(
                f"deadline exceeded after {waited:.3f} s in the queue; not run"
            )
            self._outbox.append((ticket, error))
        self._queue = waiting

    def _release(self, ticket: _Ticket) -> None:
        self._rows -= ticket.job.rows
        self._tokens -= ticket.job.token_budget

    def _complete(self, result: StepResult) -> None:
        """Record the step, queue updates for delivery, retire finished segments."""
        self._metrics.observe_step(result)
        self._steps_since_admission += 1
        now = time.monotonic()
        for update in result.updates:
            ticket = self._active.get(update.seq_id)
            if ticket is None or update.seq_id in self._dropped:
                continue  # cancelled while the step ran
            if ticket.first_token is None and update.committed:
                ticket.first_token = now
                self._metrics.time_to_first_token.observe(now - ticket.submitted)
            grew = len(update.committed) > ticket.committed
            ticket.committed = len(update.committed)
            if update.hypotheses is not None:
                self._finish(ticket, update, now)
            elif grew and ticket.streaming:
                self._outbox.append((ticket, update))
        self._metrics.active_rows.set(self._rows)

    def _finish(self, ticket: _Ticket, update: SegmentUpdate, now: float) -> None:
        assert update.hypotheses is not None
        del self._active[ticket.job.seq_id]
        self._release(ticket)
        ticket.finished = True
        self._outbox.append((ticket, update))
        produced = len(update.hypotheses[0].ids)
        self._metrics.output_tokens.inc(produced)
        if ticket.first_token is not None and produced > 1:
            self._metrics.time_per_output_token.observe((now - ticket.first_token) / (produced - 1))

    def _fail_active(self, error: EngineError) -> None:
        """Every admitted segment fails with `error` and leaves (the runner was reset)."""
        for ticket in self._active.values():
            ticket.finished = True
            self._outbox.append((ticket, error))
            self._release(ticket)
        self._active.clear()
        self._dropped.clear()
        self._metrics.active_rows.set(self._rows)
