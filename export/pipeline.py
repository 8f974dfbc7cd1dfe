"""The export pipeline: checkpoint -> graphs -> parity gate -> manifest -> checked bundle.

Everything is written to a temporary directory beside the output first and renamed into place
at the end, so a failed export never leaves a bundle that looks valid.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from export.manifest import build_manifest
from export.onnx_export import OPSET, export_decoder, export_encoder
from export.parity import check_parity
from export.quality import score_bundle
from export.quantize import quantize_int8
from export.reference_decoder import ReferenceDecoder
from model.checkpoint import METRICS_FILE, load_model
from model.corpus import Pair
from model.tokenizer import Tokenizer
from model.transformer import Transformer
from service.bundle import (
    DECODER_FILE,
    ENCODER_FILE,
    MANIFEST_FILE,
    TOKENIZER_FILE,
    Bundle,
    Manifest,
    load_bundle,
)

PRECISIONS = ("fp32", "fp16", "int8")
PARITY_SENTENCES = 64


class ExportError(RuntimeError):
    """An export that cannot proceed: the message names the path and the reason."""


def _staging_directory(out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    except OSError as error:
        raise ExportError(f"{out}: cannot write the bundle there ({error.strerror})") from error


def write_graphs(model: Transformer, directory: Path, precision: str) -> None:
    if precision == "fp16":
        half = Transformer(model.config)
        half.load_state_dict(model.state_dict())
        half = half.half().eval()
        export_encoder(half, directory / ENCODER_FILE)
        export_decoder(half, directory / DECODER_FILE)
        return
    export_encoder(model, directory / ENCODER_FILE)
    export_decoder(model, directory / DECODER_FILE)
    if precision == "int8":
        for name in (ENCODER_FILE, DECODER_FILE):
            quantize_int8(directory / name)


def export_bundle(
    checkpoint: Path, out: Path, precision: str, test_pairs: Sequence[Pair], threads: int = 2
) -> dict[str, Any]:
    """Export `checkpoint` to the bundle directory `out`; returns the manifest."""
    model, tokenizer = load_model(checkpoint)
    staging = _staging_directory(out)
    try:
        write_graphs(model, staging, precision)
        tokenizer.save(staging / TOKENIZER_FILE)
        training = _training_metrics(checkpoint)
        manifest = build_manifest(
            staging, out.name, model.config, tokenizer, precision, OPSET, training, {}
        )
        reference = ReferenceDecoder(Bundle(staging, Manifest(manifest)), threads=threads)
        sources = _parity_sources(tokenizer, test_pairs, model.config.vocab_size)
        parity: dict[str, Any] = check_parity(model, reference, sources, gate=precision == "fp32")
        if test_pairs:
            parity["test_split"] = score_bundle(model, tokenizer, reference, test_pairs)
        manifest["parity"] = parity
        (staging / MANIFEST_FILE).write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
        )
        load_bundle(staging)  # exactly the checks the service runs at startup
        _replace(staging, out)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _training_metrics(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / METRICS_FILE
    if not path.is_file():
        return {}
    metrics = json.loads(path.read_text())
    keys = ("split", "corpus", "decoding", "languages", "kinds", "check_set")
    return {key: metrics[key] for key in keys if key in metrics}


def _parity_sources(
    tokenizer: Tokenizer, pairs: Sequence[Pair], vocab_size: int
) -> list[list[int]]:
    """Real test sentences when there are some, otherwise fixed pseudo-random ids."""
    if pairs:
        return [tokenizer.encode_source(p.source, p.lang) for p in pairs[:PARITY_SENTENCES]]
    g = torch.Generator().manual_seed(0)
    return [torch.randint(4, vocab_size, (3 + i % 9,), generator=g).tolist() for i in range(16)]


def _replace(staging: Path, out: Path) -> None:
    """Move the finished bundle into place; an older bundle at `out` is removed only after."""
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)
