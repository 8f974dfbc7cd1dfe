"""The decoder-step graph, built operator by operator from the model's weights.

`torch.onnx.export` of `decode_step` gave ~170 small nodes per step and a self-attention cache
that grew by a concatenation each step (bundle format 2). This builder writes the same arithmetic
with ONNX Runtime's fused attention operators instead:

  * self-attention: `com.microsoft.GroupQueryAttention` (as many KV heads as query heads) over a
    fixed-capacity cache (B, H, M, Dh). Row b's first `past_lengths[b]` slots hold its past; the
    operator writes the new key and value at slot `past_lengths[b]` and attends over slots
    [0, past_lengths[b]]. When `present` is bound to the same buffer as `past` (the service
    does), the cache is updated in place: no step copies it.
  * cross-attention: `com.microsoft.MultiHeadAttention` over the encoder's K/V (B, H, S, Dh)
    with the source padding mask.
  * every linear layer one `Gemm` (bias and transposed weight folded in), LayerNormalization,
    the tied output projection a `Gemm` on the embedding itself (no transposed copy); the
    operators themselves are written by `export.onnx_builder`.

One step is one token per row (T = 1): x is (B, D) throughout, (B, 1, D) only inside attention.
Graph I/O names follow `service.bundle.decoder_input_names` / `decoder_output_names`; the
parity gate (`export.parity`) checks it against PyTorch's `decode_step`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from export.onnx_builder import CONTRIB, GraphBuilder, finish_model
from model.transformer import DecoderLayer, Transformer
from service.bundle import decoder_input_names, decoder_output_names


class _Names:
    """The graph's I/O names, in contract order."""

    def __init__(self, n_layers: int) -> None:
        inputs = decoder_input_names(n_layers)
        self.inputs = inputs
        self.outputs = decoder_output_names(n_layers)
        self.past = [
            (f"past_key_values.{i}.decoder.key", f"past_key_values.{i}.decoder.value")
            for i in range(n_layers)
        ]
        self.present = [
            (f"present.{i}.decoder.key", f"present.{i}.decoder.value") for i in range(n_layers)
        ]
        self.cross = [
            (f"past_key_values.{i}.encoder.key", f"past_key_values.{i}.encoder.value")
            for i in range(n_layers)
        ]


def _decoder_layer(
    g: GraphBuilder, x: str, layer: DecoderLayer, i: int, names: _Names, pre_norm: bool, act: str
) -> str:
    """One decoder layer on x (B, D) -> (B, D)."""
    heads = layer.self_attn.n_heads
    p = f"layer{i}"
    attn = layer.self_attn
    # self-attention: Q, K and V in one Gemm, (B, 3D) -> (B, 1, 3D) packed for the operator
    qkv_weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
    qkv_bias = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
    h = g.layer_norm(x, layer.norm1, f"{p}.norm1") if pre_norm else x
    qkv = g.dense(h, qkv_weight, qkv_bias, f"{p}.qkv")
    qkv = g.op("Unsqueeze", [qkv, "axis1"], f"{p}.qkv3")
    (context, _, _) = g.op_multi(
        "GroupQueryAttention",
        [qkv, "", "", *names.past[i], "past_lengths", "total_length"],
        [f"{p}.self_context", *names.present[i]],
        domain=CONTRIB,
        num_heads=heads,
        kv_num_heads=heads,
    )  # (B, 1, D), present (B, H, M, Dh)
    context = g.op("Squeeze", [context, "axis1"], f"{p}.self_context2")
    x = g.op("Add", [x, g.linear(context, attn.out_proj, f"{p}.self_out")], f"{p}.residual1")
    if not pre_norm:
        x = g.layer_norm(x, layer.norm1, f"{p}.norm1")
    # cross-attention over the encoder's K/V (B, H, S, Dh), source padding masked
    cross = layer.cross_attn
    h = g.layer_norm(x, layer.norm2, f"{p}.norm2") if pre_norm else x
    query = g.op("Unsqueeze", [g.linear(h, cross.q_proj, f"{p}.cross_q"), "axis1"], f"{p}.q3")
    context = g.op(
        "MultiHeadAttention",
        [query, *names.cross[i], "", "source_mask"],
        f"{p}.cross_context",
        domain=CONTRIB,
        num_heads=heads,
    )  # (B, 1, D)
    context = g.op("Squeeze", [context, "axis1"], f"{p}.cross_context2")
    x = g.op("Add", [x, g.linear(context, cross.out_proj, f"{p}.cross_out")], f"{p}.residual2")
    if not pre_norm:
        x = g.layer_norm(x, layer.norm2, f"{p}.norm2")
    return g.feed_forward(x, layer.ffn, layer.norm3, pre_norm, act, f"{p}.ffn")


