"""Model configuration: one frozen dataclass and the named presets.

The architecture's variable parts are data, so that one `Transformer` covers the paper's model
(the defaults: what `model.train` builds) and imported ones (Marian / OPUS-MT: swish, positions
as a sine half then a cosine half, a final logits bias, pad as the decoder start token).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACTIVATIONS = ("relu", "swish", "gelu")  # swish = SiLU; gelu = the exact (erf) GELU
NORM_POSITIONS = ("post", "pre")  # post: LN(x + f(x)), the paper; pre: x + f(LN(x)), final LN
POSITION_LAYOUTS = ("interleaved", "halves")  # sin/cos interleaved (the paper), or sin | cos


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of the encoder-decoder Transformer (Vaswani et al., 2017, Table 3)."""

    vocab_size: int = 1024  # one sentencepiece vocabulary shared by source and target
    d_model: int = 128  # width of every residual stream
    n_heads: int = 4  # attention heads; d_model must divide by it
    d_ff: int = 512  # inner width of the position-wise feed-forward network
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    dropout: float = 0.0  # training only; the decode path runs in eval mode
    max_positions: int = 256  # rows of the sinusoidal table: the longest source or target
    activation: str = "relu"  # of the FFN's inner layer, one of ACTIVATIONS
    norm_position: str = "post"  # one of NORM_POSITIONS
    scale_embedding: bool = True  # token embeddings times sqrt(d_model)
    position_layout: str = "interleaved"  # one of POSITION_LAYOUTS
    logits_bias: bool = False  # a learned (V,) bias added to the output logits
    # Special token ids. The decoder starts from `decoder_start_id` (the paper's <s>; Marian: pad).
    pad_id: int = 0
    unk_id: int = 1
    decoder_start_id: int = 2
    eos_id: int = 3

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        for name in ("vocab_size", "d_model", "n_heads", "d_ff", "max_positions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name, allowed in (
            ("activation", ACTIVATIONS),
            ("norm_position", NORM_POSITIONS),
            ("position_layout", POSITION_LAYOUTS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {allowed}")
        for name in ("pad_id", "unk_id", "decoder_start_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(
                    f"{name} {getattr(self, name)} out of range [0, {self.vocab_size})"
                )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ModelConfig:
        """Build a preset by name (`tiny`, `small`, `base`, `big`), with optional overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        return cls(**values)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> ModelConfig:
        return cls.from_dict(json.loads(path.read_text()))


PRESETS: dict[str, ModelConfig] = {
    # Unit tests: builds and trains in seconds.
    "tiny": ModelConfig(
        vocab_size=320,
        d_model=32,
        n_heads=4,
        d_ff=64,
        n_encoder_layers=2,
        n_decoder_layers=2,
        dropout=0.0,
        max_positions=128,
    ),
    # The default: 8,000 steps on the built-in corpus, about 20 minutes on 2 CPU cores. A vocabulary
    # of 2,048 (pieces of at most 8 characters: PIECE_LENGTHS) halves the pieces of a country,
    # currency or language name against 1,024 (a name-list pair: 38 -> 20 tokens), so a name is
    # less of a spelling to learn; longer pieces would merge across the parts of Italian and
    # German numbers ("duemilatrecento", "milasett") and make them a spelling instead.
    "small": ModelConfig(vocab_size=2048),
    # The paper's base model.
    "base": ModelConfig(
        vocab_size=8000,
        d_model=512,
        n_heads=8,
        d_ff=2048,
        n_encoder_layers=6,
        n_decoder_layers=6,
        dropout=0.1,
        max_positions=512,
    ),
    # The paper's big model.
    "big": ModelConfig(
        vocab_size=32000,
        d_model=1024,
        n_heads=16,
        d_ff=4096,
        n_encoder_layers=6,
        n_decoder_layers=6,
        dropout=0.3,
        max_positions=512,
    ),
}

# The longest vocabulary piece of each preset's tokenizer, in characters (16: sentencepiece's
# default). Not part of ModelConfig: the architecture only sees the vocabulary's size.
PIECE_LENGTHS: dict[str, int] = {"tiny": 16, "small": 8, "base": 16, "big": 16}
