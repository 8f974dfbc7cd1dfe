"""The runner: encode admitted segments, one decoder step for every row, select next tokens.

All segments in flight are rows of one batch. A segment's rows are contiguous (one row under
greedy search, up to beam_size under beam search). Per row the batch keeps its last token and
that token's position (= the slots of its past); the self-attention cache has a fixed capacity,
rows [0, B) in use, row b's past in its slots [0, position_b); the cross K/V are padded on the
right to the longest source, rounded up to a multiple of SOURCE_SLOTS:

    tokens (B,)  positions (B,)  src_mask (B, S)
    cache  2L x (R, H, M, Dh), R >= B, M > max(positions)     cross 2L x (B, H, S, Dh)

`encode(jobs)` runs the encoder on segments about to join (batched by similar source length) and
touches no batch state, so it may run in another thread while steps go on. A `step(plan)` appends
the encoded rows (an empty past: nothing to copy), removes cancelled ones, runs one decoder step,
which writes every row's new key and value into the cache in place, lets each segment's search
pick its next rows, then moves the rows that changed (beam search, finished segments) to the
front of the cache and reports what each segment committed. The encoder never runs twice for a
segment, past steps are never recomputed, and a step copies no cache. No asyncio here.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.kv import KVCache, KVOps
from service.search import DecodingRules, Search, StepLogits, StepScores, make_search
from service.types import EncodedSegments, SegmentJob, SegmentUpdate, StepPlan, StepResult


class ModelSessions(Protocol):
    """The two graphs, as `sessions.OrtSessions` runs them."""

    kv: KVOps

    def encode(self, src_ids: np.ndarray, src_mask: np.ndarray) -> KVCache:
        """(B, S) right-padded ids and mask -> cross K/V 2L x (B, H, S, Dh)."""
        ...

    def new_cache(self, like: KVCache, rows: int, slots: int) -> KVCache:
        """An empty self-attention cache 2L x (rows, H, slots, Dh) like the cross K/V `like`."""
        ...

    def decode(
        self,
        tokens: np.ndarray,
        past_lengths: np.ndarray,
        *,
        src_mask: np.ndarray,
        cache: KVCache,
        cross: KVCache,
    ) -> StepLogits:
        """One step for B = len(tokens) rows: (B,) tokens at positions `past_lengths` (B,),
        (B, S) source mask -> logits (B, V), with their reductions where the graph has them;
        writes each row's key and value into `cache` at slot past_lengths[b]."""
        ...


@dataclass
class _Batch:
    """The rows in flight; see the module docstring for shapes."""

    seq_of_row: np.ndarray  # (B,) int64 seq_id of each row
    tokens: np.ndarray  # (B,) int64 last token of each row
    positions: np.ndarray  # (B,) int64 position of that token = slots of its past
    src_mask: np.ndarray  # (B, S) int64, 0 = right-pad slot
    cross: KVCache  # 2L x (B, H, S, Dh)

    @functools.cached_property
    def cross_fill(self) -> float:
        """Real / total cross-attention source slots (src_mask is never changed in place)."""
        return float(self.src_mask.sum()) / self.src_mask.size


MIN_SLOTS = 32  # the cache's first slot capacity; it doubles when a row needs more
# The source slots of the cross K/V and mask are a multiple of this, so that a row's arithmetic
# never depends on the other rows of its batch. ONNX Runtime's CPU cross-attention (one query
# over S keys) gives a row with L real keys one result for every padded width S > L, but another,
# off by ~1e-7, for S = L when L is 3 mod 4 (measured on the operator alone for L up to 40,
# 2-16 heads of 16-64). A row alone had S = L; in a batch, S = the longest source. In fp32 that
# was a 1e-6 difference in the logits; int8 turned it into 0.04, as it quantizes activations
# and one rounding flipped. With S a multiple of 4, never 3 mod 4, a row's logits are
# bit-identical alone and in any batch (tests/service/test_service_kv.py checks it).
SOURCE_SLOTS = 4
KEEP_CACHE_BYTES = 64 << 20  # an idle runner keeps a cache up to this size for the next rows


