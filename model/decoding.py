"""Greedy decoding in PyTorch: through the KV cache, and by full recompute as the reference."""

from __future__ import annotations

import torch
from torch import Tensor

from model.transformer import Transformer


@torch.no_grad()
def greedy_decode(
    model: Transformer, src_ids: Tensor, src_mask: Tensor, max_new_tokens: int
) -> list[list[int]]:
    """Greedy search with the self-attention cache: one new token per row per step.

    Args:
        src_ids: (B, S) right-padded source ids; src_mask: (B, S), 1 = token.
        max_new_tokens: the most tokens generated per row, `</s>` included.

    Returns:
        Per row, the generated ids without `<s>`, ending with `</s>` unless cut by the limit.
    """
    batch, ids = src_ids.shape[0], model.config
    cross = model.cross_kv(model.encode(src_ids, src_mask))
    past = model.empty_kv(batch, src_ids.device)
    start = ids.decoder_start_id
    tokens = torch.full((batch, 1), start, dtype=torch.int64, device=src_ids.device)  # (B, 1)
    tgt_mask = torch.ones((batch, 0), dtype=torch.int64, device=src_ids.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=src_ids.device)
    out: list[Tensor] = []
    for step in range(max_new_tokens):
        positions = torch.full((batch, 1), step, dtype=torch.int64, device=src_ids.device)
        tgt_mask = torch.cat([tgt_mask, torch.ones_like(tokens)], dim=1)  # (B, P+1)
        logits, past = model.decode_step(tokens, positions, tgt_mask, src_mask, past, cross)
        next_tokens = logits[:, -1].argmax(dim=-1)  # (B,)
        next_tokens = torch.where(finished, ids.pad_id, next_tokens)
        out.append(next_tokens)
        finished |= next_tokens == ids.eos_id
        if bool(finished.all()):
            break
        tokens = next_tokens[:, None]
    return _trim(torch.stack(out, dim=1), ids.eos_id)


@torch.no_grad()
def greedy_decode_full(
    model: Transformer, src_ids: Tensor, src_mask: Tensor, max_new_tokens: int
) -> list[list[int]]:
    """Greedy search that re-runs the whole decoder on the whole prefix at every step."""
    batch, ids = src_ids.shape[0], model.config
    start = ids.decoder_start_id
    tgt = torch.full((batch, 1), start, dtype=torch.int64, device=src_ids.device)  # (B, 1)
    finished = torch.zeros(batch, dtype=torch.bool, device=src_ids.device)
    for _ in range(max_new_tokens):
        logits = model(src_ids, src_mask, tgt, torch.ones_like(tgt))  # (B, T, V)
        next_tokens = torch.where(finished, ids.pad_id, logits[:, -1].argmax(dim=-1))
        tgt = torch.cat([tgt, next_tokens[:, None]], dim=1)
        finished |= next_tokens == ids.eos_id
        if bool(finished.all()):
            break
    return _trim(tgt[:, 1:], ids.eos_id)


def _trim(generated: Tensor, eos_id: int) -> list[list[int]]:
    """Rows of (B, N) ids cut after their first `</s>`."""
    rows = []
    for row in generated.tolist():
        rows.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    return rows
