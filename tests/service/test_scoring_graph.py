"""The logits reductions appended to the decoder-step graph (service/scoring_graph.py) against
numpy's, on a graph whose logits are its input: float32 and float16, ties, -inf entries."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from export.reference_decoder import log_softmax
from service.scoring_graph import BEST, LSE, OUTPUTS, TOP, with_step_scores
from service.search import StepLogits, StepScores


def _logits_graph(elem: int) -> onnx.ModelProto:
    """x (B, V) -> logits = x, as a decoder step's output."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["logits"])],
        "step",
        [helper.make_tensor_value_info("x", elem, ["batch", "vocab"])],
        [helper.make_tensor_value_info("logits", elem, ["batch", "vocab"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _scored(x: np.ndarray) -> StepLogits:
    elem = TensorProto.FLOAT16 if x.dtype == np.float16 else TensorProto.FLOAT
    model = with_step_scores(_logits_graph(elem))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, best, top, lse = session.run(["logits", BEST, TOP, LSE], {"x": x})
    return StepLogits(logits, best, top, lse)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_graph_reductions_equal_numpy_log_softmax(dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 300)) * 8).astype(dtype)
    x[1, [7, 200]] = x[1].max() + 1  # a tie for the max: the first index wins, as in numpy
    x[2, :10] = -np.inf  # suppressed entries
    step = _scored(x)
    wide = x.astype(np.float32)
    assert step.best is not None and step.top is not None and step.lse is not None
    np.testing.assert_array_equal(step.best, wide.argmax(axis=-1))
    assert step.best[1] == 7
    np.testing.assert_array_equal(step.top[:, 0], wide.max(axis=-1))
    scores = StepScores.of(step)
    np.testing.assert_allclose(scores.logprobs(0, 5), log_softmax(wide), rtol=1e-6, atol=2e-6)
    np.testing.assert_allclose(scores.best_logprobs, log_softmax(wide).max(axis=-1), atol=2e-6)


def test_a_graph_with_those_names_already_is_refused():
    model = _logits_graph(TensorProto.FLOAT)
    model.graph.node.append(helper.make_node("Identity", ["x"], [OUTPUTS[0]]))
    with pytest.raises(ValueError, match="already has an output"):
        with_step_scores(model)
