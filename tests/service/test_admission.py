"""The scheduler's bookkeeping on its own: no threads, no model, no event loop running."""

from __future__ import annotations

from service.admission import Admission, Ticket
from service.errors import EngineError, QueueTimeoutError
from service.metrics import Metrics
from service.settings import EngineSettings
from service.types import (
    DecodingOptions,
    EncodedSegments,
    Hypothesis,
    SegmentJob,
    SegmentUpdate,
    StepResult,
)

GREEDY = DecodingOptions(beam_size=1, max_new_tokens=10, length_penalty=1.0, n_best=1)
BEAM = DecodingOptions(beam_size=3, max_new_tokens=10, length_penalty=1.0, n_best=1)


def _book(**limits: int) -> Admission:
    return Admission(EngineSettings.model_validate(limits), Metrics().for_model("test"))


def _ticket(seq_id: int, options: DecodingOptions = GREEDY, deadline: float = 100.0) -> Ticket:
    return Ticket(SegmentJob(seq_id, (5, 6, 7), options), deadline, False, submitted=0.0)


def _encoded(jobs: list[SegmentJob]) -> EncodedSegments:
    return EncodedSegments(tuple(jobs), cross=None, src_mask=None, seconds=0.0, padding=1.0)


def _finished(seq_id: int) -> StepResult:
    hypothesis = (Hypothesis((9, 3), -1.0),)
    return StepResult((SegmentUpdate(seq_id, (9, 3), hypothesis),), rows=1, step_seconds=0.0)


def test_admission_is_fifo_within_the_row_budget_and_freed_rows_admit_the_next():
    book = _book(max_active_rows=4, admit_every_steps=1)
    book.enqueue([_ticket(0, BEAM), _ticket(1), _ticket(2)])  # 3 + 1 rows fit, then 1 more
    jobs = book.take_queued(now=1.0)
    assert [job.seq_id for job in jobs] == [0, 1] and book.rows == 4
    assert [t.job.seq_id for t in book.queue] == [2]
    book.encoded(_encoded(jobs))
    plan = book.plan(now=1.0)
    assert [job.seq_id for e in plan.admit for job in e.jobs] == [0, 1]
    assert book.decoding == {0, 1}
    book.complete(_finished(1), now=2.0)
    assert book.rows == 3 and 1 not in book.active
    ((ticket, update),) = book.outbox
    assert ticket.job.seq_id == 1 and isinstance(update, SegmentUpdate) and ticket.finished
    assert [job.seq_id for job in book.take_queued(now=2.0)] == [2]


def test_a_queued_segment_past_its_deadline_fails_and_never_runs():
    book = _book()
    book.enqueue([_ticket(0, deadline=1.0), _ticket(1, deadline=10.0)])
    jobs = book.take_queued(now=5.0)
    assert [job.seq_id for job in jobs] == [1]
    ((ticket, error),) = book.outbox
    assert ticket.job.seq_id == 0 and isinstance(error, QueueTimeoutError)
    assert "in the queue; not run" in str(error)


def test_a_cancelled_decoding_segment_leaves_at_the_next_plan_and_frees_its_rows():
    book = _book(admit_every_steps=1)
    first, second = _ticket(0), _ticket(1)
    book.enqueue([first, second])
    book.encoded(_encoded(book.take_queued(now=0.0)))
    book.plan(now=0.0)
    book.cancel(first)
    assert book.rows == 2  # still reserved until the batch lets it go
    plan = book.plan(now=0.1)
    assert plan.drop == frozenset({0}) and book.rows == 1 and book.decoding == {1}
    book.cancel(_ticket(7))  # never submitted: nothing happens
    assert book.queue == type(book.queue)() and book.rows == 1


def test_newcomers_join_a_running_batch_only_every_n_steps():
    book = _book(admit_every_steps=3)
    book.enqueue([_ticket(0)])
    book.encoded(_encoded(book.take_queued(now=0.0)))
    assert book.plan(now=0.0).admit  # an idle batch admits at once
    book.enqueue([_ticket(1)])
    book.encoded(_encoded(book.take_queued(now=0.0)))
    joined = []
    for _ in range(4):
        joined.append(bool(book.plan(now=0.0).admit))
        book.complete(StepResult((), rows=1, step_seconds=0.0), now=0.0)
    assert joined == [False, False, False, True]


def test_a_failure_fails_every_admitted_and_queued_segment_once():
    book = _book(max_active_rows=1)
    book.enqueue([_ticket(0), _ticket(1)])
    book.take_queued(now=0.0)
    book.fail_everything()
    failed = {ticket.job.seq_id: error for ticket, error in book.outbox}
    assert set(failed) == {0, 1} and all(isinstance(e, EngineError) for e in failed.values())
    assert book.idle and book.rows == 0 and book.tokens == 0
    book.fail({0}, EngineError("again"))
    assert len(book.outbox) == 2
