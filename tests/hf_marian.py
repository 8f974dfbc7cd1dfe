"""A Hugging Face Marian directory shaped like an OPUS-MT download, built offline for tests.

`build_marian_dir` writes what `save_pretrained` writes for Helsinki-NLP/opus-mt-*: config.json,
generation_config.json (OPUS-MT's: beam 4, pad suppressed, forced end-of-sentence, renormalized
log-probs, the pad token as decoder start), weights (model.safetensors or pytorch_model.bin),
source.spm and target.spm (sentencepiece models trained here, on a few hundred sentences) and
vocab.json in Marian's layout: `</s>` 0, `<unk>` 1, the `>>xx<<` tokens of a multilingual model,
the pieces of both sentencepiece models, `<pad>` last. Pieces holding an "x" are left out of
vocab.json, so that a piece the vocabulary lacks (encoded as `<unk>`) is exercised.

The model is random-initialised by transformers, its matrices then drawn with std 0.5 (not 0.02):
spread enough that argmax ties are rare and outputs have varied lengths (from `</s>` first to the
max_length cut), and a non-zero final_logits_bias.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch
from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer

SOURCE_WORDS = [
    "the",
    "a",
    "house",
    "is",
    "red",
    "blue",
    "green",
    "small",
    "big",
    "old",
    "new",
    "we",
    "see",
    "you",
    "and",
    "it",
    "on",
    "in",
    "at",
    "of",
    "box",
    "fox",
    "six",
    "hello",
    "world",
    "street",
    "city",
    "river",
    "tree",
    "water",
    "dog",
    "cat",
    "bird",
    "sun",
    "moon",
    "night",
    "day",
    "good",
    "bad",
    "very",
]
TARGET_WORDS = [
    "das",
    "ein",
    "Haus",
    "ist",
    "rot",
    "blau",
    "grün",
    "klein",
    "groß",
    "alt",
    "neu",
    "wir",
    "sehen",
    "du",
    "und",
    "es",
    "auf",
    "in",
    "an",
    "von",
    "Kiste",
    "Fuchs",
    "sechs",
    "hallo",
    "Welt",
    "Straße",
    "Stadt",
    "Fluss",
    "Baum",
    "Wasser",
    "Hund",
    "Katze",
    "Vogel",
    "Sonne",
    "Mond",
    "Nacht",
]
PUNCTUATION = ("", ".", "!", " ?", ",", ":")
TINY = {
    "d_model": 32,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "max_position_embeddings": 128,
}
LEFT_OUT = "x"  # pieces holding this are not in vocab.json


def corpus(words: Sequence[str], count: int, seed: int) -> list[str]:
    """Sentences of `words`, numbers and punctuation."""
    rng = random.Random(seed)
    return [
        " ".join(
            rng.choice(words) if rng.random() < 0.75 else str(rng.randint(0, 999))
            for _ in range(rng.randint(1, 10))
        )
        + rng.choice(PUNCTUATION)
        for _ in range(count)
    ]


def train_sentencepiece(path: Path, sentences: Iterable[str], vocab_size: int) -> None:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    path.write_bytes(model.getvalue())


def marian_vocab(
    spm_paths: Sequence[Path], target_languages: Sequence[str], vocab_size: int | None
) -> dict[str, int]:
    """Marian's vocab.json: `</s>`, `<unk>`, language tokens, pieces, fillers, `<pad>` last."""
    vocab = {"</s>": 0, "<unk>": 1}
    for code in target_languages:
        vocab[f">>{code}<<"] = len(vocab)
    for path in spm_paths:
        processor = spm.SentencePieceProcessor(model_file=str(path))
        for i in range(processor.get_piece_size()):
            piece = processor.id_to_piece(i)
            if processor.is_control(i) or processor.is_unknown(i) or LEFT_OUT in piece:
                continue
            vocab.setdefault(piece, len(vocab))
    if vocab_size is not None:
        if vocab_size < len(vocab) + 1:
            raise ValueError(f"vocab_size {vocab_size} < {len(vocab) + 1} tokens")
        for i in range(vocab_size - 1 - len(vocab)):
            vocab[f"\u2581filler{i}"] = len(vocab)
    vocab["<pad>"] = len(vocab)
    return vocab


