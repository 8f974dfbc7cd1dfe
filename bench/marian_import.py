"""A base-size OPUS-MT import, end to end: build, import, export, serve, measure.

    python -m bench.marian_import [--work DIR] [--seconds 20] [--max-output-tokens 32]

Builds a random-initialised Marian model of the opus-mt-en-de shape (d_model 512, 8 heads, FFN
2048, 6+6 layers, vocabulary 58,101) with transformers, saved as `save_pretrained` does, then
times `python -m model.import_hf` and `python -m export` (fp32, parity-gated and checked against
transformers), prints the bundle's size, and serves it with `bench.service_load` at 1 and 32
clients (greedy; a random model never ends early, so every answer is `--max-output-tokens`
long). Prints a table; results in bench/results/marian_import.json. Never pass/fail.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.service_load import ROOT, write_results
from tests.hf_marian import build_marian_dir

OPUS_MT_EN_DE = {
    "d_model": 512,
    "encoder_attention_heads": 8,
    "decoder_attention_heads": 8,
    "encoder_ffn_dim": 2048,
    "decoder_ffn_dim": 2048,
    "encoder_layers": 6,
    "decoder_layers": 6,
    "max_position_embeddings": 512,
}
VOCAB_SIZE = 58_101


def _timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    return time.perf_counter() - start


def _size_mb(directory: Path) -> float:
    return sum(f.stat().st_size for f in directory.iterdir()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, help="where to build (default: a temporary dir)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-output-tokens", type=int, default=32)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="marian-bench-"))
    python = sys.executable
    start = time.perf_counter()
    hf_dir = build_marian_dir(
        work / "opus-mt-en-de",
        config=OPUS_MT_EN_DE,
        vocab_size=VOCAB_SIZE,
        max_length=512,
        weight_std=None,  # transformers' init: weights of a real model's scale
    )
    figures: dict[str, object] = {"build_s": round(time.perf_counter() - start, 1)}
    checkpoint, bundle = work / "checkpoint", work / "bundle"
    figures["import_s"] = round(
        _timed([python, "-m", "model.import_hf", str(hf_dir), "--out", str(checkpoint)]), 1
    )
    figures["export_s"] = round(
        _timed([python, "-m", "export", "--checkpoint", str(checkpoint), "--out", str(bundle)]), 1
    )
    figures["bundle_mb"] = round(_size_mb(bundle), 1)
    for clients in args.clients:
        name = f"marian_load_{clients}"
        subprocess.run(
            [
                *(python, "-m", "bench.service_load", "--bundle", str(bundle)),
                *("--clients", str(clients), "--seconds", str(args.seconds)),
                *("--target-language", "de", "--batched-only", "--results-name", name),
                *("--max-output-tokens", str(args.max_output_tokens), "--rounds", "2"),
            ],
            check=True,
            cwd=ROOT,
        )
    print(
        f"base-size Marian: import {figures['import_s']} s, export {figures['export_s']} s,"
        f" bundle {figures['bundle_mb']} MB (build of the random model {figures['build_s']} s)"
    )
    write_results("marian_import", [figures])


if __name__ == "__main__":
    main()
