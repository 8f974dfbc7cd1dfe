"""Builds manifest.json for a bundle: what the service needs to load and check it."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import onnx

from model.checkpoint import CheckpointConfig, CheckpointTokenizer
from model.tokenizer import Tokenizer
from service.bundle import DECODER_FILE, ENCODER_FILE, FORMAT_VERSION, TOKENIZER_FILES, sha256_of

# A model trained here: greedy by default, the service's per-source output cap, native beam rules.
NATIVE_DECODING: dict[str, Any] = {
    "beam_size": 1,
    "max_new_tokens": 0,
    "length_penalty": 1.0,
    "n_best": 1,
    "rules": {
        "suppress_tokens": [],
        "forced_eos": False,
        "renormalize": False,
        "beam": "native",
        "early_stopping": False,
    },
}

_DTYPES = {
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
}


def graph_io(path: Path) -> dict[str, Any]:
    """Names, dtypes and shapes (ints for fixed dims, names for dynamic ones) of a graph's I/O."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def describe(values: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": v.name,
                "dtype": _DTYPES.get(
                    v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type)
                ),
                "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            }
            for v in values
        ]

    return {"file": path.name, "inputs": describe(graph.input), "outputs": describe(graph.output)}


def target_languages(
    checkpoint: CheckpointConfig, tokenizer: CheckpointTokenizer
) -> dict[str, int | None]:
    """Target language -> its language token id; None for the only target of a model without."""
    if isinstance(tokenizer, Tokenizer):
        return {lang: tokenizer.lang_id(lang) for lang in tokenizer.languages}
    if tokenizer.languages:
        return dict(sorted(tokenizer.languages.items()))
    return dict.fromkeys(checkpoint.languages)


def build_manifest(
    directory: Path,
    name: str,
    checkpoint: CheckpointConfig,
    tokenizer: CheckpointTokenizer,
    precision: str,
    opset: int,
    training: dict[str, Any],
    parity: dict[str, Any],
) -> dict[str, Any]:
    """The manifest of the bundle staged in `directory`, where graphs and tokenizer already are."""
    config = checkpoint.model
    names = (ENCODER_FILE, DECODER_FILE, *TOKENIZER_FILES[checkpoint.tokenizer])
    files = {f: sha256_of(directory / f) for f in names}
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": files[DECODER_FILE][:12],
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": config.to_dict(),
        "precision": precision,
        "opset": opset,
        "tokenizer": checkpoint.tokenizer,
        "special_tokens": {
            "pad": config.pad_id,
            "unk": config.unk_id,
            "bos": config.decoder_start_id,
            "eos": config.eos_id,
        },
        "source_language": checkpoint.source_language,
        "languages": target_languages(checkpoint, tokenizer),
        "decoding": checkpoint.generation or NATIVE_DECODING,
        "limits": {
            # A source holds its language token and </s>; positions index the sinusoidal table.
            "max_source_tokens": config.max_positions,
            "max_target_tokens": config.max_positions,
        },
        "graphs": {
            "encoder": graph_io(directory / ENCODER_FILE),
            "decoder": graph_io(directory / DECODER_FILE),
        },
        "files": files,
        "origin": checkpoint.origin,
        "training": training,
        "parity": parity,
    }
