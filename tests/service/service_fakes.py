"""Test doubles for the service: a fake runner for scheduler tests, toy sessions for the runner.

`FakeRunner` follows the `scheduler.StepRunner` contract without a model: a segment "translates"
to `len(src_ids)` tokens (ids 10, 11, ...) then `</s>` (3), cut at max_new_tokens; every encoder
run and every step can sleep to simulate compute, and the runner records what each encoder run
took and what each step admitted, dropped and ran.

`ToySessions` follows the runner's `ModelSessions` contract with a small numpy "model" whose next
token depends on every unmasked slot of the row's past and source, so a row that reads another
row's cache, a stale slot or a wrong mask decodes differently; outputs are long and varied.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from service.kv import StackedKV
from service.search import StepLogits
from service.types import (
    DecodingOptions,
    EncodedSegments,
    Hypothesis,
    SegmentJob,
    SegmentUpdate,
    StepPlan,
    StepResult,
)

EOS = 3


def fake_output(src_ids: tuple[int, ...], max_new_tokens: int, length: int = 0) -> tuple[int, ...]:
    """What FakeRunner produces for a source: `length` (default: len(src_ids)) tokens, `</s>`."""
    return (*range(10, 10 + (length or len(src_ids))), EOS)[:max_new_tokens]


@dataclass
class FakeRunner:
    """A `StepRunner` without a model."""

    step_seconds: float = 0.0
    encode_seconds: float = 0.0
    fail_at_step: int | None = None
    fail_encode: int | None = None  # the encoder run with this index (0-based) raises
    fail_encode_every: int = 0  # when set: every N-th encoder run raises
    long_sources: int = 0  # when set: sources of more tokens get 100-token outputs, others 1
    encoded: list[tuple[int, ...]] = field(default_factory=list)  # seq_ids of each encoder run
    encoded_by: list[str] = field(default_factory=list)  # the thread of each encoder run
    encoding: int = 0  # encoder runs under way (both engine threads may run one)
    steps: list[StepPlan] = field(default_factory=list)  # every plan it received
    rows_per_step: list[int] = field(default_factory=list)
    admitted: list[int] = field(default_factory=list)  # seq_ids, in admission order
    live: dict[int, tuple[SegmentJob, list[int]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def encode(self, jobs: Sequence[SegmentJob]) -> EncodedSegments:
        with self._lock:
            self.encoding += 1
        try:
            self.encoded.append(tuple(job.seq_id for job in jobs))
            self.encoded_by.append(threading.current_thread().name)
            if self.encode_seconds:
                time.sleep(self.encode_seconds)
            run = len(self.encoded) - 1
            every = self.fail_encode_every
            if run == self.fail_encode or (every and run % every == every - 1):
                raise RuntimeError("injected encoder failure")
            return EncodedSegments(tuple(jobs), None, None, self.encode_seconds, 1.0)
        finally:
            with self._lock:
                self.encoding -= 1

    def step(self, plan: StepPlan) -> StepResult:
        self.steps.append(plan)
        if self.fail_at_step is not None and len(self.steps) == self.fail_at_step:
            raise RuntimeError("injected failure")
        for encoded in plan.admit:
            for job in encoded.jobs:
                self.admitted.append(job.seq_id)
                self.live[job.seq_id] = (job, [])
        for seq_id in plan.drop:
            self.live.pop(seq_id, None)
        rows = sum(job.rows for job, _ in self.live.values())
        self.rows_per_step.append(rows)
        if self.step_seconds:
            time.sleep(self.step_seconds)
        return StepResult(tuple(self._advance()), rows, self.step_seconds)

    def _advance(self) -> list[SegmentUpdate]:
        updates = []
        for seq_id, (job, out) in list(self.live.items()):
            target = fake_output(job.src_ids, job.options.max_new_tokens, self._length(job))
            out.append(target[len(out)])
            if len(out) == len(target):
                del self.live[seq_id]
                hyps = tuple(Hypothesis(tuple(out), -1.0) for _ in range(job.options.n_best))
                updates.append(SegmentUpdate(seq_id, tuple(out), hyps))
            else:
                updates.append(SegmentUpdate(seq_id, tuple(out)))
        return updates

    def _length(self, job: SegmentJob) -> int:
        if not self.long_sources:
            return 0
        return 100 if len(job.src_ids) > self.long_sources else 1

    def reset(self) -> None:
        self.live.clear()


GREEDY = DecodingOptions(beam_size=1, max_new_tokens=64, length_penalty=1.0, n_best=1)


def source(length: int) -> tuple[int, ...]:
    """A fake source whose fake translation has `length` tokens before `</s>`."""
    return tuple(range(100, 100 + length))


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll `predicate` every millisecond; fail after `timeout_s`."""
    for _ in range(int(timeout_s * 1000)):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached in time")


class ToySessions:
    """`runner.ModelSessions` in numpy: 2 layers, 1 head, head size 1, a vocabulary of 64.

    The cache holds exact small integers (in float32): a past slot is 7 * token + position, a
    source slot its id; a row's next-token logits hash the sums of its whole past (the slots
    [0, position]) and source, and `</s>` comes exactly once the position reaches a length set by
    the source. The decoder writes the new slot in place, as the real graph does."""

    vocab = 64

    def __init__(self) -> None:
        self.kv = StackedKV()

    def encode(self, src_ids: np.ndarray, src_mask: np.ndarray) -> np.ndarray:
        slots = (src_ids * src_mask).astype(np.float32)[:, None, :, None]  # (B, 1, S, 1)
        return np.stack([slots * (k + 1) for k in range(4)])  # (2L, B, H, S, Dh)

    def new_cache(self, like: np.ndarray, rows: int, slots: int) -> np.ndarray:
        # not zeros: a row must never read a slot it has not written
        return np.full((len(like), rows, 1, slots, 1), 12_345.0, dtype=np.float32)

    def decode(
        self,
        tokens: np.ndarray,
        past_lengths: np.ndarray,
        *,
        src_mask: np.ndarray,
        cache: np.ndarray,
        cross: np.ndarray,
    ) -> StepLogits:
        rows = len(tokens)
        new = (7 * tokens + past_lengths).astype(np.float32)  # (B,)
        for k in range(len(cache)):
            cache[k, np.arange(rows), 0, past_lengths, 0] = new * (k + 1)
        slots = np.arange(cache.shape[3])
        own = slots[None, :] <= past_lengths[:, None]  # (B, M): a row's past and its new slot
        # a slot counts when it is the row's, even when its value is 0 (as in softmax attention)
        history = ((cache[3, :rows, 0, :, 0] + 1) * own).sum(axis=1).astype(np.int64)  # (B,)
        source = ((cross[2][:, 0, :, 0] + 1) * src_mask).sum(axis=1).astype(np.int64)  # (B,)
        state = (history * 1_000_003 + source * 7_919 + past_lengths) % 1_000_000_007
        ids = np.arange(self.vocab, dtype=np.int64)
        hashed = (state[:, None] * 2_654_435_761 + ids * 40_503) % 997  # (B, V)
        logits: np.ndarray = hashed.astype(np.float32) / 50
        ended = past_lengths >= 8 + source % 25  # (B,)
        logits[:, EOS] = np.where(ended, 100.0, -100.0)
        return StepLogits(logits)  # no reductions: StepScores computes them
