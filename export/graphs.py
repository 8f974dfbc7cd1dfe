"""Flat-tensor wrappers around the model's two entry points: what `torch.onnx.export` traces.

The graph contract (names, shapes) is declared once, in `service/bundle.py`; these wrappers only
flatten the per-layer K/V lists into positional tensors in that order.
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


class DecoderGraph(nn.Module):
    """One decoder step: ids, positions, masks, past self K/V, cross K/V -> logits, present K/V."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model
        self.n_layers = model.config.n_decoder_layers

    def forward(
        self,
        input_ids: Tensor,  # (B, T)
        position_ids: Tensor,  # (B, T)
        decoder_attention_mask: Tensor,  # (B, P+T)
        encoder_attention_mask: Tensor,  # (B, S)
        kv: tuple[Tensor, ...],  # L x (past key, past value) then L x (cross key, cross value)
    ) -> tuple[Tensor, ...]:
        n = self.n_layers
        past = [(kv[2 * i], kv[2 * i + 1]) for i in range(n)]  # (B, H, P, Dh)
        cross = [(kv[2 * n + 2 * i], kv[2 * n + 2 * i + 1]) for i in range(n)]  # (B, H, S, Dh)
        logits, present = self.model.decode_step(
            input_ids, position_ids, decoder_attention_mask, encoder_attention_mask, past, cross
        )
        return (logits, *(t for layer in present for t in layer))
