"""The shared sentencepiece vocabulary with target-language tokens."""

from __future__ import annotations

import pytest

from model.corpus import Corpus
from model.tokenizer import EOS_ID, Tokenizer, UnknownLanguageError


def test_round_trips_every_sentence_of_characters_it_was_trained_on(
    tiny_tokenizer: Tokenizer, tiny_corpus: Corpus
) -> None:
    """Lossless on its training text; a character it never saw decodes as unknown (no byte
    fallback), so test sentences are checked where all their characters occur in training."""
    seen = {c for p in tiny_corpus.train for c in p.source + p.target}
    checked = 0
    for pair in tiny_corpus.train + tiny_corpus.test:
        for text in (pair.source, pair.target):
            if set(text) <= seen:
                assert tiny_tokenizer.decode(tiny_tokenizer.encode_target(text)) == text
                checked += 1
    assert checked > 1.9 * len(tiny_corpus.train)


def test_source_starts_with_language_token_and_ends_with_eos(tiny_tokenizer: Tokenizer) -> None:
    ids = tiny_tokenizer.encode_source("forty-two", "de")
    assert ids[0] == tiny_tokenizer.lang_id("de") != tiny_tokenizer.lang_id("fr")
    assert ids[-1] == EOS_ID
    assert tiny_tokenizer.languages == ("de", "es", "fr", "it")


def test_digits_are_single_pieces(tiny_tokenizer: Tokenizer) -> None:
    pieces = [tiny_tokenizer.decode([i]) for i in tiny_tokenizer.encode_target("March 3, 2024")]
    assert all(sum(c.isdigit() for c in piece) <= 1 for piece in pieces)
    assert "".join(pieces).replace(" ", "") == "March3,2024"


def test_unknown_language_names_the_supported_ones(tiny_tokenizer: Tokenizer) -> None:
    with pytest.raises(
        UnknownLanguageError, match="unsupported target language 'pt'; supported: de, es, fr, it"
    ):
        tiny_tokenizer.encode_source("one", "pt")


def test_save_and_load(tiny_tokenizer: Tokenizer, tmp_path) -> None:
    tiny_tokenizer.save(tmp_path / "tokenizer.model")
    loaded = Tokenizer.load(tmp_path / "tokenizer.model")
    assert loaded.encode_source("March 3, 2021", "it") == tiny_tokenizer.encode_source(
        "March 3, 2021", "it"
    )


def test_max_piece_length_bounds_every_piece(tiny_corpus: Corpus) -> None:
    """Shorter pieces keep compounds compositional: no piece is longer than asked, and the text
    still round-trips."""
    texts = [t for p in tiny_corpus.train for t in (p.source, p.target)]
    default = Tokenizer.train(texts, tiny_corpus.languages, 320)
    short = Tokenizer.train(texts, tiny_corpus.languages, 320, max_piece_length=4)

    def longest(tokenizer: Tokenizer) -> int:
        return max(len(piece) for piece in tokenizer.pieces() if not piece.startswith("<"))

    assert longest(short) <= 4 < longest(default)
    text = tiny_corpus.train[0].target
    assert short.decode(short.encode_target(text)) == text


def test_max_piece_length_must_be_positive(tiny_corpus: Corpus) -> None:
    with pytest.raises(ValueError, match="max piece length must be >= 1, got 0"):
        Tokenizer.train(["one"], tiny_corpus.languages, 320, max_piece_length=0)
