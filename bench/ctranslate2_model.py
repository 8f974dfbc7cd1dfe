"""A checkpoint of this project as a CTranslate2 model, for the peer benchmark (bench only).

    python -m bench.ctranslate2_model --checkpoint checkpoints/default --out /tmp/ct2 [--int8]

CTranslate2 has no converter for this project's checkpoints, so its model is written here from
the same weights through its public spec API (`ctranslate2.specs.TransformerSpec`), mapping each
tensor as CTranslate2's own converters map an OPUS-MT / BART model: fused Q|K|V for self-attention,
Q and fused K|V for cross-attention, post-LN, the tied embedding as the output projection, the
position table as it is (interleaved or halves). Greedy outputs are then compared on the test
split by `bench.vs_ctranslate2`; identical outputs show both engines compute the same model.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import cast

import ctranslate2
import numpy as np
import torch
from ctranslate2.specs import common_spec, transformer_spec

from model.checkpoint import load_model
from model.tokenizer import Tokenizer
from model.transformer import DecoderLayer, EncoderLayer, MultiHeadAttention, Transformer

ACTIVATIONS = {
    "relu": common_spec.Activation.RELU,
    "swish": common_spec.Activation.SWISH,
    "gelu": common_spec.Activation.GELU,
}


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _linear(spec: common_spec.LinearSpec, *modules: torch.nn.Linear) -> None:
    """One linear spec from one or several (fused along the output axis) torch layers."""
    spec.weight = np.concatenate([_array(m.weight) for m in modules])
    spec.bias = np.concatenate([_array(m.bias) for m in modules])


def _norm(spec: common_spec.LayerNormSpec, module: torch.nn.LayerNorm) -> None:
    spec.gamma, spec.beta = _array(module.weight), _array(module.bias)


def _attention(spec: object, attention: MultiHeadAttention, cross: bool) -> None:
    q, k, v = attention.q_proj, attention.k_proj, attention.v_proj
    linears = spec.linear  # type: ignore[attr-defined]
    if cross:
        _linear(linears[0], q)
        _linear(linears[1], k, v)
    else:
        _linear(linears[0], q, k, v)
    _linear(linears[-1], attention.out_proj)


def _embeddings(spec: object, model: Transformer) -> None:
    embeddings = spec.embeddings  # type: ignore[attr-defined]
    (embeddings[0] if isinstance(embeddings, list) else embeddings).weight = _array(
        model.embed.tokens.weight
    )
    spec.position_encodings.encodings = _array(model.embed.positions.table)  # type: ignore[attr-defined]
    spec.scale_embeddings = model.embed.scale  # type: ignore[attr-defined]


def model_spec(model: Transformer, tokens: list[str]) -> transformer_spec.TransformerSpec:
    config = model.config
    if config.norm_position != "post":
        raise SystemExit("bench.ctranslate2_model converts post-LN checkpoints (this project's)")
    spec = transformer_spec.TransformerSpec.from_config(
        (config.n_encoder_layers, config.n_decoder_layers),
        config.n_heads,
        pre_norm=False,
        activation=ACTIVATIONS[config.activation],
    )
    _embeddings(spec.encoder, model)
    for layer_spec, module in zip(spec.encoder.layer, model.encoder_layers, strict=True):
        layer = cast(EncoderLayer, module)
        _attention(layer_spec.self_attention, layer.self_attn, cross=False)
        _norm(layer_spec.self_attention.layer_norm, layer.norm1)
        _linear(layer_spec.ffn.linear_0, layer.ffn.inner)
        _linear(layer_spec.ffn.linear_1, layer.ffn.outer)
        _norm(layer_spec.ffn.layer_norm, layer.norm2)
    _embeddings(spec.decoder, model)
    for layer_spec, module in zip(spec.decoder.layer, model.decoder_layers, strict=True):
        decoder_layer = cast(DecoderLayer, module)
        _attention(layer_spec.self_attention, decoder_layer.self_attn, cross=False)
        _norm(layer_spec.self_attention.layer_norm, decoder_layer.norm1)
        _attention(layer_spec.attention, decoder_layer.cross_attn, cross=True)
        _norm(layer_spec.attention.layer_norm, decoder_layer.norm2)
        _linear(layer_spec.ffn.linear_0, decoder_layer.ffn.inner)
        _linear(layer_spec.ffn.linear_1, decoder_layer.ffn.outer)
        _norm(layer_spec.ffn.layer_norm, decoder_layer.norm3)
    spec.decoder.projection.weight = _array(model.embed.tokens.weight)  # tied (section 3.4)
    bias = model.logits_bias if config.logits_bias else torch.zeros(config.vocab_size)
    spec.decoder.projection.bias = _array(bias)
    spec.register_source_vocabulary(tokens)
    spec.register_target_vocabulary(tokens)
    spec.config.bos_token = tokens[config.decoder_start_id]
    spec.config.eos_token = tokens[config.eos_id]
    spec.config.unk_token = tokens[config.unk_id]
    spec.config.decoder_start_token = tokens[config.decoder_start_id]
    spec.config.layer_norm_epsilon = 1e-5  # torch's LayerNorm default
    return spec


def convert(checkpoint: Path, out: Path, quantization: str | None = None) -> Path:
    model, tokenizer = load_model(checkpoint)
    if not isinstance(tokenizer, Tokenizer):
        raise SystemExit("bench.ctranslate2_model converts checkpoints trained by model.train")
    spec = model_spec(model, tokenizer.pieces())
    spec.validate()
    spec.optimize(quantization=quantization)
    out.mkdir(parents=True, exist_ok=True)
    spec.save(str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/default"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--int8", action="store_true", help="CTranslate2's int8 weights")
    args = parser.parse_args()
    convert(args.checkpoint, args.out, "int8" if args.int8 else None)
    ctranslate2.Translator(str(args.out), device="cpu")  # it loads
    print(f"wrote {args.out} (CTranslate2 {ctranslate2.__version__})")


if __name__ == "__main__":
    main()
