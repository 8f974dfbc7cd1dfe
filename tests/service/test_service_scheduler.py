"""The scheduler with a fake runner: continuous batching, limits, deadlines, cancellation."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import time

import pytest
from service_fakes import GREEDY, FakeRunner, fake_output, source, until

from service.errors import DrainingError, EngineError, QueueFullError, QueueTimeoutError
from service.metrics import Metrics

pytestmark = pytest.mark.asyncio


async def test_translates_every_segment_in_order(make_scheduler):
    runner = FakeRunner()
    scheduler = make_scheduler(runner)
    results = await scheduler.translate(
        [(source(3), GREEDY), (source(1), GREEDY), (source(5), GREEDY)], None
    )
    assert [r[0].ids for r in results] == [fake_output(source(n), 64) for n in (3, 1, 5)]
    assert runner.rows_per_step[0] == 3  # admitted together, decoded as one batch


async def test_short_request_joins_running_batch_and_finishes_first(make_scheduler):
    runner = FakeRunner(step_seconds=0.005)
    scheduler = make_scheduler(runner)
    finished: list[str] = []

    async def run(name: str, length: int) -> None:
        await scheduler.translate([(source(length), GREEDY)], None)
        finished.append(name)

    long_task = asyncio.create_task(run("long", 40))
    await until(lambda: len(runner.steps) >= 5)  # the long one is decoding
    await run("short", 2)
    await long_task
    assert finished == ["short", "long"]
    joined = next(i for i, plan in enumerate(runner.steps) if i > 0 and plan.admit)
    assert runner.rows_per_step[joined - 1] == 1  # the long row alone
    assert runner.rows_per_step[joined] == 2  # the short row joined mid-batch
    assert runner.rows_per_step[joined + 3] == 1  # ...and left while the long one goes on
    assert len(runner.steps) >= 40


async def test_full_queue_is_refused_at_once(make_scheduler):
    runner = FakeRunner(step_seconds=0.01)
    scheduler = make_scheduler(runner, max_active_rows=1, max_queued=2)
    first = asyncio.create_task(scheduler.translate([(source(30), GREEDY)], None))
    await until(lambda: bool(runner.steps))
    queued = [
        asyncio.create_task(scheduler.translate([(source(1), GREEDY)], None)) for _ in range(2)
    ]
    await asyncio.sleep(0)
    start = time.perf_counter()
    with pytest.raises(QueueFullError, match="limit 2"):
        await scheduler.translate([(source(1), GREEDY)], None)
    assert time.perf_counter() - start < 0.05
    assert all(len(r) == 1 for r in await asyncio.gather(first, *queued))


async def test_deadline_passing_in_queue_fails_and_never_runs(make_scheduler):
    runner = FakeRunner(step_seconds=0.01)
    scheduler = make_scheduler(runner, max_active_rows=1)
    long_task = asyncio.create_task(scheduler.translate([(source(30), GREEDY)], None))
    await until(lambda: bool(runner.steps))
    start = time.perf_counter()
    with pytest.raises(QueueTimeoutError, match="not run"):
        await scheduler.translate([(source(1), GREEDY)], 0.05)
    assert 0.04 < time.perf_counter() - start < 0.2
    await long_task
    assert len(runner.admitted) == 1  # only the long one ever reached the runner


async def test_cancelled_row_leaves_at_next_step_and_frees_its_slot(make_scheduler):
    runner = FakeRunner(step_seconds=0.005)
    scheduler = make_scheduler(runner, max_active_rows=1)
    doomed = asyncio.create_task(scheduler.translate([(source(50), GREEDY)], None))
    await until(lambda: len(runner.steps) >= 3)
    waiting = asyncio.create_task(scheduler.translate([(source(2), GREEDY)], None))
    await asyncio.sleep(0.02)
    assert not waiting.done()  # no free row
    doomed.cancel()
    steps_at_cancel = len(runner.steps)
    await waiting
    drop_step = next(i for i, plan in enumerate(runner.steps) if plan.drop)
    assert drop_step <= steps_at_cancel + 1  # dropped within one step
    assert runner.steps[drop_step + 1].admit  # the freed row went to the waiting request next
    doomed_id = runner.admitted[0]
    assert doomed_id in runner.steps[drop_step].drop


async def test_cancelled_while_queued_never_runs(make_scheduler):
    runner = FakeRunner(step_seconds=0.005)
    scheduler = make_scheduler(runner, max_active_rows=1)
    long_task = asyncio.create_task(scheduler.translate([(source(20), GREEDY)], None))
    await until(lambda: bool(runner.steps))
    queued = asyncio.create_task(scheduler.translate([(source(2), GREEDY)], None))
    await asyncio.sleep(0.01)
    queued.cancel()
    await long_task
    assert len(runner.admitted) == 1


async def test_limits_on_rows_and_tokens_are_respected(make_scheduler):
    runner = FakeRunner()
    beam = dataclasses.replace(GREEDY, beam_size=3, max_new_tokens=10)
    scheduler = make_scheduler(runner, max_active_rows=4, max_tokens_in_flight=60)
    await asyncio.gather(*(scheduler.translate([(source(4), beam)], None) for _ in range(5)))
    assert max(runner.rows_per_step) <= 4  # one 3-row beam at a time
    greedy = dataclasses.replace(GREEDY, max_new_tokens=16)  # 20 tokens each: 3 fit in 60
    await asyncio.gather(*(scheduler.translate([(source(4), greedy)], None) for _ in range(6)))
    assert max(runner.rows_per_step[-6:]) <= 3


async def test_runner_failure_fails_the_batch_and_the_engine_goes_on(make_scheduler):
    runner = FakeRunner(fail_at_step=2)
    scheduler = make_scheduler(runner)
    with pytest.raises(EngineError):
        await scheduler.translate([(source(5), GREEDY)], None)
    (result,) = await scheduler.translate([(source(2), GREEDY)], None)
    assert result[0].ids == fake_output(source(2), 64)


async def test_draining_refuses_new_requests_and_finishes_the_others(make_scheduler):
    runner = FakeRunner(step_seconds=0.002)
    scheduler = make_scheduler(runner, max_active_rows=1)
    in_flight = [
        asyncio.create_task(scheduler.translate([(source(5), GREEDY)], None)) for _ in range(3)
    ]
    await asyncio.sleep(0.005)
    scheduler.drain()
    with pytest.raises(DrainingError):
        await scheduler.translate([(source(1), GREEDY)], None)
    assert len(await asyncio.gather(*in_flight)) == 3


async def test_stream_yields_growing_prefixes_then_the_final(make_scheduler):
    scheduler = make_scheduler(FakeRunner())
    updates = [u async for u in scheduler.stream(source(4), GREEDY, None)]
    assert [len(u.committed) for u in updates] == [1, 2, 3, 4, 5]
    assert updates[-1].hypotheses is not None
    assert all(u.hypotheses is None for u in updates[:-1])


async def test_admissions_into_a_running_batch_are_spaced_by_admit_every_steps(make_scheduler):
    runner = FakeRunner(step_seconds=0.002)
    scheduler = make_scheduler(runner, admit_every_steps=4)
    long_task = asyncio.create_task(scheduler.translate([(source(40), GREEDY)], None))
    await until(lambda: bool(runner.steps))
    for _ in range(6):
        await scheduler.translate([(source(1), GREEDY)], None)
    await long_task
    joins = [i for i, plan in enumerate(runner.steps) if plan.admit]
    assert len(joins) == 7
    assert all(b - a >= 4 for a, b in itertools.pairwise(joins))


async def test_engine_steps_on_while_the_event_loop_is_busy(make_scheduler):
    runner = FakeRunner(step_seconds=0.001)
    scheduler = make_scheduler(runner)
    task = asyncio.create_task(scheduler.translate([(source(60), GREEDY)], None))
    await until(lambda: bool(runner.steps))
    before = len(runner.steps)
    time.sleep(0.03)  # noqa: ASYNC251 (the event loop is blocked on purpose; the engine is not)
    assert len(runner.steps) - before >= 5
    (result,) = await task
    assert result[0].ids == fake_output(source(60), 64)


async def test_engine_crash_fails_pending_requests_and_refuses_new_ones(make_scheduler):
    runner = FakeRunner(step_seconds=0.002, fail_at_step=10)

    def broken_reset() -> None:
        raise RuntimeError("injected: the runner cannot restart")

    runner.reset = broken_reset
    scheduler = make_scheduler(runner, max_active_rows=1)
    active = asyncio.create_task(scheduler.translate([(source(20), GREEDY)], None))
    await until(lambda: bool(runner.steps))
    queued = asyncio.create_task(scheduler.translate([(source(2), GREEDY)], None))
    with pytest.raises(EngineError, match="while decoding"):
        await active
    with pytest.raises(EngineError, match="not run"):
        await queued
    await asyncio.wait_for(scheduler.stopped(), 1.0)
    assert not scheduler.alive
    with pytest.raises(DrainingError):
        await scheduler.translate([(source(1), GREEDY)], None)


async def test_encoder_runs_overlap_the_decoder_steps_of_rows_in_flight(make_scheduler):
    runner = FakeRunner(step_seconds=0.002, encode_seconds=0.03)
    scheduler = make_scheduler(runner)
    long_task = asyncio.create_task(scheduler.translate([(source(60), GREEDY)], None))
    await until(lambda: bool(runner.steps))
    short_task = asyncio.create_task(scheduler.translate([(source(2), GREEDY)], None))
    await until(lambda: runner.encoding and len(runner.encoded) == 2)
    steps_before = len(runner.steps)
    await until(lambda: not runner.encoding)
    assert len(runner.steps) - steps_before >= 5  # the long row kept decoding meanwhile
    assert runner.encoded_by == ["decoder", "encoder"]  # idle: inline; busy: the encoder thread
    await asyncio.gather(long_task, short_task)


async def test_without_batching_every_encoder_run_stays_on_the_decoder_thread(make_scheduler):
    runner = FakeRunner(step_seconds=0.001)
    scheduler = make_scheduler(runner, max_active_rows=1)
    await asyncio.gather(*(scheduler.translate([(source(3), GREEDY)], None) for _ in range(6)))
    assert runner.encoded_by == ["decoder"] * 6  # no hand-over between threads per request


async def test_cancelled_while_encoding_joins_and_leaves_in_one_step(make_scheduler):
    runner = FakeRunner(step_seconds=0.002, encode_seconds=0.03)
    scheduler = make_scheduler(runner, max_active_rows=2)
    long_task = asyncio.create_task(scheduler.translate([(source(80), GREEDY)], None))
    await until(lambda: bool(runner.steps))
    victim = asyncio.create_task(scheduler.translate([(source(2), GREEDY)], None))
    await until(lambda: runner.encoding and len(runner.encoded) == 2)
    victim.cancel()
    (victim_id,) = runner.encoded[1]
    (result,) = await scheduler.translate([(source(1), GREEDY)], None)  # fits: the row came back
    assert result[0].ids == fake_output(source(1), 64)
    assert not long_task.done()
    joined = next(plan for plan in runner.steps if victim_id in plan.drop)
    assert victim_id in [job.seq_id for encoded in joined.admit for job in encoded.jobs]
    await long_task


async def test_encoder_failure_fails_its_segments_and_the_engine_goes_on(make_scheduler):
    runner = FakeRunner(fail_encode=0)
    scheduler = make_scheduler(runner)
    with pytest.raises(EngineError, match="while encoding"):
        await scheduler.translate([(source(3), GREEDY)], None)
    (result,) = await scheduler.translate([(source(2), GREEDY)], None)
    assert result[0].ids == fake_output(source(2), 64)


async def test_random_cancellations_at_every_stage_lose_nothing_and_leak_no_rows(make_scheduler):
    """Cancellations land while queued, encoding, ready and decoding, and every 7th encoder run
    fails: every other request gets its exact output or that failure, and once idle no row or
    queued segment is left reserved."""
    runner = FakeRunner(step_seconds=0.001, encode_seconds=0.004, fail_encode_every=7)
    metrics = Metrics()
    scheduler = make_scheduler(
        runner, max_active_rows=6, max_queued=200, admit_every_steps=3, metrics=metrics
    )
    rng = random.Random(7)

    async def one(length: int) -> tuple[int, ...]:
        (hyps,) = await scheduler.translate([(source(length), GREEDY)], None)
        ids: tuple[int, ...] = hyps[0].ids
        return ids

    lengths = [rng.randint(3, 30) for _ in range(80)]
    doomed = set(rng.sample(range(len(lengths)), 40))
    loop = asyncio.get_running_loop()
    tasks = []
    for i, n in enumerate(lengths):  # arrivals spread out, so cancellations find every stage
        tasks.append(asyncio.create_task(one(n)))
        if i in doomed:
            loop.call_later(rng.uniform(0, 0.03), tasks[i].cancel)
        await asyncio.sleep(rng.uniform(0, 0.002))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for i, (n, result) in enumerate(zip(lengths, results, strict=True)):
        if isinstance(result, asyncio.CancelledError):
            assert i in doomed
        elif isinstance(result, EngineError):
            assert "while encoding" in str(result)
        else:
            assert result == fake_output(source(n), 64)
    await until(lambda: scheduler.idle)
    assert metrics.registry.get_sample_value("translator_active_rows", {"model": "test"}) == 0
    assert metrics.registry.get_sample_value("translator_queue_depth", {"model": "test"}) == 0
    assert not runner.live  # no zombie row keeps decoding


async def test_encoder_failure_frees_rows_for_a_segment_waiting_on_an_idle_decoder(make_scheduler):
    runner = FakeRunner(step_seconds=0.005, encode_seconds=0.05, fail_encode=1)
    scheduler = make_scheduler(runner, max_active_rows=2)
    first = asyncio.create_task(scheduler.translate([(source(3), GREEDY)], None))
    await until(lambda: bool(runner.steps))
    failing = asyncio.create_task(scheduler.translate([(source(2), GREEDY)], None))
    await until(lambda: len(runner.encoded) == 2)  # on the encoder thread
    beam = dataclasses.replace(GREEDY, beam_size=2)  # 2 rows: waits until both others are gone
    waiting = asyncio.create_task(scheduler.translate([(source(2), beam)], None))
    await first  # the decoder thread goes idle while the failing encoder run still holds a row
    with pytest.raises(EngineError, match="while encoding"):
        await failing
    (result,) = await asyncio.wait_for(waiting, 1.0)  # the freed rows woke the idle decoder
    assert result[0].ids == fake_output(source(2), 64)


@pytest.mark.parametrize(
    "cancel_queued", [False, True], ids=["queued-finishes", "queued-cancelled"]
)
async def test_close_returns_when_work_was_still_queued_at_close(make_scheduler, cancel_queued):
    runner = FakeRunner(step_seconds=0.005)
    scheduler = make_scheduler(runner, max_active_rows=1)
    active = asyncio.create_task(scheduler.translate([(source(10), GREEDY)], None))
    await until(lambda: bool(runner.steps))
    queued = asyncio.create_task(scheduler.translate([(source(2), GREEDY)], None))
    await asyncio.sleep(0.01)
    scheduler.drain()
    closing = asyncio.create_task(scheduler.close())
    await asyncio.sleep(0.01)
    if cancel_queued:
        queued.cancel()
    await active
    if not cancel_queued:
        (result,) = await queued
        assert result[0].ids == fake_output(source(2), 64)
    await asyncio.wait_for(closing, 1.0)
    assert not scheduler.alive
