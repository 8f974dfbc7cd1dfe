"""The batch's bookkeeping: which segments wait, which are admitted, which decode, and what joins
and leaves the batch at each step. Pure: no threads, no locks, no model runs, no event loop.

`scheduler.BatchScheduler` calls every method under its one lock, from the request side
(`enqueue`, `cancel`) and from the engine threads (`take_queued`, `encoded`, `plan`, `complete`,
`fail`). A segment moves queued -> encoding -> ready -> decoding; its rows and token budget stay
reserved from admission to its end. Updates for the waiting requests collect in `outbox`, which
the scheduler hands to the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass, field
from typing import Literal

from service.errors import EngineError, QueueTimeoutError
from service.metrics import ModelMetrics
from service.settings import EngineSettings
from service.types import EncodedSegments, SegmentJob, SegmentUpdate, StepPlan, StepResult

Stage = Literal["queued", "encoding", "ready", "decoding"]


@dataclass(eq=False)
class Ticket:
    """One segment from submission to its last update."""

    job: SegmentJob
    deadline: float  # monotonic; admission after it fails the segment with QueueTimeoutError
    streaming: bool  # deliver partial updates, not only the final one
    submitted: float  # monotonic
    stage: Stage = "queued"
    first_token: float | None = None
    committed: int = 0
    finished: bool = False  # its waiter has its last update, or is gone
    updates: asyncio.Queue[SegmentUpdate | BaseException] = field(default_factory=asyncio.Queue)


Delivery = tuple[Ticket, SegmentUpdate | BaseException]  # made by the engine, put by the loop


class Admission:
    """Queue, budget and batch membership.

    Args:
        limits: queue and batch limits (rows, tokens in flight, admission cadence).
        metrics: where queue, batch and token figures go.
    """

    def __init__(self, limits: EngineSettings, metrics: ModelMetrics) -> None:
        self._limits = limits
        self._metrics = metrics
        self.queue: collections.deque[Ticket] = collections.deque()
        self.active: dict[int, Ticket] = {}  # seq_id -> ticket, admitted and not finished
        self.ready: list[EncodedSegments] = []  # encoded, not yet joined
        self.decoding: set[int] = set()  # seq_ids whose rows are in the runner's batch
        self.dropped: set[int] = set()  # active seq_ids cancelled, rows not yet released
        self.rows = 0  # rows reserved by active segments
        self.tokens = 0  # token budget reserved by active segments
        self.outbox: list[Delivery] = []  # updates made, not yet handed to the event loop
        self._steps_since_join = 0

    @property
    def idle(self) -> bool:
        return not self.queue and not self.active

    def enqueue(self, tickets: list[Ticket]) -> None:
        self.queue.extend(tickets)
        self._metrics.queue_depth.set(len(self.queue))

    def cancel(self, ticket: Ticket) -> None:
        """The waiter is gone: forget a queued ticket, drop an active one at the next step."""
        if ticket.finished:
            return
        ticket.finished = True
        if ticket.stage == "queued":
            with contextlib.suppress(ValueError):
                self.queue.remove(ticket)
            self._metrics.queue_depth.set(len(self.queue))
        else:
            self.dropped.add(ticket.job.seq_id)

    def take_queued(self, now: float) -> list[SegmentJob]:
        """Expire overdue queued segments, admit what fits (FIFO)."""
        self._expire_overdue(now)
        jobs: list[SegmentJob] = []
        while self.queue and self.fits(self.queue[0].job):
            ticket = self.queue.popleft()
            self._admit(ticket, now)
            jobs.append(ticket.job)
        self._metrics.queue_depth.set(len(self.queue))
        self._metrics.active_rows.set(self.rows)
        return jobs

    def encoded(self, encoded: EncodedSegments) -> None:
        """The encoder ran on these segments: they wait to join."""
        for job in encoded.jobs:
            self.active[job.seq_id].stage = "ready"
        self.ready.append(encoded)

    def plan(self, now: float) -> StepPlan:
        """What changes before the next step: encoded segments join (at most every
        `admit_every_steps` steps while rows are decoding), cancelled ones leave; overdue queued
        segments expire."""
        admit: tuple[EncodedSegments, ...] = ()
        every = self._limits.admit_every_steps
        if self.ready and (not self.decoding or self._steps_since_join >= every):
            admit, self.ready = tuple(self.ready), []
            self._steps_since_join = 0
            for encoded in admit:
                for job in encoded.jobs:
                    self.active[job.seq_id].stage = "decoding"
                    self.decoding.add(job.seq_id)
        drop = frozenset(self.dropped & self.decoding)
        if drop:
            self.dropped -= drop
            self.decoding -= drop
            for seq_id in drop:
                self._release(self.active.pop(seq_id))
        self._expire_overdue(now)
        self._metrics.queue_depth.set(len(self.queue))
        self._metrics.active_rows.set(self.rows)
        return StepPlan(admit, drop)

    def next_fits(self) -> bool:
        """Rows are decoding and the head of the queue would be admitted now."""
        return bool(self.decoding and self.queue and self.fits(self.queue[0].job))

    def fits(self, job: SegmentJob) -> bool:
        if not self.active:
            return True  # validation keeps single jobs within the limits; never deadlock
        return (
            self.rows + job.rows <= self._limits.max_active_rows
            and self.tokens + job.token_budget <= self._limits.max_tokens_in_flight
        )

    def complete(self, result: StepResult, now: float) -> None:
        """Record the step, queue updates for delivery, retire finished segments."""
        self._metrics.observe_step(result)
        self._steps_since_join += 1
        for update in result.updates:
            ticket = self.active.get(update.seq_id)
            if ticket is None or update.seq_id in self.dropped:
                continue  # cancelled while the step ran
            if ticket.first_token is None and update.committed:
                ticket.first_token = now
                self._metrics.time_to_first_token.observe(now - ticket.submitted)
            grew = len(update.committed) > ticket.committed
            ticket.committed = len(update.committed)
            if update.hypotheses is not None:
                self._finish(ticket, update, now)
            elif grew and ticket.streaming:
                self.outbox.append((ticket, update))
        self._metrics.active_rows.set(self.rows)

    def fail(self, seq_ids: set[int], error: EngineError) -> None:
        """The segments `seq_ids` (admitted) fail with `error` and release their rows."""
        for seq_id in seq_ids:
            ticket = self.active.pop(seq_id, None)
            if ticket is None:
                continue  # already failed
            self._release(ticket)
            if not ticket.finished:
                ticket.finished = True
                self.outbox.append((ticket, error))
        self.decoding -= seq_ids
        self.dropped -= seq_ids
        self._metrics.active_rows.set(self.rows)

    def fail_everything(self) -> None:
        """The engine stopped: every admitted and queued segment fails."""
        self.fail(set(self.active), EngineError("the engine stopped while decoding this request"))
        for ticket in self.queue:
            ticket.finished = True
            self.outbox.append((ticket, EngineError("the engine stopped; not run")))
        self.queue.clear()
        self._metrics.queue_depth.set(0)
        self.ready.clear()

    def _admit(self, ticket: Ticket, now: float) -> None:
        ticket.stage = "encoding"
        self.active[ticket.job.seq_id] = ticket
        self.rows += ticket.job.rows
        self.tokens += ticket.job.token_budget
        self._metrics.queue_wait.observe(now - ticket.submitted)
        self._metrics.input_tokens.inc(len(ticket.job.src_ids))

    def _expire_overdue(self, now: float) -> None:
        """Fail every queued segment whose deadline has passed; they never run."""
        if not any(now >= ticket.deadline for ticket in self.queue):
            return
        waiting: collections.deque[Ticket] = collections.deque()
        for ticket in self.queue:
            if now < ticket.deadline:
                waiting.append(ticket)
                continue
            ticket.finished = True
            waited = now - ticket.submitted
            error = QueueTimeoutError(
                f"deadline exceeded after {waited:.3f} s in the queue; not run"
            )
            self.outbox.append((ticket, error))
        self.queue = waiting

    def _release(self, ticket: Ticket) -> None:
        self.rows -= ticket.job.rows
        self.tokens -= ticket.job.token_budget

    def _finish(self, ticket: Ticket, update: SegmentUpdate, now: float) -> None:
        assert update.hypotheses is not None
        del self.active[ticket.job.seq_id]
        self.decoding.discard(ticket.job.seq_id)
        self._release(ticket)
        ticket.finished = True
        self.outbox.append((ticket, update))
        produced = len(update.hypotheses[0].ids)
        self._metrics.output_tokens.inc(produced)
        if ticket.first_token is not None and produced > 1:
            self._metrics.time_per_output_token.observe((now - ticket.first_token) / (produced - 1))
