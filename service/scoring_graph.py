"""The decoder-step graph as the service runs it: the bundle's graph with the reductions of its
logits appended, so that a step's log-softmax parts come out of the same run.

Every step needs, per row, the argmax of the logits and the two parts of their log-softmax,
top = max and lse = log(sum(exp(logits - top))) (`search.StepScores`). Computed in numpy after
the run, they were the largest piece of Python in a step: four passes over (B, V) on logits
that the run had just pushed out of the cache (batch 1: 147.6 -> 130.1 us per step with them in
the graph; batch 32: 1,144 -> 1,091 us; default model, one thread). ONNX Runtime computes them
while the logits are still in cache, with its vectorised Exp. The bundle's file is unchanged
(its digest and its I/O contract hold); only the session gets the extra outputs. The reference
decoder (`export.reference_decoder`) runs the same graph, so both take the same lse, bit for bit.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

BEST, TOP, LSE = "step_scores.best", "step_scores.top", "step_scores.lse"
OUTPUTS = (BEST, TOP, LSE)
EXP, SUM = "step_scores.exp", "step_scores.sum"


def scored_decoder(path: str) -> bytes:
    """The decoder-step graph at `path` with its logits' reductions appended, serialized for a
    session (loaded and built once per model: the calibration and the service's session share
    it)."""
    return with_step_scores(onnx.load(path)).SerializeToString()


def with_step_scores(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` (a decoder step with a `logits` (B, V) output, float32 or float16) with three more
    outputs: BEST (B,) int64 argmax, first index on ties as numpy's; TOP (B, 1) float32 max;
    LSE (B, 1) float32 log(sum(exp(logits - TOP))), all over the logits in float32."""
    graph = model.graph
    taken = {o.name for o in graph.output} | {n for node in graph.node for n in node.output}
    if taken & set(OUTPUTS):
        raise ValueError(f"the decoder graph already has an output named like {OUTPUTS}")
    (logits,) = (o for o in graph.output if o.name == "logits")
    x = "logits"
    if logits.type.tensor_type.elem_type != TensorProto.FLOAT:
        graph.node.append(helper.make_node("Cast", [x], ["step_scores.x"], to=TensorProto.FLOAT))
        x = "step_scores.x"
    graph.initializer.append(helper.make_tensor("step_scores.axes", TensorProto.INT64, [1], [-1]))
    graph.node.extend(
        [
            helper.make_node("ArgMax", [x], [BEST], axis=-1, keepdims=0),
            helper.make_node("ReduceMax", [x, "step_scores.axes"], [TOP], keepdims=1),
            helper.make_node("Sub", [x, TOP], ["step_scores.shifted"]),
            helper.make_node("Exp", ["step_scores.shifted"], [EXP]),
            helper.make_node("ReduceSum", [EXP, "step_scores.axes"], [SUM], keepdims=1),
            helper.make_node("Log", [SUM], [LSE]),
        ]
    )
    graph.output.extend(
        [
            helper.make_tensor_value_info(BEST, TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info(TOP, TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info(LSE, TensorProto.FLOAT, ["batch", 1]),
        ]
    )
    return model
