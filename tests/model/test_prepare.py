"""Streaming preparation of a corpus into memory-mapped shards, and training from them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from model.corpus import Corpus, read_tsv, split_of
from model.data import BatchStream
from model.shards import TokenizedPairs, read_meta
from model.tokenizer import Tokenizer
from tests.model.commands import run_module


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Corpus) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.tsv"
    pairs = tiny_corpus.train + tiny_corpus.valid + tiny_corpus.test
    duplicates = pairs[:50]
    path.write_text("".join(f"{p.lang}\t{p.source}\t{p.target}\n" for p in pairs + duplicates))
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "data"
    result = run_module(
        "model.prepare", "--corpus", str(corpus_file), "--preset", "tiny", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert "50 duplicates" in result.stdout
    return out


def test_prepared_shards_hold_each_training_pair_once_tokenized(
    prepared: Path, corpus_file: Path
) -> None:
    meta = read_meta(prepared)
    pairs = TokenizedPairs.open(prepared)
    tokenizer = Tokenizer.load(prepared / "tokenizer.model")
    unique = list(dict.fromkeys(read_tsv(corpus_file)))
    train = [p for p in unique if split_of(p.source) == "train"]
    assert len(pairs) == meta["splits"]["train"] == len(train)
    assert isinstance(pairs.src_tokens, np.memmap)  # read from disk, not loaded
    for i in (0, len(pairs) // 2, len(pairs) - 1):
        src, tgt = pairs.pair(i)
        assert src == tokenizer.encode_source(train[i].source, train[i].lang)
        assert tgt == tokenizer.encode_target(train[i].target)
    # The held-out splits are text, split by source like every corpus: disjoint from training.
    held_out = read_tsv(prepared / "valid.tsv") + read_tsv(prepared / "test.tsv")
    assert {p.source for p in held_out}.isdisjoint({p.source for p in train})
    assert len(held_out) == meta["splits"]["valid"] + meta["splits"]["test"]


def test_the_batch_plan_is_the_in_memory_one(prepared: Path) -> None:
    pairs = TokenizedPairs.open(prepared)
    stream = BatchStream(pairs, max_tokens=800, seed=3)
    first_epoch = [next(stream)[1] for _ in range(stream.batches_per_epoch)]
    assert sorted(i for batch in first_epoch for i in batch) == list(range(len(pairs)))
    for batch in first_epoch:
        src = int(pairs.src_lengths[batch].max())
        tgt = int(pairs.tgt_lengths[batch].max()) + 1
        assert len(batch) == 1 or (src + tgt) * len(batch) <= 800
    # A stream that seeks to a saved position replays the same batches.
    saved = stream.position
    ahead = [next(stream)[1] for _ in range(5)]
    again = BatchStream(pairs, max_tokens=800, seed=3)
    again.seek(saved)
    assert [next(again)[1] for _ in range(5)] == ahead


def test_training_reads_a_prepared_corpus(prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    result = run_module(
        "model.train", "--preset", "tiny", "--corpus", str(prepared), "--out", str(out),
        "--max-steps", "5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "metrics.json").is_file()
    assert (out / "tokenizer.model").read_bytes() == (prepared / "tokenizer.model").read_bytes()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("de\tone\teins\nde\ttwo\n", ":2: 2 columns (source, target) but no target language"),
        ("de\tone\teins\nxx-invalid\ttwo\tzwei\n", ":2: unknown language tag"),
        ("de\tone\teins\nde\t \tzwei\n", ":2: empty source"),
        ("", "the corpus is empty"),
    ],
)
def test_a_malformed_line_is_named_with_its_file_and_number(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    result = run_module(
        "model.prepare", "--corpus", str(path), "--preset", "tiny", "--out", str(tmp_path / "o")
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_prepare_never_replaces_its_own_input(corpus_file: Path) -> None:
    result = run_module(
        "model.prepare", "--corpus", str(corpus_file), "--preset", "tiny",
        "--out", str(corpus_file.parent), "--force",
    )  # fmt: skip
    assert result.returncode == 2
    assert "holds the corpus itself" in result.stderr
    assert corpus_file.is_file()


def test_a_damaged_shard_is_refused_in_one_line(prepared: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(prepared, damaged)
    tokens = damaged / "train.tgt.bin"
    tokens.write_bytes(tokens.read_bytes()[:-2])  # one uint16 id short
    result = run_module(
        "model.train", "--preset", "tiny", "--corpus", str(damaged), "--out",
        str(tmp_path / "ckpt"), "--max-steps", "1",
    )  # fmt: skip
    assert result.returncode == 2
    assert "train.tgt.bin" in result.stderr and "prepare it again" in result.stderr
    assert "Traceback" not in result.stderr
