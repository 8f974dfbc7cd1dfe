"""`torch.onnx.export` calls for the encoder and decoder graphs.

Settings follow shared/research/onnx_export.md section 3: the dynamo exporter at opset 18, weights
inside the .onnx file, every dynamic dimension with its own name, example sizes >= 2 and distinct
so that none is specialized to a constant.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.export import Dim

from export.graphs import DecoderGraph, EncoderGraph
from model.transformer import Transformer
from service.bundle import (
    decoder_input_names,
    decoder_output_names,
    encoder_input_names,
    encoder_output_names,
)

OPSET = 18

# Example sizes for tracing: all >= 2 and pairwise distinct (pitfall 4).
BATCH, SRC_LEN, PAST_LEN, TGT_LEN = 3, 7, 5, 2


def _dims() -> dict[str, Dim]:
    return {name: Dim.DYNAMIC for name in ("batch", "src_len", "past_len", "tgt_len", "total_len")}


def export_encoder(model: Transformer, path: Path) -> None:
    ids = torch.randint(4, model.config.vocab_size, (BATCH, SRC_LEN))
    mask = torch.ones(BATCH, SRC_LEN, dtype=torch.int64)
    mask[0, -2:] = 0
    dims = {"0": "batch", "1": "src_len"}
    torch.onnx.export(
        EncoderGraph(model).eval(),
        (ids, mask),
        str(path),
        dynamo=True,
        opset_version=OPSET,
        input_names=encoder_input_names(),
        output_names=encoder_output_names(model.config.n_decoder_layers),
        dynamic_shapes=({0: dims["0"], 1: dims["1"]}, {0: dims["0"], 1: dims["1"]}),
        external_data=False,
        optimize=True,
        verbose=False,
    )


def export_decoder(model: Transformer, path: Path) -> None:
    config = model.config
    dtype = model.embed.tokens.weight.dtype
    n = config.n_decoder_layers
    kv_shape = (BATCH, config.n_heads, PAST_LEN, config.head_dim)
    cross_shape = (BATCH, config.n_heads, SRC_LEN, config.head_dim)
    past = tuple(torch.randn(kv_shape, dtype=dtype) for _ in range(2 * n))
    cross = tuple(torch.randn(cross_shape, dtype=dtype) for _ in range(2 * n))
    args = (
        torch.randint(4, config.vocab_size, (BATCH, TGT_LEN)),
        torch.arange(PAST_LEN, PAST_LEN + TGT_LEN).expand(BATCH, TGT_LEN),
        torch.ones(BATCH, PAST_LEN + TGT_LEN, dtype=torch.int64),
        torch.ones(BATCH, SRC_LEN, dtype=torch.int64),
        past + cross,
    )
    past_dims = {0: "batch", 2: "past_len"}
    cross_dims = {0: "batch", 2: "src_len"}
    dynamic_shapes = (
        {0: "batch", 1: "tgt_len"},
        {0: "batch", 1: "tgt_len"},
        {0: "batch", 1: "total_len"},
        {0: "batch", 1: "src_len"},
        tuple([past_dims] * (2 * n) + [cross_dims] * (2 * n)),
    )
    torch.onnx.export(
        DecoderGraph(model).eval(),
        args,
        str(path),
        dynamo=True,
        opset_version=OPSET,
        input_names=decoder_input_names(n),
        output_names=decoder_output_names(n),
        dynamic_shapes=dynamic_shapes,
        external_data=False,
        optimize=True,
        verbose=False,
    )
