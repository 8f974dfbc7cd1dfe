"""The model's exactness contracts: cache vs recompute, batch vs alone, causality, late joins."""

from __future__ import annotations

import pytest
import torch

from model.config import ModelConfig
from model.data import pad
from model.decoding import greedy_decode, greedy_decode_full
from model.tokenizer import BOS_ID
from model.transformer import Transformer


def sources(
    model: Transformer, lengths: list[int], seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    rows = [
        torch.randint(4, model.config.vocab_size, (n,), generator=generator).tolist()
        for n in lengths
    ]
    return pad(rows)


def test_presets_match_the_paper_where_named() -> None:
    base = ModelConfig.from_name("base")
    assert (
        base.d_model,
        base.n_heads,
        base.d_ff,
        base.n_encoder_layers,
        base.n_decoder_layers,
    ) == (
        512,
        8,
        2048,
        6,
        6,
    )
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        ModelConfig.from_name("huge")
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=30, n_heads=4)


@pytest.mark.parametrize("lengths", [[7], [3, 9, 5, 1]])
def test_cached_greedy_equals_full_recompute(tiny_model: Transformer, lengths: list[int]) -> None:
    src_ids, src_mask = sources(tiny_model, lengths)
    cached = greedy_decode(tiny_model, src_ids, src_mask, max_new_tokens=16)
    full = greedy_decode_full(tiny_model, src_ids, src_mask, max_new_tokens=16)
    assert cached == full
    assert all(len(row) > 1 for row in cached)  # really decoded several steps


def test_sentence_alone_equals_sentence_in_padded_batch(tiny_model: Transformer) -> None:
    src_ids, src_mask = sources(tiny_model, [4, 11, 6])
    tgt = torch.randint(
        4, tiny_model.config.vocab_size, (3, 5), generator=torch.Generator().manual_seed(1)
    )
    tgt_mask = torch.ones_like(tgt)
    tgt_mask[0, 3:] = 0  # row 0 has a shorter, right-padded target
    with torch.no_grad():
        batched = tiny_model(src_ids, src_mask, tgt, tgt_mask)
        alone = tiny_model(src_ids[:1, :4], src_mask[:1, :4], tgt[:1, :3], tgt_mask[:1, :3])
    torch.testing.assert_close(batched[0, :3], alone[0], atol=1e-5, rtol=0)


def test_causal_mask_hides_the_future(tiny_model: Transformer) -> None:
    src_ids, src_mask = sources(tiny_model, [6])
    tgt = torch.tensor([[BOS_ID, 10, 11, 12, 13, 14]])
    changed = tgt.clone()
    changed[0, 4] = 99
    with torch.no_grad():
        before = tiny_model(src_ids, src_mask, tgt, torch.ones_like(tgt))
        after = tiny_model(src_ids, src_mask, changed, torch.ones_like(changed))
    torch.testing.assert_close(before[0, :4], after[0, :4], atol=0, rtol=0)
    assert not torch.allclose(before[0, 4:], after[0, 4:])


def test_row_joining_late_with_left_padded_cache(tiny_model: Transformer) -> None:
    """A row with 2 past slots decoded beside a row with 5: its cache is left-padded and masked."""
    src_ids, src_mask = sources(tiny_model, [5, 8])
    model = tiny_model
    with torch.no_grad():
        cross = model.cross_kv(model.encode(src_ids, src_mask))
        prefixes = [torch.tensor([[BOS_ID, 20, 21, 22, 23]]), torch.tensor([[BOS_ID, 30]])]
        caches, expected = [], []
        for row, prefix in enumerate(prefixes):
            row_cross = [(k[row : row + 1], v[row : row + 1]) for k, v in cross]
            n = prefix.shape[1]
            _, past = model.decode_step(
                prefix,
                torch.arange(n)[None],
                torch.ones(1, n, dtype=torch.int64),
                src_mask[row : row + 1],
                model.empty_kv(1),
                row_cross,
            )
            caches.append(past)
            logits, _ = model.decode_step(
                torch.tensor([[40]]),
                torch.tensor([[n]]),
                torch.ones(1, n + 1, dtype=torch.int64),
                src_mask[row : row + 1],
                past,
                row_cross,
            )
            expected.append(logits)
        # Batch the two rows: left-pad row 1's cache from 2 to 5 slots.
        past_kv = []
        for (k0, v0), (k1, v1) in zip(caches[0], caches[1], strict=True):
            pad_slots = torch.zeros(1, k1.shape[1], 3, k1.shape[3])
            past_kv.append(
                (
                    torch.cat([k0, torch.cat([pad_slots, k1], 2)]),
                    torch.cat([v0, torch.cat([pad_slots, v1], 2)]),
                )
            )
        tgt_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1]])
        logits, present = model.decode_step(
            torch.tensor([[40], [40]]), torch.tensor([[5], [2]]), tgt_mask, src_mask, past_kv, cross
        )
    assert present[0][0].shape[2] == 6
    torch.testing.assert_close(logits[0], expected[0][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[1], expected[1][0], atol=1e-5, rtol=0)
