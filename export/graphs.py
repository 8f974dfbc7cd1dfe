"""The flat-tensor wrapper around the model's encoder: what `torch.onnx.export` traces.

The graph contract (names, shapes) is declared once, in `service/bundle.py`; the wrapper only
flattens the per-layer K/V list into positional tensors in that order.
"""

from __future__ import annotations

from torch import Tensor, nn

from model.transformer import Transformer


class EncoderGraph(nn.Module):
    """input_ids, attention_mask -> present.{i}.encoder.key, present.{i}.encoder.value, ..."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, ...]:
        memory = self.model.encode(input_ids, attention_mask)  # (B, S, D)
        return tuple(t for kv in self.model.cross_kv(memory) for t in kv)  # 2L x (B, H, S, Dh)
