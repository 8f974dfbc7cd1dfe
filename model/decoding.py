"""Decoding in PyTorch: greedy and beam search through the KV cache, and greedy by full recompute
as the reference. The beam search follows the rules of export/reference_decoder.py (sums of
log-probabilities, finished hypotheses ranked by score / length ** length_penalty), so that the
checkpoint and its ONNX bundle can be compared."""

from __future__ import annotations

import math

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


@torch.no_grad()
def beam_decode(
    model: Transformer,
    src_ids: Tensor,
    src_mask: Tensor,
    max_new_tokens: int,
    beam_size: int = 4,
    length_penalty: float = 0.6,
) -> list[list[int]]:
    """Beam search for a batch of sources; per row the best hypothesis (ids, `</s>` included).

    Each row keeps `beam_size` live hypotheses. At each step the best 2 * beam_size extensions of
    a row are walked, best first: one ending in `</s>` is finished, any other becomes a live beam,
    until the row has `beam_size` live beams. A row stops when `beam_size` hypotheses finished;
    at `max_new_tokens` its live beams count as finished.
    """
    batch, k, ids = src_ids.shape[0], beam_size, model.config
    device = src_ids.device
    src_mask = src_mask.repeat_interleave(k, dim=0)  # (B*K, S)
    memory = model.encode(src_ids, src_mask[::k]).repeat_interleave(k, dim=0)  # (B*K, S, D)
    cross = model.cross_kv(memory)
    past = model.empty_kv(batch * k, device)
    scores = torch.full((batch, k), -math.inf, device=device)
    scores[:, 0] = 0.0  # one real beam to start; the others are copies that never win
    tokens = torch.full((batch * k, 1), ids.decoder_start_id, dtype=torch.int64, device=device)
    hypotheses: list[list[list[int]]] = [[[] for _ in range(k)] for _ in range(batch)]
    finished: list[list[tuple[list[int], float]]] = [[] for _ in range(batch)]
    done = [False] * batch
    tgt_mask = torch.ones((batch * k, 0), dtype=torch.int64, device=device)
    for step in range(max_new_tokens):
        positions = torch.full((batch * k, 1), step, dtype=torch.int64, device=device)
        tgt_mask = torch.cat([tgt_mask, torch.ones_like(tokens)], dim=1)  # (B*K, P+1)
        logits, past = model.decode_step(tokens, positions, tgt_mask, src_mask, past, cross)
        logp = torch.log_softmax(logits[:, -1].float(), dim=-1)  # (B*K, V)
        vocab = logp.shape[-1]
        total = (scores[:, :, None] + logp.view(batch, k, vocab)).view(batch, k * vocab)
        best, flat = total.topk(min(2 * k, k * vocab), dim=-1)  # (B, 2K), best first
        # The walk runs on host lists (one copy per step), then the choices go back at once.
        origins = torch.arange(batch * k).view(batch, k)  # kept rows by default
        next_tokens = torch.full((batch, k), ids.pad_id, dtype=torch.int64)
        new_scores = torch.full((batch, k), -math.inf)
        best_rows, flat_rows = best.tolist(), flat.tolist()
        for row in range(batch):
            if done[row]:
                continue
            live: list[list[int]] = []
            for score, index in zip(best_rows[row], flat_rows[row], strict=True):
                beam, token = divmod(index, vocab)
                extended = [*hypotheses[row][beam], token]
                if token == ids.eos_id:
                    finished[row].append((extended, score))
                else:
                    next_tokens[row, len(live)] = token
                    new_scores[row, len(live)] = score
                    origins[row, len(live)] = row * k + beam
                    live.append(extended)
                if len(live) == k or len(finished[row]) >= k:
                    break
            done[row] = len(finished[row]) >= k
            hypotheses[row] = live + [[] for _ in range(k - len(live))]
        if all(done):
            break
        scores = new_scores.to(device)
        keep = origins.view(-1).to(device)
        past = [(key[keep], value[keep]) for key, value in past]
        tokens = next_tokens.view(-1, 1).to(device)
    for row in range(batch):
        if not done[row]:
            finished[row] += [
                (h, s) for h, s in zip(hypotheses[row], scores[row].tolist(), strict=True) if h
            ]
    return [
        max(rows, key=lambda h: h[1] / len(h[0]) ** length_penalty)[0] if rows else []
        for rows in finished
    ]


def _trim(generated: Tensor, eos_id: int) -> list[list[int]]:
    """Rows of (B, N) ids cut after their first `</s>`."""
    rows = []
    for row in generated.tolist():
        rows.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    return rows
