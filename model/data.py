"""Tokenized examples, token-based length-bucketed batches, the resumable batch stream, and the
padded tensors of a batch."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from model.corpus import Pair
from model.shards import TokenizedPairs
from model.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer


@dataclass(frozen=True)
class Example:
    """One tokenized pair."""

    src: list[int]  # <2lang> pieces </s>
    tgt: list[int]  # pieces, without specials


@dataclass
class Batch:
    """Padded tensors for one teacher-forced step."""

    src_ids: Tensor  # (B, S) int64, right-padded with PAD_ID
    src_mask: Tensor  # (B, S) int64, 1 = token
    tgt_in: Tensor  # (B, T) int64, <s> + target, right-padded
    tgt_out: Tensor  # (B, T) int64, target + </s>, PAD_ID where tgt_in is padding
    tgt_mask: Tensor  # (B, T) int64, 1 = token

    @property
    def n_tokens(self) -> int:
        return int(self.src_mask.sum() + self.tgt_mask.sum())

    def to(self, device: torch.device) -> Batch:
        tensors = (getattr(self, f.name) for f in dataclasses.fields(self))
        return Batch(*(t.to(device, non_blocking=True) for t in tensors))


def tokenize(pairs: Sequence[Pair], tokenizer: Tokenizer, max_len: int) -> list[Example]:
    """Tokenize pairs, dropping those longer than `max_len` tokens on either side."""
    examples = []
    for pair in pairs:
        src = tokenizer.encode_source(pair.source, pair.lang)
        tgt = tokenizer.encode_target(pair.target)
        if len(src) <= max_len and len(tgt) + 1 <= max_len:
            examples.append(Example(src, tgt))
    return examples


def pad(rows: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """Right-pad rows into ids (B, L) and a mask (B, L)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD_ID, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
        mask[i, : len(row)] = 1
    return ids, mask


def collate(examples: Sequence[Example]) -> Batch:
    src_ids, src_mask = pad([e.src for e in examples])
    tgt_in, tgt_mask = pad([[BOS_ID, *e.tgt] for e in examples])
    tgt_out, _ = pad([[*e.tgt, EOS_ID] for e in examples])
    return Batch(src_ids, src_mask, tgt_in, tgt_out, tgt_mask)


def plan_batches(
    src_lengths: Sequence[int] | np.ndarray,
    tgt_lengths: Sequence[int] | np.ndarray,
    max_tokens: int,
    rng: random.Random | None = None,
    bucket_width: int = 8,
) -> list[list[int]]:
    """Group pair indices of similar length into batches of at most `max_tokens` padded tokens.

    Pairs fall into buckets of `bucket_width` tokens of length; inside a bucket their order is
    random (when `rng` is given), so a batch mixes languages and kinds of sentence instead of
    holding only pairs of one exact length, which are often of one kind. Buckets are cut greedily
    into batches whose padded source + target size (`</s>` or `<s>` included) fits `max_tokens`,
    and the batch order is shuffled. Lengths are target pieces without specials.
    """
    src = np.asarray(src_lengths, dtype=np.int64)
    tgt = np.asarray(tgt_lengths, dtype=np.int64) + 1
    order = list(range(len(src)))
    if rng is not None:
        rng.shuffle(order)
    keys = ((src + tgt - 1) // bucket_width).tolist()
    order.sort(key=keys.__getitem__)  # stable: random inside a bucket
    src_list, tgt_list = src.tolist(), tgt.tolist()
    batches: list[list[int]] = []
    current: list[int] = []
    src_width = tgt_width = 0
    for i in order:
        new_src, new_tgt = max(src_width, src_list[i]), max(tgt_width, tgt_list[i])
        if current and (new_src + new_tgt) * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, new_src, new_tgt = [], src_list[i], tgt_list[i]
        current.append(i)
        src_width, tgt_width = new_src, new_tgt
    if current:
        batches.append(current)
    if rng is not None:
        rng.shuffle(batches)
    return batches


def length_buckets(
    examples: Sequence[Example],
    max_tokens: int,
    rng: random.Random | None = None,
    bucket_width: int = 8,
) -> list[list[Example]]:
    """`plan_batches` over examples held in memory."""
    plan = plan_batches(
        [len(e.src) for e in examples],
        [len(e.tgt) for e in examples],
        max_tokens,
        rng,
        bucket_width,
    )
    return [[examples[i] for i in batch] for batch in plan]


@dataclass
class DataPosition:
    """Where the batch stream stands: resuming from it replays exactly the batches not yet seen."""

    epoch: int = 0
    batch: int = 0  # index of the next batch in this epoch's plan
    rng_state: list[object] | None = None  # random.Random state at the start of `epoch`

    def to_dict(self) -> dict[str, object]:
        return {"epoch": self.epoch, "batch": self.batch, "rng_state": self.rng_state}

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> DataPosition:
        return cls(**values)  # type: ignore[arg-type]


class BatchStream:
    """The endless stream of global batches (lists of pair indices), reshuffled every epoch.

    The plan depends on the seed, the lengths and `max_tokens` only, never on how many ranks
    share the work, so a run can resume on a different number of processes and see the same
    batches. `position` is saved in checkpoints.
    """

    def __init__(self, pairs: TokenizedPairs, max_tokens: int, seed: int) -> None:
        self.pairs = pairs
        self.max_tokens = max_tokens
        self._src_lengths, self._tgt_lengths = pairs.src_lengths, pairs.tgt_lengths
        self._rng = random.Random(seed)
        self.position = DataPosition(rng_state=_rng_state(self._rng))
        self._plan = self._plan_epoch()

    def _plan_epoch(self) -> list[list[int]]:
        return plan_batches(self._src_lengths, self._tgt_lengths, self.max_tokens, self._rng)

    @property
    def batches_per_epoch(self) -> int:
        return len(self._plan)

    def seek(self, position: DataPosition) -> None:
        assert position.rng_state is not None
        self._rng.setstate(_rng_tuple(position.rng_state))
        self._plan = self._plan_epoch()
        self.position = DataPosition(position.epoch, position.batch, position.rng_state)

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        return self

    def __next__(self) -> tuple[int, list[int]]:
        """(epoch, pair indices of the next global batch)."""
        if self.position.batch >= len(self._plan):
            state = _rng_state(self._rng)
            self._plan = self._plan_epoch()
            self.position = DataPosition(self.position.epoch + 1, 0, state)
        batch = self._plan[self.position.batch]
        self.position.batch += 1
        return self.position.epoch, batch

    def n_tokens(self, indices: Sequence[int]) -> int:
        """Real source + target tokens of a batch (`<s>` counted on the target side)."""
        return int(self._src_lengths[indices].sum() + self._tgt_lengths[indices].sum()) + len(
            indices
        )

    def n_target_tokens(self, indices: Sequence[int]) -> int:
        """Target tokens the loss is taken over (`</s>` included)."""
        return int(self._tgt_lengths[indices].sum()) + len(indices)


def _rng_state(rng: random.Random) -> list[object]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_tuple(state: Sequence[object]) -> tuple[object, ...]:
    version, internal, gauss = state
    assert isinstance(internal, Sequence)
    return (version, tuple(internal), gauss)


def rank_share(batch: Sequence[int], rank: int, world_size: int) -> list[int]:
    """The pairs of a global batch that one rank computes: every `world_size`-th, from `rank`."""
    return list(batch[rank::world_size])


def collate_pairs(pairs: TokenizedPairs, indices: Sequence[int]) -> Batch:
    return collate([Example(*pairs.pair(i)) for i in indices])
