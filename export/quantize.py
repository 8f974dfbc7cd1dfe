"""int8 dynamic quantization for the CPU provider (weights int8, activations quantized per call)."""

from __future__ import annotations

import os
from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic


def quantize_int8(path: Path) -> None:
    """Replace the fp32 graph at `path` with its dynamically quantized int8 version."""
    staged = path.with_name(path.stem + ".int8.onnx")
    quantize_dynamic(str(path), str(staged), weight_type=QuantType.QInt8)
    os.replace(staged, path)
