"""Decoder-step micro-benchmark: the cost of one generated token, by implementation and position.

    python -m bench.decoder_step --bundle models/default --checkpoint checkpoints/default
                                 [--device cpu|cuda] [--batches 1,8,32] [--out FILE]

For each batch and output positions 8 and 64, times one decoder step of
  * ort-step:     decoder.onnx as the service runs it (`OrtSessions.decode`: IOBinding, the
                  self-attention cache written in place, M = 128 slots of capacity),
  * torch-cached: PyTorch eager `decode_step` with the cache, same weights, same device (in
                  the bundle's precision: an fp16 bundle is compared with the model in fp16),
and prints the median step time and the tokens per second it implies (batch / step). On CUDA
the ONNX Runtime path is the service's: the CUDA provider, the caches on the GPU as OrtValues,
IOBinding (bench/gpu.sh runs it for fp32 and fp16).
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

from model.checkpoint import load_model
from model.transformer import Transformer
from service.bundle import load_bundle
from service.runner import pad_right
from service.sessions import OrtSessions

BATCHES = (1, 8, 32)
POSITIONS = (8, 64)
SRC_LEN = 16
CAPACITY = 128


def median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: allocations, ORT's first-run shape work
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def ort_step(sessions: OrtSessions, pad_id: int, batch: int, position: int) -> Callable[[], object]:
    """One step of `batch` rows at `position`, on the service's own session path."""
    rng = np.random.default_rng(0)
    src_ids, src_mask = pad_right([[4 + (i % 50)] * SRC_LEN for i in range(batch)], pad_id)
    cross = sessions.encode(src_ids, src_mask)
    cache = sessions.new_cache(cross, batch, CAPACITY)
    tokens = rng.integers(4, 100, batch, dtype=np.int64)
    lengths = np.full(batch, position, dtype=np.int64)
    return functools.partial(
        sessions.decode, tokens, lengths, src_mask=src_mask, cache=cache, cross=cross
    )


@torch.no_grad()
def torch_step(model: Transformer, batch: int, past: int) -> Callable[[], object]:
    config = model.config
    device, dtype = model.embed.tokens.weight.device, model.embed.tokens.weight.dtype
    src_ids = torch.randint(4, 100, (batch, SRC_LEN), device=device)
    src_mask = torch.ones_like(src_ids)
    cross = model.cross_kv(model.encode(src_ids, src_mask))
    shape = (batch, config.n_heads, past, config.head_dim)
    cache = [
        (
            torch.randn(shape, device=device, dtype=dtype),
            torch.randn(shape, device=device, dtype=dtype),
        )
        for _ in range(config.n_decoder_layers)
    ]
    ids = torch.randint(4, 100, (batch, 1), device=device)
    positions = torch.full((batch, 1), past, device=device)
    tgt_mask = torch.ones(batch, past + 1, dtype=torch.int64, device=device)

    def run() -> object:
        with torch.no_grad():
            logits = model.decode_step(ids, positions, tgt_mask, src_mask, cache, cross)[0]
            return logits.cpu()  # the logits on the host, as the service needs them (a sync)

    return run


def measure(
    sessions: OrtSessions,
    pad_id: int,
    model: Transformer,
    repeats: int,
    batches: tuple[int, ...] = BATCHES,
) -> list[dict[str, Any]]:
    rows = []
    for batch in batches:
        for position in POSITIONS:
            runs: dict[str, Callable[[], object]] = {
                "ort-step": ort_step(sessions, pad_id, batch, position),
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
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="e.g. 1,8,32")
    parser.add_argument("--out", type=Path, default=Path("bench/results/decoder_step.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle)
    sessions = OrtSessions(bundle, args.device, args.threads)
    model, _ = load_model(args.checkpoint)
    model = model.to(args.device).eval()
    if bundle.manifest.precision == "fp16":
        model = model.half()
    batches = tuple(int(b) for b in args.batches.split(","))
    pad_id = bundle.manifest.special_tokens["pad"]
    rows = measure(sessions, pad_id, model, args.repeats, batches)
    print(f"{bundle.path} ({bundle.manifest.precision}) on {sessions.provider}")
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "device": args.device,
        "provider": sessions.provider,
        "precision": bundle.manifest.precision,
        "threads": args.threads,
        "rows": rows,
    }
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
