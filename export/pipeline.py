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

from export.decoder_graph import export_decoder
from export.encoder_graph import export_encoder
from export.hf_parity import transformers_logits_diff
from export.manifest import build_manifest
from export.onnx_builder import OPSET
from export.parity import TOLERANCE, ParityError, check_parity
from export.quality import score_bundle
from export.quantize import quantize_int8
from export.reference_decoder import ReferenceDecoder
from model.checkpoint import METRICS_FILE, CheckpointTokenizer, load_config, load_model
from model.corpus import Pair
from model.transformer import Transformer
from service.bundle import (
    DECODER_FILE,
    ENCODER_FILE,
    MANIFEST_FILE,
    TOKENIZER_FILES,
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
    export_encoder(model, directory / ENCODER_FILE, gemm=precision != "int8")
    export_decoder(model, directory / DECODER_FILE, gemm=precision != "int8")
    if precision == "int8":
        for name in (ENCODER_FILE, DECODER_FILE):
            quantize_int8(directory / name)


def export_bundle(
    checkpoint: Path, out: Path, precision: str, test_pairs: Sequence[Pair], threads: int = 2
) -> dict[str, Any]:
    """Export `checkpoint` to the bundle directory `out`; returns the manifest."""
    model, tokenizer = load_model(checkpoint)
    saved = load_config(checkpoint)
    staging = _staging_directory(out)
    try:
        write_graphs(model, staging, precision)
        for name in TOKENIZER_FILES[saved.tokenizer]:
            shutil.copyfile(checkpoint / name, staging / name)
        training = _training_metrics(checkpoint)
        manifest = build_manifest(
            staging, out.name, saved, tokenizer, precision, OPSET, training, {}
        )
        reference = ReferenceDecoder(Bundle(staging, Manifest(manifest)), threads=threads)
        sources = _parity_sources(tokenizer, test_pairs, model.config.vocab_size)
        parity: dict[str, Any] = check_parity(model, reference, sources, gate=precision == "fp32")
        if saved.origin:
            parity |= _against_transformers(model, saved.origin, gate=precision == "fp32")
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


def _against_transformers(
    model: Transformer, origin: dict[str, Any], gate: bool
) -> dict[str, float]:
    """An imported model's logits against transformers' own model of the directory it came
    from, when transformers is installed and the directory is still there."""
    diff = transformers_logits_diff(model, Path(origin.get("path", "")))
    if diff is None:
        return {}
    if gate and diff > TOLERANCE:
        raise ParityError(
            f"the imported model disagrees with transformers: logits differ by {diff:.3g}"
            f" (limit {TOLERANCE:g})"
        )
    return {"transformers_max_abs_diff": diff}


def _parity_sources(
    tokenizer: CheckpointTokenizer, pairs: Sequence[Pair], vocab_size: int
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
