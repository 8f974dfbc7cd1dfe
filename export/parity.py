"""The parity gate: ONNX Runtime against PyTorch on the exported graphs.

Each check returns the worst absolute difference it saw (or the share of equal outputs);
`check_parity` runs them all, and `ParityError` stops an fp32 export that is out of tolerance.
"""

from __future__ import annotations

import numpy as np
import torch

from export.reference_decoder import Encoded, KVList, ReferenceDecoder
from model.data import pad
from model.decoding import greedy_decode
from model.transformer import Transformer

# fp32 logits and K/V, ORT vs PyTorch: the largest absolute difference, divided by the tensor's
# largest magnitude where that is above 1 (float32 rounding grows with the values: a well-trained
# model's logits of 40 differ by ~1e-4 after a dozen layers of exact-in-theory arithmetic).
TOLERANCE = 1e-4
BATCH_TOLERANCE = 1e-5  # a row alone vs the same row inside a batch, both on ORT

# (batch, src_len, longest past, cache capacity): batch 1 and > 1, empty past, a full cache, long
# past; row r of a batch has r slots fewer of past than row 0 (at least 0).
DECODER_SHAPES = [
    (1, 4, 0, 1),
    (2, 9, 0, 3),
    (3, 5, 1, 2),
    (4, 12, 17, 24),
    (2, 6, 5, 6),
    (5, 30, 63, 64),
]
ENCODER_SHAPES = [(1, 1), (1, 5), (4, 13), (8, 40)]


class ParityError(RuntimeError):
    """The exported graphs disagree with PyTorch beyond the tolerance."""


def _diff(ours: np.ndarray, theirs: torch.Tensor) -> float:
    """max |ours - theirs|, relative to max |theirs| when that is above 1 (see TOLERANCE)."""
    reference = theirs.float().numpy()
    scale = max(1.0, float(np.abs(reference).max(initial=0.0)))
    return float(np.abs(ours.astype(np.float32) - reference).max(initial=0.0)) / scale


