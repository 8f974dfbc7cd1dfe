"""A small ONNX graph builder for the bundle's two graphs (`export.encoder_graph`,
`export.decoder_graph`): initializers from the model's tensors, one node per call, the linear,
layer-norm and activation forms both graphs share, and the model header every bundle graph has.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from model.transformer import FeedForward

OPSET = 18
IR_VERSION = 10  # ONNX 1.16: readable by every onnxruntime this service supports
CONTRIB = "com.microsoft"


class GraphBuilder:
    """Nodes and initializers of one graph; every name is unique by construction."""

    def __init__(self, dtype: np.dtype, gemm: bool) -> None:
        self.dtype = dtype
        self.gemm = gemm
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def constant(self, name: str, value: np.ndarray | torch.Tensor, cast: bool = True) -> str:
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        if cast:
            array = array.astype(self.dtype)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, domain: str = "", **attrs: Any) -> str:
        self.nodes.append(
            helper.make_node(op_type, inputs, [name], name=name, domain=domain, **attrs)
        )
        return name

    def op_multi(
        self, op_type: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs: Any
    ) -> list[str]:
        self.nodes.append(
            helper.make_node(op_type, inputs, outputs, name=outputs[0], domain=domain, **attrs)
        )
        return outputs

    def dense(self, x: str, weight: torch.Tensor, bias: torch.Tensor | None, name: str) -> str:
        """x (..., in) @ weight (out, in).T + bias (out,) -> (..., out): one Gemm on the weight
        as stored (x 2-D only), or (`gemm` off) MatMul on its transpose then Add, the form that
        weight-only quantization rewrites."""
        if self.gemm:
            inputs = [x, self.constant(f"{name}.weight", weight)]
            if bias is not None:
                inputs.append(self.constant(f"{name}.bias", bias))
            return self.op("Gemm", inputs, name, transB=1)
        product = self.op("MatMul", [x, self.constant(f"{name}.weight_t", weight.T)], name)
        if bias is None:
            return product
        return self.op("Add", [product, self.constant(f"{name}.bias", bias)], f"{name}.biased")

    def linear(self, x: str, module: torch.nn.Linear, name: str) -> str:
        """x (..., in) -> (..., out)."""
        return self.dense(x, module.weight, module.bias, name)

    def layer_norm(self, x: str, module: torch.nn.LayerNorm, name: str) -> str:
        scale = self.constant(f"{name}.weight", module.weight)
        bias = self.constant(f"{name}.bias", module.bias)
        return self.op("LayerNormalization", [x, scale, bias], name, axis=-1, epsilon=module.eps)

    def feed_forward(
        self,
        x: str,
        ffn: FeedForward,
        norm: torch.nn.LayerNorm,
        pre_norm: bool,
        activation: str,
        name: str,
    ) -> str:
        """The position-wise FFN sublayer with its residual and LayerNorm (before it under
        pre-LN, after the residual under post-LN): x (..., D) -> (..., D)."""
        h = self.layer_norm(x, norm, f"{name}.norm") if pre_norm else x
        inner = self.activation(self.linear(h, ffn.inner, f"{name}.inner"), activation, name)
        x = self.op("Add", [x, self.linear(inner, ffn.outer, f"{name}.outer")], f"{name}.residual")
        return x if pre_norm else self.layer_norm(x, norm, f"{name}.norm")

    def activation(self, x: str, kind: str, name: str) -> str:
        if kind == "relu":
            return self.op("Relu", [x], name)
        if kind == "gelu":  # exact (erf) GELU, as torch's F.gelu
            return self.op("Gelu", [x], name, domain=CONTRIB)
        if kind == "swish":
            return self.op("Mul", [x, self.op("Sigmoid", [x], f"{name}.sigmoid")], name)
        raise ValueError(f"activation {kind!r} has no ONNX form here")


def finish_model(
    g: GraphBuilder,
    name: str,
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
) -> onnx.ModelProto:
    """The checked model of `g`'s nodes with these graph inputs and outputs."""
    graph = helper.make_graph(g.nodes, name, inputs, outputs, g.initializers)
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(CONTRIB, 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model