def _nbytes(cache: KVCache) -> int:
    """Bytes of a cache: one stacked host array, or a list of device OrtValues."""
    if isinstance(cache, np.ndarray):
        return int(cache.nbytes)
    shape = cache[0].shape()
    itemsize = 2 if cache[0].data_type() == "tensor(float16)" else 4
    return len(cache) * int(np.prod(shape)) * itemsize


def source_width(longest: int) -> int:
    """The source slots for a longest source of `longest` tokens: a multiple of SOURCE_SLOTS."""
    return -(-longest // SOURCE_SLOTS) * SOURCE_SLOTS


def pad_right(
    rows: Sequence[Sequence[int]], pad_id: int, width: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad rows into ids (B, S) and a 0/1 mask (B, S), both int64; S is the longest row,
    or `width` if that is more."""
    width = max(width, *(len(r) for r in rows))
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


def _length_groups(lengths: list[int]) -> list[tuple[int, int]]:
    """Split sorted source lengths into [start, stop) groups encoded together: a group ends where
    a source is over 1.5x the group's shortest, so little encoder work goes into padding."""
    groups, start = [], 0
    for i, length in enumerate(lengths):
        if length > 1.5 * lengths[start]:
            groups.append((start, i))
            start = i
    return [*groups, (start, len(lengths))]


def _join_masks(first: np.ndarray, second: np.ndarray, width: int) -> np.ndarray:
    """Rows of both masks, each followed by zeros up to `width` columns."""
    joined = np.zeros((len(first) + len(second), width), dtype=np.int64)
    joined[: len(first), : first.shape[1]] = first
    joined[len(first) :, : second.shape[1]] = second
    return joined


def _grown(capacity: int, needed: int) -> int:
    """A capacity of at least `needed`: doubled, so that growing costs O(1) copies per row."""
    return capacity if needed <= capacity else max(needed, 2 * capacity)


class Seq2SeqRunner:
    """Continuous-batching decoder over `ModelSessions`.

    Args:
        sessions: the encoder and decoder graphs and the KV operations for their arrays.
        special_tokens: {"pad", "bos", "eos", ...} -> id, from the manifest.
        rules: the bundle's decoding rules, applied to every row.
    """

    def __init__(
        self,
        sessions: ModelSessions,
        special_tokens: dict[str, int],
        rules: DecodingRules | None = None,
    ) -> None:
        self._sessions = sessions
        self._rules = rules or DecodingRules()
        self._kv = sessions.kv
        self._pad_id = special_tokens["pad"]
        self._bos_id = special_tokens["bos"]
        self._eos_id = special_tokens["eos"]
        self._batch: _Batch | None = None
        self._cache: KVCache | None = None  # 2L x (R, H, M, Dh)
        self._capacity = (0, 0)  # (R, M) of the cache
        self._searches: dict[int, Search] = {}  # seq_id -> search, in row order

    @property
    def rows(self) -> int:
        return 0 if self._batch is None else len(self._batch.seq_of_row)

    def reset(self) -> None:
        """Forget every row and the cache (after a runtime failure)."""
        self._batch = None
        self._cache = None
        self._capacity = (0, 0)
        self._searches = {}

    def _empty(self) -> None:
        """The last row finished or left. The cache stays for the next rows (no allocation, no
        rebinding), unless it holds more than KEEP_CACHE_BYTES: an idle runner then gives
        back the memory of a peak it once served."""
        self._batch = None
        self._searches = {}
        if self._cache is not None and _nbytes(self._cache) > KEEP_CACHE_BYTES:
            self._cache = None
            self._capacity = (0, 0)

    def encode(self, jobs: Sequence[SegmentJob]) -> EncodedSegments:
        """Run the encoder on `jobs` (groups of similar source length, one run each); their rows
        join the batch when a later `step` admits the result. Thread-safe: no batch state."""
        ordered = tuple(sorted(jobs, key=lambda job: len(job.src_ids)))
        src_len = source_width(len(ordered[-1].src_ids))
        cross: KVCache | None = None
        seconds = real = padded = 0.0
        for start, stop in _length_groups([len(job.src_ids) for job in ordered]):
            ids, mask = pad_right([job.src_ids for job in ordered[start:stop]], self._pad_id)
            began = time.perf_counter()
            part = self._sessions.encode(ids, mask)  # 2L x (N', H, S', Dh)
            seconds += time.perf_counter() - began
            real, padded = real + float(mask.sum()), padded + mask.size
            cross = part if cross is None else self._kv.join(cross, part, src_len)
        _, src_mask = pad_right([job.src_ids for job in ordered], self._pad_id, src_len)
        cross = self._kv.pad(cross, src_len)
        return EncodedSegments(ordered, cross, src_mask, seconds, real / padded)

    def step(self, plan: StepPlan) -> StepResult:
        """Apply `plan`, then run one decoder step for every row.

        Args:
            plan: encoded segments that join, then cancelled segments that leave.

        Returns:
            What each segment committed, the finished ones' hypotheses, timings and shapes.
        """
        if plan.admit:
            self._admit(plan.admit)
        self._drop(plan.drop)
        if self._batch is None:
            return StepResult((), 0, 0.0)
        batch = self._batch
        cache = self._reserve(len(batch.tokens), int(batch.positions.max()) + 1)
        start = time.perf_counter()
        step_logits = self._sessions.decode(
            batch.tokens, batch.positions, src_mask=batch.src_mask, cache=cache, cross=batch.cross
        )  # (B, V) and reductions; the cache now holds slot positions[b] of every row b
        step_seconds = time.perf_counter() - start
        rows = len(batch.tokens)
        parents, tokens, updates = self._select(step_logits)
        batch.positions = batch.positions + 1
        if len(parents) == 0:
            self._empty()
        else:
            self._reorder(parents, tokens)
        return StepResult(tuple(updates), rows, step_seconds, batch.cross_fill)

    def _reserve(self, rows: int, slots: int) -> KVCache:
        """The cache, grown (doubling) to hold `rows` rows of `slots` slots; growing copies the
        rows in use once."""
        capacity_rows, capacity_slots = self._capacity
        assert self._batch is not None
        if self._cache is None:
            wanted = (rows, max(slots, MIN_SLOTS))
            self._cache = self._sessions.new_cache(self._batch.cross, *wanted)
            self._capacity = wanted
        elif rows > capacity_rows or slots > capacity_slots:
            wanted = (_grown(capacity_rows, rows), _grown(capacity_slots, slots))
            extra = self._kv.zeros(self._cache, wanted[0] - capacity_rows, 0)
            self._cache = self._kv.join(self._cache, extra, wanted[1])
            self._capacity = wanted
        return self._cache

    def _drop(self, seq_ids: frozenset[int]) -> None:
        gone = seq_ids & self._searches.keys()
        if not gone or self._batch is None:
            return
        for seq_id in gone:
            del self._searches[seq_id]
        keep = np.flatnonzero(~np.isin(self._batch.seq_of_row, list(gone)))
        self._take(keep, layout_changed=True)

    def _admit(self, admitted: tuple[EncodedSegments, ...]) -> None:
        """Append the admitted rows: their cross K/V and source masks joined to the batch in one
        copy; their past is empty, so their cache rows need nothing."""
        new: _Batch | None = None
        for encoded in admitted:
            rows = self._new_rows(encoded)
            new = rows if new is None else self._join(new, rows)
        assert new is not None
        self._batch = new if self._batch is None else self._join(self._batch, new)

    def _new_rows(self, encoded: EncodedSegments) -> _Batch:
        """One row per encoded segment: `<s>` at position 0, an empty past."""
        jobs = encoded.jobs
        n = len(jobs)
        for job in jobs:
            self._searches[job.seq_id] = make_search(job.options, self._eos_id, self._rules)
        return _Batch(
            seq_of_row=np.array([job.seq_id for job in jobs], dtype=np.int64),
            tokens=np.full(n, self._bos_id, dtype=np.int64),
            positions=np.zeros(n, dtype=np.int64),
            src_mask=encoded.src_mask,
            cross=encoded.cross,
        )

    def _join(self, old: _Batch, new: _Batch) -> _Batch:
        """`old` rows then `new` rows, the shorter source right-padded."""
        src_len = max(old.src_mask.shape[1], new.src_mask.shape[1])
        return _Batch(
            seq_of_row=np.concatenate([old.seq_of_row, new.seq_of_row]),
            tokens=np.concatenate([old.tokens, new.tokens]),
            positions=np.concatenate([old.positions, new.positions]),
            src_mask=_join_masks(old.src_mask, new.src_mask, src_len),
            cross=self._kv.join(old.cross, new.cross, src_len),
        )

    def _select(
        self, step_logits: StepLogits
    ) -> tuple[np.ndarray, np.ndarray, list[SegmentUpdate]]:
        """Each search advances on its rows' logits (B, V) -> parent rows (B',), tokens (B',)."""
        assert self._batch is not None
        scores = StepScores.of(step_logits, self._rules)
        parents: list[int] = []
        tokens: list[int] = []
        updates: list[SegmentUpdate] = []
        start = 0
        for seq_id, search in list(self._searches.items()):
            rows = search.rows
            origins, next_tokens = search.advance(scores, start)
            parents += origins
            tokens += next_tokens
            if search.done:
                del self._searches[seq_id]
                updates.append(SegmentUpdate(seq_id, search.committed(), search.results()))
            else:
                updates.append(SegmentUpdate(seq_id, search.committed()))
            start += rows
        return np.array(parents, dtype=np.int64), np.array(tokens, dtype=np.int64), updates

    def _reorder(self, parents: np.ndarray, tokens: np.ndarray) -> None:
        """The next batch: row i continues row parents[i] and appends tokens[i]."""
        assert self._batch is not None
        batch = self._batch
        same_rows = len(parents) == len(batch.tokens) and bool(
            (parents == np.arange(len(parents))).all()
        )
        if not same_rows:
            layout_changed = len(parents) != len(batch.tokens) or bool(
                (batch.seq_of_row[parents] != batch.seq_of_row).any()
            )
            self._take(parents, layout_changed)
        self._batch.tokens = tokens

    def _take(self, rows: np.ndarray, layout_changed: bool) -> None:
        """Keep `rows` (N,) of the batch, in that order: their cache rows move to the front (the
        slots in use only), the others' go. The cross K/V of a segment's rows are equal, so they
        are only gathered (trimming source slots no kept row uses) when rows move between
        segments."""
        assert self._batch is not None
        if len(rows) == 0:
            self._empty()
            return
        b = self._batch
        if self._cache is not None:
            used = int(b.positions[rows].max())  # a row's slots in use: its next `position`
            cache = self._reserve(len(rows), used)  # a beam may need more rows than it had
            self._cache = self._kv.gather_rows(cache, rows, used)
        src_mask, cross = b.src_mask, b.cross
        if layout_changed:
            src_mask = b.src_mask[rows]
            last = source_width(int(np.flatnonzero(src_mask.any(axis=0))[-1]) + 1)
            src_mask = src_mask[:, :last]
            cross = self._kv.take(b.cross, rows, 0, last)
        self._batch = _Batch(
            seq_of_row=b.seq_of_row[rows],
            tokens=b.tokens[rows],
            positions=b.positions[rows],
            src_mask=src_mask,
            cross=cross,
        )
