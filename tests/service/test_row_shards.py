"""Row shards (service/row_shards.py): how runs are split, and that a split run gives every row
what the whole run gives it, in the sessions and through the runner."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service.bundle import load_bundle
from service.row_shards import CoreBudget, RowShards, Shard, split_rows
from service.runner import Seq2SeqRunner, pad_right
from service.scoring_graph import scored_decoder
from service.sessions import INTRA_OP_MARGIN, MIN_SHARD_ROWS, OrtSessions, choose_parallelism
from service.tokenizer import load_tokenizer
from service.types import DecodingOptions, SegmentJob, StepPlan


@pytest.mark.parametrize(
    ("rows", "count", "expected"),
    [
        (15, 1, [(0, 15)]),
        (16, 2, [(0, 8), (8, 16)]),
        (33, 2, [(0, 16), (16, 33)]),
        (40, 4, [(0, 10), (10, 20), (20, 30), (30, 40)]),
        (2, 4, [(0, 1), (1, 2)]),  # never an empty shard
    ],
)
def test_split_rows_covers_the_rows_in_even_ranges(rows, count, expected):
    shards = split_rows(rows, count)
    assert [(s.start, s.stop) for s in shards] == expected
    assert [(s.total, s.rank) for s in shards] == [(len(expected), i) for i in range(len(shards))]


def _shards_of(shards: RowShards, rows: int, min_rows: int) -> list[Shard]:
    seen: list[Shard] = []
    shards.run(rows, min_rows, seen.append)
    return sorted(seen)


def test_run_takes_one_shard_per_min_rows_and_what_the_budget_spares():
    budget = CoreBudget(3)
    shards = RowShards(budget, "test")
    assert [s.total for s in _shards_of(shards, 15, 8)] == [1]  # below 2 x min_rows: whole
    assert [(s.start, s.stop) for s in _shards_of(shards, 20, 8)] == [(0, 10), (10, 20)]
    assert len(_shards_of(shards, 64, 8)) == 3  # no more than the budget
    taken = budget.take(2)  # another run (the other engine thread) holds two threads
    assert [s.total for s in _shards_of(shards, 64, 8)] == [1]  # the one left: no split
    budget.give_back(taken)
    assert len(_shards_of(shards, 64, 8)) == 3  # every run gave its threads back
    assert [s.total for s in _shards_of(RowShards(CoreBudget(1), "test"), 64, 8)] == [1]


def test_run_runs_shards_at_once_and_raises_the_first_error_after_all_returned():
    shards = RowShards(CoreBudget(3), "test")
    threads: dict[int, str] = {}
    barrier = threading.Barrier(3, timeout=10)  # passes only if all three run at once

    def call(shard: Shard) -> None:
        barrier.wait()
        threads[shard.rank] = threading.current_thread().name

    shards.run(30, 10, call)
    assert sorted(threads) == [0, 1, 2] and len(set(threads.values())) == 3

    finished: list[int] = []

    def fail_first(shard: Shard) -> None:
        if shard.rank == 0:
            raise ValueError("shard 0 failed")
        threading.Event().wait(0.2)
        finished.append(shard.rank)

    with pytest.raises(ValueError, match="shard 0 failed"):
        shards.run(30, 10, fail_first)
    assert sorted(finished) == [1, 2]  # the error came after every shard had returned
    assert len(_shards_of(shards, 30, 10)) == 3  # and the threads were given back


def test_sharded_sessions_give_every_row_its_unsplit_result(service_bundle):
    """Encoder and decoder runs of 2 x MIN_SHARD_ROWS + 3 rows of varied sources, split in two
    (threads 2) and whole (threads 1): the same K/V and logits, row by row."""
    bundle = load_bundle(service_bundle)
    tokenizer = load_tokenizer(bundle)
    rows = 2 * MIN_SHARD_ROWS + 3
    words = ["one", "two hundred", "Good morning.", "I have 3 cats.", "See you at ten."]
    sources = [
        tokenizer.encode_source(" ".join(words[: 1 + i % 5]), ("de", "fr")[i % 2])
        for i in range(rows)
    ]
    ids, mask = pad_right(sources, bundle.manifest.special_tokens["pad"])
    outputs = []
    for threads in (1, 2):
        sessions = OrtSessions(bundle, "cpu", threads, parallelism="row_shards")
        cross = sessions.encode(ids, mask)
        cache = sessions.new_cache(cross, rows, 16)
        rng = np.random.default_rng(0)
        steps = []
        for position in range(3):  # three steps: the cache written in place by each shard
            tokens = rng.integers(4, 60, rows)
            steps.append(
                sessions.decode(
                    tokens,
                    np.full(rows, position, dtype=np.int64),
                    src_mask=mask,
                    cache=cache,
                    cross=cross,
                ).logits.copy()
            )
        outputs.append((cross, steps, cache[:, :, :, :3].copy()))
    (cross_1, steps_1, cache_1), (cross_2, steps_2, cache_2) = outputs
    np.testing.assert_allclose(cross_2, cross_1, rtol=0, atol=1e-5)
    np.testing.assert_allclose(cache_2, cache_1, rtol=0, atol=1e-5)
    for logits_2, logits_1 in zip(steps_2, steps_1, strict=True):
        np.testing.assert_allclose(logits_2, logits_1, rtol=0, atol=1e-4)


def test_runner_on_sharded_sessions_translates_as_unsharded(service_bundle):
    """40 segments, greedy and beam, through the runner with threads 2 (rows split while more
    than 2 x MIN_SHARD_ROWS are in flight) and threads 1: the same hypotheses."""
    bundle = load_bundle(service_bundle)
    tokenizer = load_tokenizer(bundle)
    texts = ["Good morning.", "forty-two", "I have 3 cats and 12 dogs.", "See you at 10."]
    sources = [
        tuple(tokenizer.encode_source(f"{t} {n}", lang))
        for n in range(5)
        for t in texts
        for lang in ("de", "fr")
    ]
    greedy, beam = DecodingOptions(1, 40, 1.0, 1), DecodingOptions(2, 40, 1.0, 2)
    jobs = [SegmentJob(i, src, beam if i % 4 == 0 else greedy) for i, src in enumerate(sources)]
    results = []
    for threads in (1, 2):
        sessions = OrtSessions(bundle, "cpu", threads, parallelism="row_shards")
        runner = Seq2SeqRunner(sessions, bundle.manifest.special_tokens)
        plan = StepPlan(admit=(runner.encode(jobs),))
        found: dict[int, list[tuple[int, ...]]] = {}
        while len(found) < len(jobs):
            for update in runner.step(plan).updates:
                if update.hypotheses is not None:
                    found[update.seq_id] = [h.ids for h in update.hypotheses]
            plan = StepPlan()
        results.append(found)
    assert results[1] == results[0]


def test_auto_parallelism_takes_the_faster_one_row_step(service_bundle):
    bundle = load_bundle(service_bundle)
    path = str(bundle.decoder_path)
    choice, (single, intra_op) = choose_parallelism(path, scored_decoder(path), bundle, 2)
    assert single > 0 and intra_op > 0
    assert choice == ("intra_op" if intra_op < (1 - INTRA_OP_MARGIN) * single else "row_shards")
    assert OrtSessions(bundle, "cpu", 2).parallelism in ("row_shards", "intra_op")
    assert OrtSessions(bundle, "cpu", 1).parallelism == "intra_op"  # one thread: nothing to split
