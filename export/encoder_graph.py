"""The encoder graph, built operator by operator from the model's weights.

input_ids (B, S), attention_mask (B, S) -> the cross-attention K/V of every decoder layer,
2L x (B, H, S, Dh): what the decoder step attends to, computed once per source. As in
`export.decoder_graph`, the attention is ONNX Runtime's fused `com.microsoft.MultiHeadAttention`
(source padding masked by the attention mask), Q, K and V come from one linear layer, and each
decoder layer's cross K and V from one more. x is (N, D) with N = B * S token rows, so that every
linear layer is one `Gemm` over all of them with its bias (and ReLU, which ONNX Runtime fuses)
in the same pass (`gemm` off: MatMul + Add, the form weight-only int8 rewrites); only the
attention sees (B, S, D).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from export.onnx_builder import CONTRIB, GraphBuilder, finish_model
from model.transformer import DecoderLayer, EncoderLayer, Transformer
from service.bundle import encoder_input_names, encoder_output_names


def _encoder_layer(
    g: GraphBuilder, x: str, layer: EncoderLayer, i: int, pre_norm: bool, act: str
) -> str:
    """One encoder layer on x (N, D) -> (N, D)."""
    p = f"encoder{i}"
    attn = layer.self_attn
    h = g.layer_norm(x, layer.norm1, f"{p}.norm1") if pre_norm else x
    qkv_weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
    qkv_bias = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
    qkv = g.dense(h, qkv_weight, qkv_bias, f"{p}.qkv")  # (N, 3D)
    qkv = g.op("Reshape", [qkv, "qkv_shape"], f"{p}.qkv3")  # (B, S, 3D)
    q, k, v = g.op_multi("Split", [qkv], [f"{p}.q", f"{p}.k", f"{p}.v"], axis=-1, num_outputs=3)
    context = g.op(
        "MultiHeadAttention",
        [q, k, v, "", "source_mask"],
        f"{p}.context",
        domain=CONTRIB,
        num_heads=attn.n_heads,
    )  # (B, S, D)
    context = g.op("Reshape", [context, "rows_shape"], f"{p}.context2")  # (N, D)
    x = g.op("Add", [x, g.linear(context, attn.out_proj, f"{p}.out")], f"{p}.residual1")
    if not pre_norm:
        x = g.layer_norm(x, layer.norm1, f"{p}.norm1")
    return g.feed_forward(x, layer.ffn, layer.norm2, pre_norm, act, f"{p}.ffn")


def _cross_kv(g: GraphBuilder, memory: str, layer: DecoderLayer, i: int, names: list[str]) -> None:
    """Decoder layer i's cross K and V of the memory (N, D): one linear layer, then
    (B, S, 2, H, Dh) -> (2, B, H, S, Dh) -> the two outputs (B, H, S, Dh)."""
    p = f"cross{i}"
    attn = layer.cross_attn
    weight = torch.cat([attn.k_proj.weight, attn.v_proj.weight])
    bias = torch.cat([attn.k_proj.bias, attn.v_proj.bias])
    kv = g.op("Reshape", [g.dense(memory, weight, bias, f"{p}.kv"), "kv_shape"], f"{p}.kv5")
    kv = g.op("Transpose", [kv], f"{p}.kv_heads", perm=[2, 0, 3, 1, 4])
    key, value = g.op_multi("Split", [kv], [f"{p}.key", f"{p}.value"], axis=0, num_outputs=2)
    g.op("Squeeze", [key, "axis0"], names[2 * i])
    g.op("Squeeze", [value, "axis0"], names[2 * i + 1])


@torch.no_grad()
def build_encoder_graph(model: Transformer, gemm: bool = True) -> onnx.ModelProto:
    """The encoder graph of `model` (fp32 or fp16, as its weights are); `gemm` off writes every
    linear layer as MatMul + Add (for `export.quantize`)."""
    config = model.config
    torch_dtype = model.embed.tokens.weight.dtype
    dtype = np.dtype(np.float16 if torch_dtype == torch.float16 else np.float32)
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    heads, head_dim, d_model = config.n_heads, config.head_dim, config.d_model
    g = GraphBuilder(dtype, gemm)
    for name, values in (("axis0", [0]), ("one", [1]), ("two", [2])):
        g.constant(name, np.array(values, dtype=np.int64), cast=False)
    g.constant("rows_shape", np.array([-1, d_model], dtype=np.int64), cast=False)
    # (B, S) and what follows it: the shapes that take (N, ...) rows back to (B, S, ...)
    ids_shape = g.op("Shape", ["input_ids"], "ids_shape")
    for name, tail in (("qkv_shape", [3 * d_model]), ("kv_shape", [2, heads, head_dim])):
        g.constant(f"{name}.tail", np.array(tail, dtype=np.int64), cast=False)
        g.op("Concat", [ids_shape, f"{name}.tail"], name, axis=0)
    pre_norm = config.norm_position == "pre"

    embedding = g.constant("embedding", model.embed.tokens.weight)  # (V, D)
    x = g.op("Gather", [embedding, "input_ids"], "token_embedding")  # (B, S, D)
    if model.embed.scale != 1.0:
        scale = g.constant("embedding_scale", np.array(model.embed.scale))
        x = g.op("Mul", [x, scale], "scaled_embedding")
    src_len = g.op("Slice", [ids_shape, "one", "two"], "src_len")
    table = g.constant("position_table", model.embed.positions.table)  # (max_positions, D)
    positions = g.op("Slice", [table, "axis0", src_len, "axis0"], "position_embedding")  # (S, D)
    x = g.op("Reshape", [g.op("Add", [x, positions], "embedded"), "rows_shape"], "rows")  # (N, D)
    g.op("Cast", ["attention_mask"], "source_mask", to=TensorProto.INT32)  # (B, S)

    for i, layer in enumerate(model.encoder_layers):
        assert isinstance(layer, EncoderLayer)
        x = _encoder_layer(g, x, layer, i, pre_norm, config.activation)
    if pre_norm:
        assert isinstance(model.encoder_norm, torch.nn.LayerNorm)
        x = g.layer_norm(x, model.encoder_norm, "encoder_norm")
    names = encoder_output_names(config.n_decoder_layers)
    for i, layer in enumerate(model.decoder_layers):
        assert isinstance(layer, DecoderLayer)
        _cross_kv(g, x, layer, i, names)

    ids, mask = encoder_input_names()
    inputs = [
        helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch", "src_len"]),
        helper.make_tensor_value_info(mask, TensorProto.INT64, ["batch", "src_len"]),
    ]
    outputs = [
        helper.make_tensor_value_info(name, elem, ["batch", heads, "src_len", head_dim])
        for name in names
    ]
    return finish_model(g, "encoder", inputs, outputs)


def export_encoder(model: Transformer, path: Path, gemm: bool = True) -> None:
    """Write the encoder graph of `model` to `path` (weights inside the file)."""
    onnx.save(build_encoder_graph(model, gemm), str(path))