def random_marian(
    vocab: Mapping[str, int], config: Mapping[str, Any], seed: int, weight_std: float | None = 0.5
) -> MarianMTModel:
    pad = vocab["<pad>"]
    marian_config = MarianConfig(
        vocab_size=len(vocab),
        activation_function="swish",
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        pad_token_id=pad,
        eos_token_id=0,
        bos_token_id=0,
        decoder_start_token_id=pad,
        forced_eos_token_id=0,
        dropout=0.1,
        architectures=["MarianMTModel"],
        **config,
    )
    torch.manual_seed(seed)
    model = MarianMTModel(marian_config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            # Every matrix but the (sinusoidal) position tables.
            if weight_std is not None and parameter.dim() == 2 and "embed_positions" not in name:
                parameter.normal_(0.0, weight_std, generator=generator)
        model.final_logits_bias.copy_(
            torch.randn(model.final_logits_bias.shape, generator=generator) * 0.1
        )
    return model


def build_marian_dir(
    directory: Path,
    *,
    target_languages: Sequence[str] = (),
    weights: str = "safetensors",
    seed: int = 0,
    max_length: int = 24,
    config: Mapping[str, Any] | None = None,
    vocab_size: int | None = None,
    weight_std: float | None = 0.5,
) -> Path:
    """Write an OPUS-MT-shaped Marian directory at `directory` (see the module docstring).

    Args:
        target_languages: the targets of a multilingual model (`>>xx<<` tokens); none for one
            language pair, which the directory name (opus-mt-SRC-TGT) names.
        weights: "safetensors" (model.safetensors) or "bin" (pytorch_model.bin).
        max_length: the generation config's max_length.
        config: MarianConfig fields over the tiny defaults (d_model 32, 2+2 layers).
        vocab_size: pad vocab.json with filler tokens up to this size.
        weight_std: the std the weight matrices are drawn with; None keeps transformers' init.
    """
    directory.mkdir(parents=True, exist_ok=True)
    source_spm, target_spm = directory / "source.spm", directory / "target.spm"
    train_sentencepiece(source_spm, corpus(SOURCE_WORDS, 600, seed), 160)
    train_sentencepiece(target_spm, corpus(TARGET_WORDS, 600, seed + 1), 160)
    vocab = marian_vocab((source_spm, target_spm), target_languages, vocab_size)
    (directory / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, indent=2), encoding="utf-8"
    )
    model = random_marian(vocab, {**TINY, **(config or {})}, seed, weight_std)
    pad = vocab["<pad>"]
    model.generation_config = GenerationConfig(
        bad_words_ids=[[pad]],
        bos_token_id=0,
        decoder_start_token_id=pad,
        eos_token_id=0,
        forced_eos_token_id=0,
        max_length=max_length,
        num_beams=4,
        pad_token_id=pad,
        renormalize_logits=True,
    )
    if weights == "safetensors":
        model.save_pretrained(directory)
    elif weights == "bin":
        model.config.save_pretrained(directory)
        model.generation_config.save_pretrained(directory)
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    else:
        raise ValueError(f"weights {weights!r}: 'safetensors' or 'bin'")
    MarianTokenizer(
        str(source_spm), str(target_spm), str(directory / "vocab.json")
    ).save_pretrained(directory)
    return directory


def import_and_export(directory: Path, work: Path) -> Path:
    """`python -m model.import_hf` then `python -m export` (parity-gated): the bundle directory."""
    from export.pipeline import export_bundle
    from model.import_hf import main as import_hf

    checkpoint, bundle = work / "checkpoint", work / "bundle"
    import_hf([str(directory), "--out", str(checkpoint)])
    export_bundle(checkpoint, bundle, "fp32", [], threads=2)
    return bundle
