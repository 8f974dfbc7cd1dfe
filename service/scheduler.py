"""The scheduler: a bounded queue of segments and one engine loop doing continuous batching.

Request path: `translate()` / `stream()` put one ticket per segment in the queue (or fail at once
with QueueFullError / DrainingError) and wait for its updates. The engine loop repeats

    plan = self._plan()                                   # drop cancelled, expire, admit
    result = await run_in_executor(runner.step, plan)     # encode admitted, one decoder step
    self._complete(result)                                # deliver tokens, retire finished

so between two decoder steps finished rows leave and newly admitted segments join, their encoder
run batched together. ONNX Runtime runs in one worker thread; the event loop stays free for I/O.
A segment whose deadline passes in the queue fails with QueueTimeoutError and never runs; a
cancelled one leaves the queue, or the batch at the next step. No onnxruntime import here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
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


class StepRunner(Protocol):
    """What the engine loop drives: `runner.Seq2SeqRunner`, or a fake in tests."""

    def step(self, plan: StepPlan) -> StepResult:
        """Apply the plan and run one decoder step; called from the worker thread."""
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
    """Queue, admission and the engine loop.

    Args:
        runner: runs the steps, in the worker thread.
        limits: queue and batch limits.
        metrics: where queue, batch and token figures go.
    """

    def __init__(self, runner: StepRunner, limits: SchedulerLimits, metrics: Metrics) -> None:
        self._runner = runner
        self._limits = limits
        self._metrics = metrics
        self._queue: collections.deque[_Ticket] = collections.deque()
        self._active: dict[int, _Ticket] = {}  # seq_id -> ticket, admitted and not finished
        self._dropped: set[int] = set()  # active seq_ids cancelled since the last step
        self._rows = 0  # rows reserved by active segments
        self._tokens = 0  # token budget reserved by active segments
        self._steps_since_admission = 0
        self._ids = itertools.count()
        self._wake = asyncio.Event()
        self._accepting = False
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle: start() at startup, open() once warm, drain() on SIGTERM, close() last --

    def start(self) -> None:
        """Start the engine loop; called once, inside the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="engine")

    def open(self) -> None:
        """Accept requests (after warm-up)."""
        self._accepting = True

    def drain(self) -> None:
        """Refuse new requests with DrainingError; queued and active ones still finish."""
        self._accepting = False

    @property
    def idle(self) -> bool:
        return not self._queue and not self._active

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def closing(self) -> bool:
        return self._closing

    async def stopped(self) -> None:
        """Returns when the engine loop has ended, normally or not."""
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._task)

    async def close(self) -> None:
        """Stop the loop once idle (pending segments have been cancelled by then)."""
        self._accepting = False
        self._closing = True
        self._wake.set()
        await self.stopped()
        self._executor.shutdown(wait=True)

    # -- the request side --

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
        if not self._accepting or not self.alive:
            raise DrainingError("the service is not accepting requests (starting or draining)")
        if len(self._queue) + len(segments) > self._limits.max_queued:
            raise QueueFullError(
                f"queue full: {len(self._queue)} segments waiting, limit {self._limits.max_queued}"
            )
        wait = (
            self._limits.queue_timeout_s
            if time_left is None
            else min(time_left, self._limits.queue_timeout_s)
        )
        deadline = time.monotonic() + wait
        tickets = [
            _Ticket(SegmentJob(next(self._ids), tuple(src), options), deadline, streaming)
            for src, options in segments
        ]
        self._queue.extend(tickets)
        self._metrics.queue_depth.set(len(self._queue))
        self._wake.set()
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
        if ticket.finished:
            return
        ticket.finished = True
        seq_id = ticket.job.seq_id
        if seq_id in self._active:
            self._dropped.add(seq_id)
            self._wake.set()
        else:
            with contextlib.suppress(ValueError):
                self._queue.remove(ticket)
            self._metrics.queue_depth.set(len(self._queue))

    # -- the engine side --

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            plan = self._plan()
            if not plan.admit and not plan.drop and not self._active:
                if self._closing and not self._queue:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                result = await loop.run_in_executor(self._executor, self._runner.step, plan)
            except Exception:
                log.exception("engine step failed; failing the segments in flight")
                self._fail_active()
                continue
            self._complete(result)

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
            ticket.updates.put_nowait(
                QueueTimeoutError(f"deadline exceeded after {waited:.3f} s in the queue; not run")
            )
        self._queue = waiting

    def _release(self, ticket: _Ticket) -> None:
        self._rows -= ticket.job.rows
        self._tokens -= ticket.job.token_budget

    def _complete(self, result: StepResult) -> None:
        """Record the step, deliver updates, retire finished segments."""
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
                ticket.updates.put_nowait(update)
        self._metrics.active_rows.set(self._rows)

    def _finish(self, ticket: _Ticket, update: SegmentUpdate, now: float) -> None:
        assert update.hypotheses is not None
        del self._active[ticket.job.seq_id]
        self._release(ticket)
        ticket.finished = True
        ticket.updates.put_nowait(update)
        produced = len(update.hypotheses[0].ids)
        self._metrics.output_tokens.inc(produced)
        if ticket.first_token is not None and produced > 1:
            self._metrics.time_per_output_token.observe((now - ticket.first_token) / (produced - 1))

    def _fail_active(self) -> None:
        """A step raised: every admitted segment fails with EngineError; the runner restarts."""
        self._runner.reset()
        for ticket in self._active.values():
            ticket.finished = True
            ticket.updates.put_nowait(EngineError("the model failed while decoding this request"))
            self._release(ticket)
        self._active.clear()
        self._dropped.clear()
        self._metrics.active_rows.set(self._rows)
