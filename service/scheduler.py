"""The scheduler: a bounded queue of segments, an encoder thread and a decoder thread doing
continuous batching.

Request path: `translate()` / `stream()` put one ticket per segment in the queue (or fail at once
with QueueFullError / DrainingError) and await its updates. Two engine threads do the work, each
in a loop of its own, neither waiting for the event loop:

    encoder:  jobs = self._book.take_queued(now)   # expire overdue ones, admit what fits (FIFO)
              encoded = self._runner.encode(jobs)
              self._book.encoded(encoded)
    decoder:  plan = self._book.plan(now)         # ready rows join, cancelled rows leave
              result = self._runner.step(plan)    # one decoder step for every row
              self._book.complete(result, now)    # record tokens, retire finished rows

so between two decoder steps finished rows leave and newly admitted segments join, and the
encoder runs of newcomers overlap the decoder steps of the rows in flight (ONNX Runtime releases
the GIL: on CPU they run on two cores). The encoder thread only works while rows are decoding
and is woken once per step; an idle decoder thread encodes newcomers itself, so a lone request
(or the unbatched server) is never handed between threads. The decoder thread alone owns the
batch. What waits, what is admitted and what joins or leaves is `admission.Admission`'s pure
bookkeeping; this module is the threads, the lock and the delivery. Each step's updates reach the
waiting requests in one `call_soon_threadsafe` callback; the event loop only does gRPC I/O and
delivery. All state is shared under one lock, held for bookkeeping only, never across a model
run. A segment whose deadline passes in the queue fails with QueueTimeoutError and never runs; a
cancelled one leaves the queue, or the batch at the next step (a segment cancelled while its
encoder ran joins and leaves in the same step). No onnxruntime import here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

from service.admission import Admission, Delivery, Ticket
from service.errors import DrainingError, EngineError, QueueFullError
from service.metrics import ModelMetrics
from service.settings import EngineSettings
from service.types import (
    DecodingOptions,
    EncodedSegments,
    Hypothesis,
    Segment,
    SegmentJob,
    SegmentUpdate,
    StepPlan,
    StepResult,
)

log = logging.getLogger(__name__)


class StepRunner(Protocol):
    """What the engine threads drive: `runner.Seq2SeqRunner`, or a fake in tests."""

    def encode(self, jobs: Sequence[SegmentJob]) -> EncodedSegments:
        """Run the encoder on admitted segments; called from either engine thread, at any time,
        possibly by both at once (it must not touch the batch)."""
        ...

    def step(self, plan: StepPlan) -> StepResult:
        """Apply the plan and run one decoder step; called from the decoder thread."""
        ...

    def reset(self) -> None:
        """Forget every row; called after `step` raised."""
        ...


class BatchScheduler:
    """Queue, admission, and the encoder and decoder loops (threads "encoder" and "decoder").

    Args:
        runner: runs the encoder (encoder thread) and the decoder steps (decoder thread).
        limits: queue and batch limits.
        metrics: where queue, batch and token figures go.
    """

    def __init__(self, runner: StepRunner, limits: EngineSettings, metrics: ModelMetrics) -> None:
        self._runner = runner
        self._limits = limits
        self._metrics = metrics
        self._lock = threading.Lock()  # guards everything below; never held across a model run
        self._encoder_wake = threading.Condition(self._lock)  # the encoder thread may have work
        self._decoder_wake = threading.Condition(self._lock)  # the decoder thread may have work
        self._book = Admission(limits, metrics)
        self._ids = itertools.count()
        self._accepting = False
        self._closing = False
        self._broken = False  # an engine loop crashed; the other one stops too
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._running = 0  # engine threads not yet ended
        self._ended: asyncio.Event | None = None

    # -- lifecycle: start() at startup, open() once warm, drain() on SIGTERM, close() last --

    def start(self) -> None:
        """Start the engine threads; called once, inside the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._ended = asyncio.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(loop,), name=name, daemon=True)
            for name, loop in (("encoder", self._encoder_loop), ("decoder", self._decoder_loop))
        ]
        self._running = len(self._threads)
        for thread in self._threads:
            thread.start()

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
            return self._book.idle

    @property
    def alive(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    @property
    def closing(self) -> bool:
        return self._closing

    async def stopped(self) -> None:
        """Returns when both engine loops have ended, normally or not."""
        if self._ended is not None:
            await self._ended.wait()

    async def close(self) -> None:
        """Stop the loops once idle (pending segments have been cancelled by then)."""
        with self._lock:
            self._accepting = False
            self._closing = True
            self._wake_both()
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
    ) -> list[Ticket]:
        wait = (
            self._limits.queue_timeout_s
            if time_left is None
            else min(time_left, self._limits.queue_timeout_s)
        )
        now = time.monotonic()
        deadline = now + wait
        queue = self._book.queue
        with self._lock:
            if not self._accepting or self._broken or not self.alive:
                raise DrainingError("the service is not accepting requests (starting or draining)")
            if len(queue) + len(segments) > self._limits.max_queued_requests:
                raise QueueFullError(
                    f"queue full: {len(queue)} segments waiting, "
                    f"limit {self._limits.max_queued_requests}"
                )
            tickets = [
                Ticket(SegmentJob(next(self._ids), tuple(src), options), deadline, streaming, now)
                for src, options in segments
            ]
            self._book.enqueue(tickets)
            if not self._book.decoding:
                self._decoder_wake.notify()  # idle: it encodes them itself
        return tickets

    async def _next(self, ticket: Ticket) -> SegmentUpdate:
        item = await ticket.updates.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def _final(self, ticket: Ticket) -> tuple[Hypothesis, ...]:
        while True:
            update = await self._next(ticket)
            if update.hypotheses is not None:
                return update.hypotheses

    def _cancel(self, ticket: Ticket) -> None:
        """The waiter is gone: forget a queued ticket, drop an active one at the next step."""
        with self._lock:
            self._book.cancel(ticket)

    def _deliver(self, deliveries: list[Delivery]) -> None:
        """On the event loop: hand one step's updates to their waiters."""
        for ticket, item in deliveries:
            ticket.updates.put_nowait(item)

    # -- the engine side, in the encoder and decoder threads --

    def _run(self, loop: Callable[[], None]) -> None:
        try:
            loop()
        except BaseException:
            log.exception("an engine loop crashed; failing every pending segment")
            with self._lock:
                self._break()
        finally:
            assert self._loop is not None and self._ended is not None
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:
                with contextlib.suppress(RuntimeError):  # the event loop is already closed
                    self._loop.call_soon_threadsafe(self._ended.set)

    def _encoder_loop(self) -> None:
        """Encode newcomers while the decoder thread is busy with rows (when it is idle, it
        encodes them itself: no hand-over between threads on a lone request's path)."""
        while True:
            with self._lock:
                while not (jobs := self._take_queued() if self._book.decoding else []):
                    if self._broken or self._closing:
                        return  # what is still queued, the decoder thread encodes when idle
                    self._encoder_wake.wait()
            self._encode(jobs)

    def _decoder_loop(self) -> None:
        while True:
            jobs: list[SegmentJob] = []
            with self._lock:
                plan = self._plan()
                while not (plan.admit or plan.drop or self._book.decoding):
                    if self._broken or (self._closing and self._book.idle):
                        return
                    if not self._book.ready and (jobs := self._take_queued()):
                        break
                    self._decoder_wake.wait()
                    plan = self._plan()
            if jobs:  # idle: encode here, the next plan admits them
                self._encode(jobs)
                continue
            try:
                result = self._runner.step(plan)
            except Exception:
                log.exception("decoder step failed; failing the segments in the batch")
                self._runner.reset()
                with self._lock:
                    error = EngineError("the model failed while decoding this request")
                    self._fail(set(self._book.decoding), error)
                    self._flush()
                continue
            with self._lock:
                self._book.complete(result, time.monotonic())
                self._flush()

    def _encode(self, jobs: list[SegmentJob]) -> None:
        """Run the encoder on admitted segments (lock not held); the result waits in `_ready`
        for the decoder thread."""
        try:
            encoded = self._runner.encode(jobs)
        except Exception:
            log.exception("encoder run failed; failing its segments")
            with self._lock:
                seq_ids = {job.seq_id for job in jobs}
                self._fail(seq_ids, EngineError("the model failed while encoding this request"))
                self._flush()
            return
        self._metrics.observe_encode(encoded)
        with self._lock:
            if self._broken:
                return
            self._book.encoded(encoded)
            self._decoder_wake.notify()

    def _wake_encoder_if_useful(self) -> None:
        """Called (lock held) once per decoder step and when rows free up outside a step: the
        encoder thread takes what queued since the last step in one run, and a submission costs
        no thread wake-up of its own (on a VM each one costs tens of microseconds)."""
        if self._book.next_fits():
            self._encoder_wake.notify()

    def _wake_both(self) -> None:
        self._encoder_wake.notify()
        self._decoder_wake.notify()

    def _flush(self) -> None:
        """Hand the outbox to the event loop in one callback (lock held)."""
        if not self._book.outbox:
            return
        deliveries, self._book.outbox = self._book.outbox, []
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody waits
            self._loop.call_soon_threadsafe(self._deliver, deliveries)

    def _take_queued(self) -> list[SegmentJob]:
        """Expire overdue queued segments, admit what fits (lock held)."""
        jobs = self._book.take_queued(time.monotonic())
        self._flush()
        return jobs

    def _plan(self) -> StepPlan:
        """The next step's plan (lock held); wakes the encoder thread when a newcomer fits."""
        plan = self._book.plan(time.monotonic())
        self._wake_encoder_if_useful()
        self._flush()
        return plan

    def _fail(self, seq_ids: set[int], error: EngineError) -> None:
        """The segments `seq_ids` (admitted) fail with `error` (lock held)."""
        self._book.fail(seq_ids, error)
        self._wake_both()  # rows freed: a queued segment may fit, for whichever thread is idle

    def _break(self) -> None:
        """An engine loop crashed: every pending segment fails, both loops stop."""
        self._broken = True
        self._book.fail_everything()
        self._flush()
        self._wake_both()