@torch.no_grad()
def build_decoder_graph(model: Transformer, gemm: bool = True) -> onnx.ModelProto:
    """The decoder-step graph of `model` (fp32 or fp16, as its weights are); `gemm` off writes
    every linear layer as MatMul + Add (for `export.quantize`)."""
    config = model.config
    torch_dtype = model.embed.tokens.weight.dtype
    dtype = np.dtype(np.float16 if torch_dtype == torch.float16 else np.float32)
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    n = config.n_decoder_layers
    names = _Names(n)
    g = GraphBuilder(dtype, gemm)
    g.constant("axis1", np.array([1], dtype=np.int64), cast=False)
    pre_norm = config.norm_position == "pre"

    embedding = g.constant("embedding", model.embed.tokens.weight)  # (V, D), tied
    x = g.op("Gather", [embedding, "input_ids"], "token_embedding")  # (B, D)
    if model.embed.scale != 1.0:
        scale = g.constant("embedding_scale", np.array(model.embed.scale))
        x = g.op("Mul", [x, scale], "scaled_embedding")
    table = g.constant("position_table", model.embed.positions.table)  # (max_positions, D)
    positions = g.op("Gather", [table, "past_lengths"], "position_embedding")  # (B, D)
    x = g.op("Add", [x, positions], "embedded")
    g.op("Cast", ["encoder_attention_mask"], "source_mask", to=TensorProto.INT32)  # (B, S)

    for i, layer in enumerate(model.decoder_layers):
        assert isinstance(layer, DecoderLayer)
        x = _decoder_layer(g, x, layer, i, names, pre_norm, config.activation)
    if pre_norm:
        assert isinstance(model.decoder_norm, torch.nn.LayerNorm)
        x = g.layer_norm(x, model.decoder_norm, "decoder_norm")
    bias = model.logits_bias if config.logits_bias else None
    if gemm:  # the tied output projection on the embedding itself: no transposed copy
        projection = [x, embedding]
        if bias is not None:
            projection.append(g.constant("logits_bias", bias))
        g.op("Gemm", projection, "logits", transB=1)  # (B, V)
    else:
        logits = g.dense(x, model.embed.tokens.weight, bias, "output_projection")
        g.op("Identity", [logits], "logits")

    heads, head_dim = config.n_heads, config.head_dim
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch"]),
        helper.make_tensor_value_info("past_lengths", TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info("total_length", TensorProto.INT32, []),
        helper.make_tensor_value_info(
            "encoder_attention_mask", TensorProto.INT64, ["batch", "src_len"]
        ),
    ]
    cache_shape: list[str | int] = ["batch", heads, "capacity", head_dim]
    inputs += [
        helper.make_tensor_value_info(name, elem, cache_shape) for kv in names.past for name in kv
    ]
    inputs += [
        helper.make_tensor_value_info(name, elem, ["batch", heads, "src_len", head_dim])
        for kv in names.cross
        for name in kv
    ]
    outputs = [helper.make_tensor_value_info("logits", elem, ["batch", config.vocab_size])]
    outputs += [
        helper.make_tensor_value_info(name, elem, cache_shape)
        for kv in names.present
        for name in kv
    ]
    assert [i.name for i in inputs] == names.inputs and [o.name for o in outputs] == names.outputs
    return finish_model(g, "decoder_step", inputs, outputs)


def export_decoder(model: Transformer, path: Path, gemm: bool = True) -> None:
    """Write the decoder-step graph of `model` to `path` (weights inside the file)."""
    onnx.save(build_decoder_graph(model, gemm), str(path))
