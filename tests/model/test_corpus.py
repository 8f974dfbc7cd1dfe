"""The built-in corpus and the readers of user corpora."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import date
from pathlib import Path

import pytest

from model.builtin_corpus import (
    KINDS,
    LANGUAGES,
    SMALL_NUMBERS,
    builtin_corpus,
    check_set,
    date_phrase,
    generate_pairs,
    number_in_words,
    pinned_sources,
    spelled_unit,
)
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


def test_one_source_has_one_target_in_the_generator_stream() -> None:
    targets: dict[tuple[str, str], set[str]] = {}
    for pair in itertools.islice(generate_pairs(seed=11), 60_000):
        targets.setdefault((pair.lang, pair.source), set()).add(pair.target)
    assert len(targets) > 40_000
    assert not {key: found for key, found in targets.items() if len(found) > 1}


def test_a_date_two_styles_render_alike_gets_the_fuller_styles_target(
    default_corpus: Corpus,
) -> None:
    # en medium and en long are both "May 24, 2010"; it medium "24 mag 2010", long "24 maggio".
    assert date_phrase(date(2010, 5, 24), "medium", "it") == ("May 24, 2010", "24 maggio 2010")
    assert date_phrase(date(2010, 9, 24), "medium", "it") == ("Sep 24, 2010", "24 set 2010")
    may = [p for p in default_corpus.train if p.lang == "it" and p.source.startswith("May ")]
    assert may and all(" maggio " in p.target for p in may if p.kind == "date")


def test_default_corpus_covers_every_small_number_and_every_kind(default_corpus: Corpus) -> None:
    everything = default_corpus.train + default_corpus.valid + default_corpus.test
    cardinals = Counter(p.lang for p in everything if p.kind == "cardinal")
    small = {(p.lang, p.source) for p in everything if p.kind == "cardinal"}
    for lang in LANGUAGES:
        assert (lang, "six") in small and (lang, "twenty-two") in small
        assert (lang, "two thousand, nine hundred and ninety-nine") in small
        assert cardinals[lang] > SMALL_NUMBERS
    assert {p.kind for p in everything} == set(KINDS)
    by_source: dict[tuple[str, str], str] = {}
    for pair in everything:
        assert by_source.setdefault((pair.lang, pair.source), pair.target) == pair.target


def test_closed_lists_a_user_tries_first_always_train(default_corpus: Corpus) -> None:
    pinned = pinned_sources()
    assert {"sixteen", "ninety-nine", "Tuesday", "September"} <= pinned
    assert "one hundred" not in pinned
    held_out = {p.source for p in default_corpus.valid + default_corpus.test}
    assert not pinned & held_out
    trained = {(p.lang, p.source) for p in default_corpus.train}
    assert all((lang, source) in trained for lang in LANGUAGES for source in pinned)


def test_pinned_sources_train_whatever_their_hash() -> None:
    pairs = [Pair("de", f"sentence {i}", f"Satz {i}") for i in range(300)]
    everywhere = split_corpus(pairs)
    assert everywhere.test and everywhere.valid
    pinned = split_corpus(pairs, frozenset(p.source for p in everywhere.test))
    assert not pinned.test and pinned.valid == everywhere.valid
    assert len(pinned.train) == len(everywhere.train) + len(everywhere.test)


def test_small_corpora_mix_the_same_kinds(tiny_corpus: Corpus) -> None:
    kinds = {p.kind for p in tiny_corpus.train}
    assert {"cardinal", "date", "currency", "unit"} <= kinds


def test_numbers_in_words_agree_with_their_unit() -> None:
    assert number_in_words(1, "de", "f") == "eine"
    assert number_in_words(21, "es", "m") == "veintiún"
    assert number_in_words(31, "es", "f") == "treinta y una"
    assert number_in_words(200, "es", "f") == "doscientas"
    assert number_in_words(21, "fr", "f") == "vingt et une"
    assert number_in_words(81, "fr", "f") == "quatre-vingt-une"
    assert number_in_words(1, "it", "m") == "un"
    assert spelled_unit(21, "length-kilometer", "en_GB", "en") == "twenty-one kilometres"
    assert spelled_unit(21, "length-kilometer", "es", "es") == "veintiún kilómetros"
    assert spelled_unit(1, "duration-hour", "it", "it") == "un'ora"
    assert spelled_unit(21, "duration-hour", "fr", "fr") == "vingt et une heures"
    assert spelled_unit(3, "duration-year", "it", "it") is None  # CLDR has no Italian pattern


def test_check_set_is_outside_training_and_in_its_ranges(default_corpus: Corpus) -> None:
    pairs = check_set(default_corpus.train)
    train = {(p.lang, p.source) for p in default_corpus.train}
    assert not {(p.lang, p.source) for p in pairs} & train
    counts = Counter((p.lang, p.kind) for p in pairs)
    assert counts == {(lang, kind): 250 for lang in LANGUAGES for kind in ("cardinal", "date")}
    assert pairs == check_set(default_corpus.train), "deterministic"
