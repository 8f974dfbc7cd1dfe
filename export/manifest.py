"""Builds manifest.json for a bundle: what the service needs to load and check it."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import onnx

from model.config import ModelConfig
from model.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer
from service.bundle import DECODER_FILE, ENCODER_FILE, FORMAT_VERSION, TOKENIZER_FILE, sha256_of

_DTYPES = {
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


def build_manifest(
    directory: Path,
    name: str,
    config: ModelConfig,
    tokenizer: Tokenizer,
    precision: str,
    opset: int,
    training: dict[str, Any],
    parity: dict[str, Any],
) -> dict[str, Any]:
    """The manifest of the bundle staged in `directory`, where graphs and tokenizer already are."""
    files = {f: sha256_of(directory / f) for f in (ENCODER_FILE, DECODER_FILE, TOKENIZER_FILE)}
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": files[DECODER_FILE][:12],
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": config.to_dict(),
        "precision": precision,
        "opset": opset,
        "special_tokens": {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID},
        "source_language": "en",
        "languages": {lang: tokenizer.lang_id(lang) for lang in tokenizer.languages},
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
        "training": training,
        "parity": parity,
    }
