"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

One small class per component of Figure 1, post-LayerNorm as in the paper. What varies between
the paper's model and imported ones (activation, pre- or post-LN, embedding scale, the layout of
the position table, a logits bias) is `ModelConfig` data. Two entry points serve everything
downstream (decoding, evaluation, ONNX export):

    encode(src_ids, src_mask)                                  -> memory
    cross_kv(memory)                                           -> per-layer cross-attention K/V
    decode_step(tgt_ids, positions, tgt_mask, src_mask, past_kv, cross_kv) -> (logits, present_kv)

The self-attention cache is passed in and returned as tensors, never kept in module state, so the
export can wrap `decode_step` as a graph. `forward` is the teacher-forced pass used in training and
is built from the same two calls.

Shape letters: B batch, S source length, T new target tokens, P past target slots, H heads,
Dh head dim, D d_model, V vocabulary.

References:
    https://arxiv.org/abs/1706.03762
    https://nlp.seas.harvard.edu/annotated-transformer/
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import ModelConfig

# Finite additive mask: exp(-1e4) underflows to exactly 0 in fp32, and it stays finite in fp16.
MASK_VALUE = -1e4

KV = tuple[Tensor, Tensor]  # (key, value), each (B, H, L, Dh)
KVCache = list[KV]  # one entry per decoder layer