def _random_batch(
    model: Transformer, batch: int, src_len: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources (B, S) right-padded, row r losing r tokens, and their mask."""
    g = torch.Generator().manual_seed(seed)
    src_mask = torch.ones(batch, src_len, dtype=torch.int64)
    for row in range(1, batch):
        src_mask[row, max(1, src_len - row) :] = 0
    src_ids = torch.randint(4, model.config.vocab_size, (batch, src_len), generator=g) * src_mask
    return src_ids, src_mask


@torch.no_grad()
def encoder_diff(model: Transformer, reference: ReferenceDecoder) -> float:
    """Cross K/V on real source slots (padded slots are never attended to)."""
    worst = 0.0
    for seed, (batch, src_len) in enumerate(ENCODER_SHAPES):
        src_ids, src_mask = _random_batch(model, batch, src_len, seed)
        rows = [ids[: int(m.sum())].tolist() for ids, m in zip(src_ids, src_mask, strict=True)]
        ours = reference.encode(rows).cross  # (B, H, S', Dh), S' >= S: the service's padding
        theirs = [t for kv in model.cross_kv(model.encode(src_ids, src_mask)) for t in kv]
        real = src_mask.bool()[:, None, :, None]  # (B, 1, S, 1)
        for o, t in zip(ours, theirs, strict=True):
            worst = max(worst, _diff(o[:, :, :src_len] * real.numpy(), t * real))
    return worst


@torch.no_grad()
def decoder_diff(model: Transformer, reference: ReferenceDecoder) -> float:
    """Logits and written cache slots for every shape of DECODER_SHAPES: the rows of a batch, of
    different past lengths in one fixed-capacity cache, against PyTorch's `decode_step` on each
    row alone with its own past."""
    config = model.config
    worst = 0.0
    as_graph = reference.float_dtype  # an fp16 graph is fed the fp32 model's values, cast
    for seed, (batch, src_len, longest, capacity) in enumerate(DECODER_SHAPES):
        g = torch.Generator().manual_seed(100 + seed)
        src_ids, src_mask = _random_batch(model, batch, src_len, seed)
        lengths = [max(0, longest - row) for row in range(batch)]  # (B,) past slots of each row
        tokens = torch.randint(4, config.vocab_size, (batch,), generator=g)
        shape = (batch, config.n_heads, capacity, config.head_dim)
        past = [torch.randn(shape, generator=g) for _ in range(2 * config.n_decoder_layers)]
        cross = model.cross_kv(model.encode(src_ids, src_mask))
        flat_cross = [t.numpy().astype(as_graph) for kv in cross for t in kv]
        encoded = Encoded(src_mask.numpy(), flat_cross)
        cache = [p.numpy().astype(as_graph) for p in past]
        logits, present = reference.step(tokens.numpy(), np.array(lengths), encoded, cache)
        for row, length in enumerate(lengths):
            own_past = [
                (past[2 * i][row : row + 1, :, :length], past[2 * i + 1][row : row + 1, :, :length])
                for i in range(config.n_decoder_layers)
            ]
            own_cross = [(k[row : row + 1], v[row : row + 1]) for k, v in cross]
            theirs_logits, theirs_present = model.decode_step(
                tokens[row : row + 1, None],
                torch.tensor([[length]]),
                torch.ones(1, length + 1, dtype=torch.int64),
                src_mask[row : row + 1],
                own_past,
                own_cross,
            )  # (1, 1, V), per layer (1, H, P+1, Dh)
            worst = max(worst, _diff(logits[row], theirs_logits[0, -1]))
            theirs = [t[0] for kv in theirs_present for t in kv]  # 2L x (H, P+1, Dh)
            for ours, t in zip(present, theirs, strict=True):
                worst = max(worst, _diff(ours[row, :, : length + 1], t))
    return worst


@torch.no_grad()
def greedy_agreement(
    model: Transformer, reference: ReferenceDecoder, sources: list[list[int]], max_new_tokens: int
) -> float:
    """Share of sources whose cached greedy tokens on ORT equal PyTorch's exactly."""
    src_ids, src_mask = pad(sources)
    theirs = greedy_decode(model, src_ids, src_mask, max_new_tokens)
    ours = reference.greedy(sources, max_new_tokens)
    return sum(o == t for o, t in zip(ours, theirs, strict=True)) / len(sources)


def _forced_token(row: int, step: int, vocab: int) -> int:
    """Teacher-forced input tokens that differ per row and step (the logits are what we compare)."""
    return (row * 7 + step * 13 + 4) % vocab


def _decode_forced(
    reference: ReferenceDecoder,
    sources: list[list[int]],
    starts: list[int],
    steps: int,
    row_ids: list[int],
) -> list[list[np.ndarray]]:
    """Decode rows that join at different steps (`starts`): until it joins, a row is stepped on
    an empty past, as the service's new rows are.

    Returns per row the logits of each of its own steps."""
    encoded = reference.encode(sources)
    batch = len(sources)
    past: KVList = reference.empty_past(batch, steps + max(starts))
    tokens = np.full(batch, reference.bos_id, dtype=np.int64)
    logits_per_row: list[list[np.ndarray]] = [[] for _ in range(batch)]
    for step in range(steps + max(starts)):
        active = np.array([step >= s for s in starts])
        positions = np.array([max(step - s, 0) for s in starts], dtype=np.int64)
        logits, past = reference.step(tokens, positions, encoded, past)
        for row in np.flatnonzero(active):
            own_step = step - starts[row]
            if own_step < steps:
                logits_per_row[row].append(logits[row])
        vocab = logits.shape[1]
        tokens = np.array(
            [
                _forced_token(row_ids[r], max(step - starts[r], 0), vocab)
                if active[r]
                else reference.bos_id
                for r in range(batch)
            ],
            dtype=np.int64,
        )
    return logits_per_row


def joined_vs_alone_diff(
    reference: ReferenceDecoder, sources: list[list[int]], starts: list[int], steps: int = 6
) -> float:
    """Rows decoded together, row r joining at step starts[r], against the same rows decoded
    alone: the worst logit difference at any step."""
    row_ids = list(range(len(sources)))
    together = _decode_forced(reference, sources, starts, steps, row_ids)
    worst = 0.0
    for row, source in enumerate(sources):
        (alone,) = _decode_forced(reference, [source], [0], steps, [row])
        diffs = (float(np.abs(t - a).max()) for t, a in zip(together[row], alone, strict=True))
        worst = max(worst, *diffs)
    return worst


def check_parity(
    model: Transformer, reference: ReferenceDecoder, sources: list[list[int]], gate: bool
) -> dict[str, float]:
    """Run every check; with `gate`, raise ParityError when one is out of tolerance.

    Args:
        model: the PyTorch model the graphs were exported from, in eval mode.
        reference: a decoder over the exported bundle.
        sources: source id rows for the decoding checks (real sentences when available).
        gate: enforce the fp32 tolerances (off for fp16 and int8, whose figures are reported).
    """
    figures = {
        "encoder_max_abs_diff": encoder_diff(model, reference),
        "decoder_max_abs_diff": decoder_diff(model, reference),
        "greedy_token_agreement": greedy_agreement(model, reference, sources, max_new_tokens=24),
        "batch_vs_alone_max_abs_diff": joined_vs_alone_diff(
            reference, sources[:6], [0] * len(sources[:6])
        ),
        "late_join_max_abs_diff": joined_vs_alone_diff(
            reference, sources[:4], [2 * row for row in range(len(sources[:4]))]
        ),
    }
    if gate:
        failures = [
            f"{name} = {value:.3g} (limit {limit:g})"
            for name, value, limit in (
                ("encoder_max_abs_diff", figures["encoder_max_abs_diff"], TOLERANCE),
                ("decoder_max_abs_diff", figures["decoder_max_abs_diff"], TOLERANCE),
                (
                    "batch_vs_alone_max_abs_diff",
                    figures["batch_vs_alone_max_abs_diff"],
                    BATCH_TOLERANCE,
                ),
                ("late_join_max_abs_diff", figures["late_join_max_abs_diff"], BATCH_TOLERANCE),
            )
            if value > limit
        ]
        if figures["greedy_token_agreement"] < 1.0:
            failures.append(
                f"greedy_token_agreement = {figures['greedy_token_agreement']:.2%} (must be 100%)"
            )
        if failures:
            raise ParityError("ONNX Runtime disagrees with PyTorch: " + "; ".join(failures))
    return figures
