"""service.tokenizer.MarianTokenizer gives the ids and texts of transformers' MarianTokenizer.

On an OPUS-MT-shaped directory (tests/hf_marian.py): 1,500 strings encode to the same ids
(words, numbers, punctuation, characters the sentencepiece models never saw, pieces vocab.json
lacks, special tokens written in the text, odd whitespace, `>>xx<<` codes), and 1,500 id
sequences (any id of the vocabulary, special and language tokens included) decode to the same
text with skip_special_tokens.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from transformers import MarianTokenizer as Reference

from service.tokenizer import MarianTokenizer
from tests.hf_marian import SOURCE_WORDS, TARGET_WORDS, build_marian_dir

CASES = 1500
ODD = (
    "ü",
    "ß",
    "é",
    "日本",
    "🙂",
    "\u00a0",
    "\t",
    "  ",
    "\n",
    "x",
    "box",
    "</s>",
    "<unk>",
    "<pad>",
)


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_marian_dir(
        tmp_path_factory.mktemp("tok") / "opus-mt-en-ROMANCE", target_languages=("es", "fr")
    )


@pytest.fixture(scope="module")
def pair(directory: Path) -> tuple[MarianTokenizer, Reference]:
    ours = MarianTokenizer(
        directory / "source.spm", directory / "target.spm", directory / "vocab.json"
    )
    return ours, Reference.from_pretrained(directory)


def _text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(0, 12)):
        roll = rng.random()
        if roll < 0.5:
            parts.append(rng.choice(SOURCE_WORDS + TARGET_WORDS))
        elif roll < 0.7:
            parts.append(str(rng.randint(0, 10 ** rng.randint(1, 6))))
        elif roll < 0.85:
            parts.append(rng.choice(".,;:!?-'\"()"))
        else:
            parts.append(rng.choice(ODD))
    text = rng.choice([" ", "", "  "]).join(parts)
    if rng.random() < 0.1:
        text = f">>{rng.choice(['es', 'fr', 'de', 'xx'])}<< {text}"
    return text


def test_encode_equals_transformers(pair: tuple[MarianTokenizer, Reference]) -> None:
    ours, reference = pair
    rng = random.Random(0)
    unknown = 0
    for _ in range(CASES):
        text = _text(rng)
        expected = reference(text)["input_ids"]
        assert ours.encode(text) == expected, repr(text)
        unknown += ours.unk_id in expected
    assert unknown > 50, "the cases should exercise unknown pieces"


def test_encode_source_writes_the_language_token(pair: tuple[MarianTokenizer, Reference]) -> None:
    ours, reference = pair
    assert sorted(ours.languages) == ["es", "fr"]
    for lang in ours.languages:
        ids = ours.encode_source("the red house", lang)
        assert ids == reference(f">>{lang}<< the red house")["input_ids"]
        assert ids[0] == ours.languages[lang] and ids[-1] == ours.eos_id


def test_decode_equals_transformers(pair: tuple[MarianTokenizer, Reference]) -> None:
    ours, reference = pair
    rng = random.Random(1)
    specials = [ours.eos_id, ours.unk_id, ours.pad_id, *ours.languages.values()]
    for _ in range(CASES):
        ids = [
            rng.choice(specials) if rng.random() < 0.1 else rng.randrange(len(ours))
            for _ in range(rng.randint(0, 20))
        ]
        assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True), ids


def test_round_trip_of_known_text(pair: tuple[MarianTokenizer, Reference]) -> None:
    ours, reference = pair
    text = "the small dog and 42 big cats"
    assert ours.decode(ours.encode(text)) == text
    assert len(ours) == reference.vocab_size and ours.pad_id == len(ours) - 1