class PositionalEncoding(nn.Module):
    """Sinusoidal position table (section 3.5), gathered by explicit per-row positions.

    `layout` "interleaved" puts sin and cos of each frequency side by side (the paper); "halves"
    puts every sine first, then every cosine (Marian)."""

    table: Tensor

    def __init__(self, d_model: int, max_positions: int, layout: str = "interleaved") -> None:
        super().__init__()
        position = torch.arange(max_positions, dtype=torch.float32).unsqueeze(1)  # (L, 1)
        div_term = torch.exp(
            torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model)
        )  # (D/2,)
        table = torch.zeros(max_positions, d_model)
        sines, cosines = (slice(0, None, 2), slice(1, None, 2))
        if layout == "halves":
            sines, cosines = slice(0, d_model // 2), slice(d_model // 2, None)
        table[:, sines] = torch.sin(position * div_term)
        table[:, cosines] = torch.cos(position * div_term)
        self.register_buffer("table", table, persistent=False)

    def forward(self, positions: Tensor) -> Tensor:
        return self.table[positions]  # (B, T) -> (B, T, D)


class Embeddings(nn.Module):
    """Token embedding scaled by sqrt(d_model) (unless configured off), plus positions, then
    dropout (section 3.4)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.positions = PositionalEncoding(
            config.d_model, config.max_positions, config.position_layout
        )
        self.dropout = nn.Dropout(config.dropout)
        self.scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0

    def forward(self, ids: Tensor, positions: Tensor) -> Tensor:
        x = self.tokens(ids) * self.scale + self.positions(positions)  # (B, T, D)
        return self.dropout(x)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over H heads (sections 3.2.1 and 3.2.2)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.d_model, config.d_model)
        self.k_proj = nn.Linear(config.d_model, config.d_model)
        self.v_proj = nn.Linear(config.d_model, config.d_model)
        self.out_proj = nn.Linear(config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def split_heads(self, x: Tensor) -> Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)

    def project_kv(self, x: Tensor) -> KV:
        """Keys and values of `x` (B, L, D), each (B, H, L, Dh)."""
        return self.split_heads(self.k_proj(x)), self.split_heads(self.v_proj(x))

    def attend(self, x: Tensor, key: Tensor, value: Tensor, bias: Tensor) -> Tensor:
        """Queries from `x` (B, T, D) over `key`/`value` (B, H, L, Dh); `bias` (B, 1, T, L)."""
        q = self.split_heads(self.q_proj(x))  # (B, H, T, Dh)
        scores = q @ key.transpose(-2, -1) / math.sqrt(self.head_dim) + bias  # (B, H, T, L)
        weights = self.dropout(scores.softmax(dim=-1))
        context = weights @ value  # (B, H, T, Dh)
        b, _, t, _ = context.shape
        return self.out_proj(context.transpose(1, 2).reshape(b, t, -1))  # (B, T, D)


ACTIVATION_FUNCTIONS = {"relu": torch.relu, "swish": F.silu, "gelu": F.gelu}


class FeedForward(nn.Module):
    """Position-wise FFN: act(xW1 + b1)W2 + b2, act = max(0, .) in the paper (section 3.3)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.inner = nn.Linear(config.d_model, config.d_ff)
        self.outer = nn.Linear(config.d_ff, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.activation = ACTIVATION_FUNCTIONS[config.activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.outer(self.dropout(self.activation(self.inner(x))))


class EncoderLayer(nn.Module):
    """Self-attention then FFN, each wrapped as LayerNorm(x + Dropout(sublayer(x))), or under
    pre-LN as x + Dropout(sublayer(LayerNorm(x)))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(config)
        self.ffn = FeedForward(config)
        self.norm1 = nn.LayerNorm(config.d_model)
        self.norm2 = nn.LayerNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.pre_norm = config.norm_position == "pre"

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        if self.pre_norm:
            h = self.norm1(x)
            x = x + self.dropout(self.self_attn.attend(h, *self.self_attn.project_kv(h), bias))
            return x + self.dropout(self.ffn(self.norm2(x)))
        k, v = self.self_attn.project_kv(x)
        x = self.norm1(x + self.dropout(self.self_attn.attend(x, k, v, bias)))
        return self.norm2(x + self.dropout(self.ffn(x)))


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention over the memory, FFN; post-LN (Figure 1, right) or
    pre-LN."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(config)
        self.cross_attn = MultiHeadAttention(config)
        self.ffn = FeedForward(config)
        self.norm1 = nn.LayerNorm(config.d_model)
        self.norm2 = nn.LayerNorm(config.d_model)
        self.norm3 = nn.LayerNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.pre_norm = config.norm_position == "pre"

    def forward(
        self, x: Tensor, self_bias: Tensor, past: KV, cross: KV, cross_bias: Tensor
    ) -> tuple[Tensor, KV]:
        if self.pre_norm:
            return self._forward_pre_norm(x, self_bias, past, cross, cross_bias)
        k_new, v_new = self.self_attn.project_kv(x)  # (B, H, T, Dh)
        k = torch.cat([past[0], k_new], dim=2)  # (B, H, P+T, Dh)
        v = torch.cat([past[1], v_new], dim=2)
        x = self.norm1(x + self.dropout(self.self_attn.attend(x, k, v, self_bias)))
        x = self.norm2(x + self.dropout(self.cross_attn.attend(x, *cross, cross_bias)))
        x = self.norm3(x + self.dropout(self.ffn(x)))
        return x, (k, v)

    def _forward_pre_norm(
        self, x: Tensor, self_bias: Tensor, past: KV, cross: KV, cross_bias: Tensor
    ) -> tuple[Tensor, KV]:
        h = self.norm1(x)
        k_new, v_new = self.self_attn.project_kv(h)  # (B, H, T, Dh)
        k = torch.cat([past[0], k_new], dim=2)  # (B, H, P+T, Dh)
        v = torch.cat([past[1], v_new], dim=2)
        x = x + self.dropout(self.self_attn.attend(h, k, v, self_bias))
        x = x + self.dropout(self.cross_attn.attend(self.norm2(x), *cross, cross_bias))
        x = x + self.dropout(self.ffn(self.norm3(x)))
        return x, (k, v)


def padding_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive bias (B, 1, 1, L) from a key mask (B, L) where 1 marks a real slot."""
    return ((1 - mask.to(dtype)) * MASK_VALUE)[:, None, None, :]


def causal_bias(tgt_mask: Tensor, n_new: int, dtype: torch.dtype) -> Tensor:
    """Additive bias (B, 1, T, P+T): slot j is visible to new token i iff real and j <= P + i."""
    total = tgt_mask.shape[1]
    slot = torch.arange(total, device=tgt_mask.device)  # (P+T,)
    query = torch.arange(n_new, device=tgt_mask.device) + (total - n_new)  # (T,)
    future = (slot[None, :] > query[:, None]).to(dtype) * MASK_VALUE  # (T, P+T)
    # Clamp so a padded and future slot stays at MASK_VALUE rather than twice it (fp16-safe).
    return (padding_bias(tgt_mask, dtype) + future[None, None, :, :]).clamp(min=MASK_VALUE)


class Transformer(nn.Module):
    """Encoder-decoder with one shared vocabulary; the output projection is the embedding.

    Pre-LN adds a final LayerNorm to the encoder and the decoder; `logits_bias` (V,) is a
    buffer (Marian's `final_logits_bias`), zero unless loaded."""

    logits_bias: Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = Embeddings(config)  # shared by encoder and decoder (section 3.4)
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(config) for _ in range(config.n_encoder_layers)
        )
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(config) for _ in range(config.n_decoder_layers)
        )
        pre_norm = config.norm_position == "pre"
        self.encoder_norm = nn.LayerNorm(config.d_model) if pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(config.d_model) if pre_norm else nn.Identity()
        if config.logits_bias:
            self.register_buffer("logits_bias", torch.zeros(config.vocab_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        nn.init.normal_(self.embed.tokens.weight, mean=0.0, std=self.config.d_model**-0.5)

    def key_biases(self) -> list[nn.Parameter]:
        """The bias of every key projection: it adds q . b_k to all the scores of a query alike,
        which softmax ignores. Its true gradient is 0; training freezes it, since what backprop
        computes for it is rounding noise that Adam would turn into a random walk."""
        return [
            module.k_proj.bias
            for module in self.modules()
            if isinstance(module, MultiHeadAttention)
        ]

    def encode(self, src_ids: Tensor, src_mask: Tensor) -> Tensor:
        """Source ids (B, S), right-padded, mask (B, S) with 1 = token -> memory (B, S, D)."""
        positions = torch.arange(src_ids.shape[1], device=src_ids.device).expand_as(src_ids)
        x = self.embed(src_ids, positions)
        bias = padding_bias(src_mask, x.dtype)
        for layer in self.encoder_layers:
            x = layer(x, bias)
        return self.encoder_norm(x)

    def cross_kv(self, memory: Tensor) -> KVCache:
        """Cross-attention K/V of every decoder layer, computed once per source."""
        return [
            cast(DecoderLayer, layer).cross_attn.project_kv(memory) for layer in self.decoder_layers
        ]

    def empty_kv(self, batch: int, device: torch.device | None = None) -> KVCache:
        """A self-attention cache with no past slots: (B, H, 0, Dh) per layer."""
        shape = (batch, self.config.n_heads, 0, self.config.head_dim)
        dtype = self.embed.tokens.weight.dtype
        return [
            (
                torch.zeros(shape, device=device, dtype=dtype),
                torch.zeros(shape, device=device, dtype=dtype),
            )
            for _ in self.decoder_layers
        ]

    def decode_step(
        self,
        tgt_ids: Tensor,
        positions: Tensor,
        tgt_mask: Tensor,
        src_mask: Tensor,
        past_kv: KVCache,
        cross_kv: KVCache,
    ) -> tuple[Tensor, KVCache]:
        """Decode T new tokens per row given P cached slots.

        Args:
            tgt_ids: (B, T) new target tokens.
            positions: (B, T) absolute position of each new token in its own row.
            tgt_mask: (B, P+T) 1 for a real slot, 0 for a left-pad slot of a row that joined late.
            src_mask: (B, S) 1 for a source token, 0 for padding.
            past_kv: per layer (B, H, P, Dh) keys and values; P may be 0.
            cross_kv: per layer (B, H, S, Dh) keys and values from `cross_kv`.

        Returns:
            logits (B, T, V) and the present cache, per layer (B, H, P+T, Dh).
        """
        x = self.embed(tgt_ids, positions)  # (B, T, D)
        self_bias = causal_bias(tgt_mask, tgt_ids.shape[1], x.dtype)  # (B, 1, T, P+T)
        cross_bias = padding_bias(src_mask, x.dtype)  # (B, 1, 1, S)
        present: KVCache = []
        for layer, past, cross in zip(self.decoder_layers, past_kv, cross_kv, strict=True):
            x, kv = layer(x, self_bias, past, cross, cross_bias)
            present.append(kv)
        logits = self.decoder_norm(x) @ self.embed.tokens.weight.T  # (B, T, V), tied embedding
        if self.config.logits_bias:
            logits = logits + self.logits_bias
        return logits, present

    def forward(
        self, src_ids: Tensor, src_mask: Tensor, tgt_ids: Tensor, tgt_mask: Tensor
    ) -> Tensor:
        """Teacher-forced pass: (B, S) sources and (B, T) shifted targets -> logits (B, T, V)."""
        memory = self.encode(src_ids, src_mask)
        positions = torch.arange(tgt_ids.shape[1], device=tgt_ids.device).expand_as(tgt_ids)
        logits, _ = self.decode_step(
            tgt_ids,
            positions,
            tgt_mask,
            src_mask,
            self.empty_kv(src_ids.shape[0], src_ids.device),
            self.cross_kv(memory),
        )
        return logits
