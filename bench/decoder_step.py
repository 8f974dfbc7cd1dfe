"""Decoder-step micro-benchmark: the cost of one generated token, by implementation and position.

    python -m bench.decoder_step --bundle models/default --checkpoint checkpoints/default

For batch 1, 8 and 32 and output positions 8 and 64, times one decoder step of
  * ort-cached:  decoder.onnx with the self-attention cache (P = position past slots, T = 1),
  * ort-full:    the same graph, no cache: the whole prefix recomputed (P = 0, T = position+1),
  * torch-cached: PyTorch eager `decode_step` with the cache,
and prints the median step time and the tokens per second it implies (batch / step).
Writes bench/results/decoder_step.json. Timings, not pass/fail.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.reference_decoder import Encoded, ReferenceDecoder
from model.checkpoint import load_model
from model.transformer import Transformer
from service.bundle import load_bundle

BATCHES = (1, 8, 32)
POSITIONS = (8, 64)
SRC_LEN = 16


def median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: allocations, ORT's first-run shape work
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def ort_feed(
    reference: ReferenceDecoder, encoded: Encoded, batch: int, past: int, new: int
) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    heads, head_dim = reference.kv_shape
    feed: dict[str, Any] = {
        "input_ids": rng.integers(4, 100, (batch, new), dtype=np.int64),
        "position_ids": np.broadcast_to(np.arange(past, past + new), (batch, new)).astype(np.int64),
        "decoder_attention_mask": np.ones((batch, past + new), dtype=np.int64),
        "encoder_attention_mask": encoded.src_mask,
    }
    for i in range(reference.n_layers):
        for kv in ("key", "value"):
            shape = (batch, heads, past, head_dim)
            feed[f"past_key_values.{i}.decoder.{kv}"] = rng.standard_normal(shape).astype(
                reference.float_dtype
            )
            feed[f"past_key_values.{i}.encoder.{kv}"] = encoded.cross[2 * i + (kv == "value")]
    return feed


@torch.no_grad()
def torch_step(model: Transformer, batch: int, past: int) -> Callable[[], object]:
    config = model.config
    src_ids = torch.randint(4, 100, (batch, SRC_LEN))
    src_mask = torch.ones_like(src_ids)
    cross = model.cross_kv(model.encode(src_ids, src_mask))
    shape = (batch, config.n_heads, past, config.head_dim)
    cache = [(torch.randn(shape), torch.randn(shape)) for _ in range(config.n_decoder_layers)]
    ids = torch.randint(4, 100, (batch, 1))
    positions = torch.full((batch, 1), past)
    tgt_mask = torch.ones(batch, past + 1, dtype=torch.int64)

    def run() -> object:
        with torch.no_grad():
            return model.decode_step(ids, positions, tgt_mask, src_mask, cache, cross)

    return run


def measure(reference: ReferenceDecoder, model: Transformer, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for batch in BATCHES:
        encoded = reference.encode([[4 + (i % 50)] * SRC_LEN for i in range(batch)])
        for position in POSITIONS:
            cached = ort_feed(reference, encoded, batch, position, 1)
            full = ort_feed(reference, encoded, batch, 0, position + 1)
            runs: dict[str, Callable[[], object]] = {
                "ort-cached": functools.partial(reference.decoder.run, None, cached),
                "ort-full": functools.partial(reference.decoder.run, None, full),
                "torch-cached": torch_step(model, batch, position),
            }
            for name, run in runs.items():
                ms = median_ms(run, repeats)
                rows.append(
                    {
                        "impl": name,
                        "batch": batch,
                        "position": position,
                        "step_ms": ms,
                        "tokens_per_s": batch / ms * 1000,
                    }
                )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'impl':<14}{'batch':>6}{'position':>10}{'step ms':>10}{'tokens/s':>12}")
    for r in rows:
        print(
            f"{r['impl']:<14}{r['batch']:>6}{r['position']:>10}{r['step_ms']:>10.3f}{r['tokens_per_s']:>12,.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=Path("models/default"))
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/default"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("bench/results/decoder_step.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reference = ReferenceDecoder(load_bundle(args.bundle), threads=args.threads)
    model, _ = load_model(args.checkpoint)
    rows = measure(reference, model, args.repeats)
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
