"""Tokenized examples, token-based length-bucketed batches, and the padded tensors of a batch."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from model.corpus import Pair
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


def length_buckets(
    examples: Sequence[Example],
    max_tokens: int,
    rng: random.Random | None = None,
    bucket_width: int = 8,
) -> list[list[Example]]:
    """Group examples of similar length into batches of at most `max_tokens` padded tokens.

    Examples fall into buckets of `bucket_width` tokens of length; inside a bucket their order is
    random (when `rng` is given), so a batch mixes languages and kinds of sentence instead of
    holding only pairs of one exact length, which are often of one kind. Buckets are cut greedily
    into batches whose padded source + target size fits `max_tokens`, and the batch order is
    shuffled.
    """
    order = list(examples)
    if rng is not None:
        rng.shuffle(order)
    order.sort(key=lambda e: (len(e.src) + len(e.tgt)) // bucket_width)  # stable: random inside
    batches: list[list[Example]] = []
    current: list[Example] = []
    src_width = tgt_width = 0
    for example in order:
        new_src, new_tgt = max(src_width, len(example.src)), max(tgt_width, len(example.tgt) + 1)
        if current and (new_src + new_tgt) * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, new_src, new_tgt = [], len(example.src), len(example.tgt) + 1
        current.append(example)
        src_width, tgt_width = new_src, new_tgt
    if current:
        batches.append(current)
    if rng is not None:
        rng.shuffle(batches)
    return batches


def epochs(examples: Sequence[Example], max_tokens: int, seed: int) -> Iterator[tuple[int, Batch]]:
    """Endless (epoch, batch) stream, reshuffled every epoch."""
    rng = random.Random(seed)
    epoch = 0
    while True:
        for group in length_buckets(examples, max_tokens, rng):
            yield epoch, collate(group)
        epoch += 1
