"""The built-in corpus and the readers of user corpora."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.builtin_corpus import LANGUAGES, builtin_corpus
from model.corpus import Corpus, CorpusError, Pair, read_aligned, read_tsv, split_corpus


def test_builtin_corpus_is_deterministic_for_a_seed() -> None:
    first, again, other = (
        builtin_corpus(2000, seed=3),
        builtin_corpus(2000, seed=3),
        builtin_corpus(2000, seed=4),
    )
    assert first == again
    assert first.train != other.train


def test_builtin_splits_never_share_a_source(tiny_corpus: Corpus) -> None:
    sources = {
        name: {p.source for p in tiny_corpus.split(name)} for name in ("train", "valid", "test")
    }
    assert sources["train"] and sources["valid"] and sources["test"]
    assert not sources["train"] & sources["valid"]
    assert not sources["train"] & sources["test"]
    assert not sources["valid"] & sources["test"]


def test_builtin_corpus_covers_every_language_with_real_data(tiny_corpus: Corpus) -> None:
    assert tiny_corpus.languages == sorted(LANGUAGES)
    pairs = {
        (p.lang, p.source): p.target
        for p in tiny_corpus.train + tiny_corpus.valid + tiny_corpus.test
    }
    # Spot-check against num2words / CLDR facts wherever the generator drew these sources.
    known = {("de", "forty-two"): "zweiundvierzig", ("fr", "forty-two"): "quarante-deux"}
    for key, target in known.items():
        if key in pairs:
            assert pairs[key] == target
    assert all("\u00a0" not in t and "\u202f" not in t for t in pairs.values())


def test_split_is_by_source_across_languages() -> None:
    pairs = [Pair(lang, f"sentence {i}", f"Satz {i}") for i in range(400) for lang in ("de", "fr")]
    corpus = split_corpus(pairs)
    for name in ("train", "valid", "test"):
        for pair in corpus.split(name):
            other = "fr" if pair.lang == "de" else "de"
            assert Pair(other, pair.source, pair.target) in corpus.split(name)


def test_read_tsv_two_and_three_columns(tmp_path: Path) -> None:
    three = tmp_path / "three.tsv"
    three.write_text("de\tone\teins\n\nfr\ttwo\tdeux\n")
    assert read_tsv(three) == [Pair("de", "one", "eins"), Pair("fr", "two", "deux")]
    two = tmp_path / "two.tsv"
    two.write_text("one\teins\r\n")
    assert read_tsv(two, target_lang="de") == [Pair("de", "one", "eins")]


def test_read_aligned_files(tmp_path: Path) -> None:
    (tmp_path / "src.txt").write_text("one\ntwo\n")
    (tmp_path / "tgt.txt").write_text("uno\ndos\n")
    assert read_aligned(tmp_path / "src.txt", tmp_path / "tgt.txt", "es") == [
        Pair("es", "one", "uno"),
        Pair("es", "two", "dos"),
    ]


@pytest.mark.parametrize(
    ("content", "target_lang", "message"),
    [
        ("", None, "the corpus is empty"),
        ("\n\n", None, "the corpus is empty"),
        (
            "de\tone\teins\nde\tone\ttwo\tthree\n",
            None,
            r":2: expected 2 or 3 tab-separated columns, found 4",
        ),
        ("de\tone\teins\nxx\ttwo\tzwei\n", None, r":2: unknown language tag 'xx'"),
        ("one\teins\n", None, r":1: 2 columns .* no target language"),
        ("one\t \n", "de", r":1: empty target"),
        ("one\teins\n", "klingon", r"unknown language tag 'klingon'"),
    ],
)
def test_bad_tsv_is_rejected_with_line_and_reason(
    tmp_path: Path, content: str, target_lang: str | None, message: str
) -> None:
    path = tmp_path / "corpus.tsv"
    path.write_text(content)
    with pytest.raises(CorpusError, match=message):
        read_tsv(path, target_lang)


def test_missing_file_and_bad_encoding(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="corpus file not found"):
        read_tsv(tmp_path / "nope.tsv", "de")
    path = tmp_path / "latin1.tsv"
    path.write_bytes("de\tcaf\xe9\tKaffee\n".encode("latin-1"))
    with pytest.raises(CorpusError, match="not valid UTF-8"):
        read_tsv(path)


def test_misaligned_files(tmp_path: Path) -> None:
    (tmp_path / "src.txt").write_text("one\ntwo\n")
    (tmp_path / "tgt.txt").write_text("uno\n")
    with pytest.raises(CorpusError, match=r"has 2 lines but .* has 1"):
        read_aligned(tmp_path / "src.txt", tmp_path / "tgt.txt", "es")
