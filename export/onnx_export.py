"""`torch.onnx.export` of the encoder graph (the decoder-step graph is built operator by operator
in `export.decoder_graph`).

Settings follow shared/research/onnx_export.md section 3: the dynamo exporter at opset 18, weights
inside the .onnx file, every dynamic dimension with its own name, example sizes >= 2 and distinct
so that none is specialized to a constant.
"""

from __future__ import annotations

from pathlib import Path

import torch

from export.graphs import EncoderGraph
from model.transformer import Transformer
from service.bundle import encoder_input_names, encoder_output_names

OPSET = 18

# Example sizes for tracing: all >= 2 and pairwise distinct (pitfall 4).
BATCH, SRC_LEN = 3, 7


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
