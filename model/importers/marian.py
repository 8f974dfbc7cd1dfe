"""Hugging Face Marian (OPUS-MT) -> our Transformer.

Marian is the paper's post-LN encoder-decoder with: swish (usually) in the FFN, the position
table as a sine half then a cosine half, embeddings scaled by sqrt(d_model), one embedding matrix
shared by encoder, decoder and output projection, a `final_logits_bias`, the pad token as the
decoder start, and a tokenizer of its own: `vocab.json` with separate `source.spm` and
`target.spm` (see `service.tokenizer.MarianTokenizer`). Models with a separate target vocabulary
are refused.

Weights: `model.safetensors`, else `pytorch_model.bin` loaded with `weights_only=True`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from model.config import ModelConfig
from model.importers import Imported, UnsupportedModelError, read_json
from model.importers.generation import decoding, from_model_config
from model.transformer import PositionalEncoding

TOKENIZER_FILES = ("source.spm", "target.spm", "vocab.json")
ACTIVATIONS = {"swish": "swish", "silu": "swish", "relu": "relu", "gelu": "gelu"}
_LANGUAGE_TOKEN = re.compile(r"^>>(.+)<<$")
_OPUS_NAME = re.compile(r"opus-mt-(?:tc-[a-z]+-)?([A-Za-z_]+)-([A-Za-z_]+)$")

# Hugging Face name (after "model.") -> ours, per layer; {i} is the layer index.
ENCODER_LAYER = {
    "self_attn": "self_attn",
    "self_attn_layer_norm": "norm1",
    "fc1": "ffn.inner",
    "fc2": "ffn.outer",
    "final_layer_norm": "norm2",
}
DECODER_LAYER = {
    "self_attn": "self_attn",
    "self_attn_layer_norm": "norm1",
    "encoder_attn": "cross_attn",
    "encoder_attn_layer_norm": "norm2",
    "fc1": "ffn.inner",
    "fc2": "ffn.outer",
    "final_layer_norm": "norm3",
}
# Copies of the shared embedding that tied checkpoints may hold; checked equal, then dropped.
TIED_COPIES = ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")
TIED_OUTPUT = "lm_head.weight"
POSITION_TABLES = (
    "model.encoder.embed_positions.weight",
    "model.decoder.embed_positions.weight",
)


def _require(config_path: Path, config: dict[str, Any], name: str) -> Any:
    if name not in config:
        raise UnsupportedModelError(f"{config_path}: field {name} is missing")
    return config[name]


def _same(config_path: Path, config: dict[str, Any], first: str, second: str) -> int:
    a, b = _require(config_path, config, first), _require(config_path, config, second)
    if a != b:
        raise UnsupportedModelError(f"{config_path}: {first} {a} != {second} {b} is not supported")
    return int(a)


def model_config(config_path: Path, config: dict[str, Any], unk_id: int) -> ModelConfig:
    """Our ModelConfig of a Marian config.json."""
    activation = _require(config_path, config, "activation_function")
    if activation not in ACTIVATIONS:
        raise UnsupportedModelError(
            f"{config_path}: activation_function {activation!r} is not supported;"
            f" supported: {', '.join(ACTIVATIONS)}"
        )
    vocab_size = int(_require(config_path, config, "vocab_size"))
    if config.get("decoder_vocab_size", vocab_size) not in (None, vocab_size):
        raise UnsupportedModelError(
            f"{config_path}: decoder_vocab_size {config['decoder_vocab_size']}: a separate target"
            " vocabulary is not supported"
        )
    for name, wanted in (
        ("share_encoder_decoder_embeddings", True),
        ("tie_word_embeddings", True),
        ("normalize_before", False),
        ("normalize_embedding", False),
        ("add_final_layer_norm", False),
    ):
        if config.get(name, wanted) != wanted:
            raise UnsupportedModelError(f"{config_path}: {name} {config[name]!r} is not supported")
    try:
        return ModelConfig(
            vocab_size=vocab_size,
            d_model=int(_require(config_path, config, "d_model")),
            n_heads=_same(
                config_path, config, "encoder_attention_heads", "decoder_attention_heads"
            ),
            d_ff=_same(config_path, config, "encoder_ffn_dim", "decoder_ffn_dim"),
            n_encoder_layers=int(_require(config_path, config, "encoder_layers")),
            n_decoder_layers=int(_require(config_path, config, "decoder_layers")),
            dropout=0.0,
            max_positions=int(_require(config_path, config, "max_position_embeddings")),
            activation=ACTIVATIONS[activation],
            norm_position="post",
            scale_embedding=bool(config.get("scale_embedding", True)),
            position_layout="halves",
            logits_bias=True,
            pad_id=int(_require(config_path, config, "pad_token_id")),
            unk_id=unk_id,
            decoder_start_id=int(_require(config_path, config, "decoder_start_token_id")),
            eos_id=int(_require(config_path, config, "eos_token_id")),
        )
    except ValueError as error:
        raise UnsupportedModelError(f"{config_path}: {error}") from error


def read_weights(directory: Path) -> dict[str, Tensor]:
    """model.safetensors, else pytorch_model.bin (tensors only: weights_only=True)."""
    safetensors, pickled = directory / "model.safetensors", directory / "pytorch_model.bin"
    try:
        if safetensors.is_file():
            return load_file(str(safetensors))
        if pickled.is_file():
            state = torch.load(pickled, map_location="cpu", weights_only=True)
            return {k: v for k, v in state.items() if isinstance(v, Tensor)}
    except (SafetensorError, OSError, RuntimeError) as error:
        path = safetensors if safetensors.is_file() else pickled
        raise UnsupportedModelError(f"{path}: unreadable weights ({error})") from error
    raise UnsupportedModelError(f"{directory}: no model.safetensors or pytorch_model.bin")


def _layer_name(name: str) -> str | None:
    """Our name of a per-layer HF weight, e.g. model.decoder.layers.1.encoder_attn.q_proj.bias."""
    match = re.fullmatch(r"model\.(encoder|decoder)\.layers\.(\d+)\.([a-z0-9_]+)\.(.+)", name)
    if match is None:
        return None
    side, index, module, rest = match.groups()
    table = ENCODER_LAYER if side == "encoder" else DECODER_LAYER
    if module not in table:
        return None
    return f"{side}_layers.{index}.{table[module]}.{rest}"


def _check_copy(path: Path, name: str, copy: Tensor, shared: Tensor) -> None:
    if copy.shape != shared.shape or not torch.equal(copy, shared):
        raise UnsupportedModelError(
            f"{path}: {name} differs from model.shared.weight (untied weights)"
        )


def _check_positions(path: Path, name: str, table: Tensor, config: ModelConfig) -> None:
    ours = PositionalEncoding(config.d_model, config.max_positions, "halves").table
    if table.shape != ours.shape or float((table.float() - ours).abs().max()) > 1e-4:
        raise UnsupportedModelError(f"{path}: {name} is not Marian's sinusoidal table")


def convert_weights(
    path: Path, weights: dict[str, Tensor], config: ModelConfig
) -> dict[str, Tensor]:
    """HF Marian state dict -> ours; unknown names are refused, tied copies checked and dropped."""
    shared = weights.get("model.shared.weight", weights.get(TIED_COPIES[0]))
    if shared is None:
        raise UnsupportedModelError(f"{path}: model.shared.weight is missing")
    ours: dict[str, Tensor] = {"embed.tokens.weight": shared}
    for name, tensor in weights.items():
        if name in ("model.shared.weight",):
            continue
        if name in (*TIED_COPIES, TIED_OUTPUT):
            _check_copy(path, name, tensor, shared)
        elif name in POSITION_TABLES:
            _check_positions(path, name, tensor, config)
        elif name == "final_logits_bias":
            ours["logits_bias"] = tensor.reshape(-1)
        elif (mapped := _layer_name(name)) is not None:
            ours[mapped] = tensor
        else:
            raise UnsupportedModelError(
                f"{path}: weight {name} has no counterpart in this architecture"
            )
    return {k: v.float().contiguous() for k, v in ours.items()}


def _vocabulary(directory: Path) -> dict[str, int]:
    path = directory / "vocab.json"
    vocab = read_json(path)
    for token in ("</s>", "<unk>", "<pad>"):
        if token not in vocab:
            raise UnsupportedModelError(f"{path}: token {token} is missing")
    return {str(k): int(v) for k, v in vocab.items()}


def _languages(
    directory: Path, vocab: dict[str, int], tokenizer_config: dict[str, Any], given: dict[str, str]
) -> tuple[str, list[str]]:
    """(source language, target languages): `>>xx<<` tokens name the targets of a multilingual
    model; otherwise tokenizer_config.json, the `opus-mt-SRC-TGT` directory name or `given`."""
    named = _OPUS_NAME.search(directory.resolve().name)
    source = (
        given.get("source")
        or tokenizer_config.get("source_lang")
        or (named.group(1) if named else None)
    )
    codes = sorted(m.group(1) for token in vocab if (m := _LANGUAGE_TOKEN.match(token)))
    targets = codes or [
        t
        for t in [
            given.get("target")
            or tokenizer_config.get("target_lang")
            or (named.group(2) if named else None)
        ]
        if t
    ]
    if not source or not targets:
        field = "source_lang" if not source else "target_lang"
        raise UnsupportedModelError(
            f"{directory / 'tokenizer_config.json'}: field {field} is missing and the directory"
            " is not named opus-mt-SRC-TGT; pass --source-language and --target-language"
        )
    return str(source), [str(t) for t in targets]


def load(directory: Path, config: dict[str, Any], given: dict[str, str]) -> Imported:
    """Read a Marian directory (see the module docstring)."""
    config_path = directory / "config.json"
    for name in TOKENIZER_FILES:
        if not (directory / name).is_file():
            raise UnsupportedModelError(f"{directory / name}: missing")
    tokenizer_config_path = directory / "tokenizer_config.json"
    tokenizer_config = read_json(tokenizer_config_path) if tokenizer_config_path.is_file() else {}
    if tokenizer_config.get("separate_vocabs") or (directory / "target_vocab.json").is_file():
        raise UnsupportedModelError(
            f"{tokenizer_config_path}: separate_vocabs: a separate target vocabulary is not"
            " supported"
        )
    vocab = _vocabulary(directory)
    ours = model_config(config_path, config, vocab["<unk>"])
    if len(vocab) > ours.vocab_size or max(vocab.values()) >= ours.vocab_size:
        raise UnsupportedModelError(
            f"{directory / 'vocab.json'}: {len(vocab)} tokens do not fit vocab_size"
            f" {ours.vocab_size} of {config_path}"
        )
    generation_path = directory / "generation_config.json"
    if generation_path.is_file():
        values = read_json(generation_path)
    else:
        generation_path, values = config_path, from_model_config(config)
    generation = decoding(
        generation_path,
        values,
        eos_id=ours.eos_id,
        vocab_size=ours.vocab_size,
        max_positions=ours.max_positions,
    )
    weights_path = directory / (
        "model.safetensors" if (directory / "model.safetensors").is_file() else "pytorch_model.bin"
    )
    weights = convert_weights(weights_path, read_weights(directory), ours)
    source, targets = _languages(directory, vocab, tokenizer_config, given)
    return Imported(
        config=ours,
        weights=weights,
        tokenizer="marian",
        tokenizer_files={name: directory / name for name in TOKENIZER_FILES},
        source_language=source,
        languages=targets,
        generation=generation,
        origin={
            "model_type": "marian",
            "path": str(directory.resolve()),
            "architectures": config.get("architectures", []),
            "transformers_version": config.get("transformers_version"),
        },
    )
