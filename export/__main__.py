"""Export a checkpoint to a model bundle, gated by parity with PyTorch.

    python -m export --checkpoint DIR --out models/NAME [--precision fp32|fp16|int8]

Load -> export the two graphs -> (quantize) -> check parity -> score on the test split -> write
the manifest -> verify the bundle as the service will -> rename into place.

An imported checkpoint (`python -m model.import_hf`) is scored on a test split only when one is
named with --corpus: the built-in corpus is this repository's own language pairs. It is compared
with transformers' own model when transformers is installed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from export.parity import ParityError
from export.pipeline import PRECISIONS, ExportError, export_bundle
from model.checkpoint import load_config, load_model
from model.cli import add_corpus_arguments, corpus_from_args, run_cli
from service.bundle import BundleError


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument(
        "--out", type=Path, required=True, help="bundle directory, e.g. models/default"
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    add_corpus_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_model(args.checkpoint)  # fail on a bad checkpoint before building the corpus
    imported = bool(load_config(args.checkpoint).origin)
    test_pairs = [] if imported and args.corpus == "builtin" else corpus_from_args(args).test
    manifest = export_bundle(args.checkpoint, args.out, args.precision, test_pairs, args.threads)
    print(f"bundle written to {args.out} ({args.precision}, version {manifest['version']})")
    print(json.dumps(manifest["parity"], indent=2))


if __name__ == "__main__":
    run_cli(main, extra_errors=(ExportError, ParityError, BundleError))
